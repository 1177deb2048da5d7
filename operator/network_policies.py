"""Pure builders of a deployment's NetworkPolicies (ingress only): who may reach its engines and its
scheduler. Policies are additive, so a cluster's own policies can allow more (a Prometheus scraping
the engines' `/metrics`), never less.

- Engines accept the scheduler on their HTTP port, and their own deployment's engines on every port:
  KV transfer between prefill and decode uses the prefill's bootstrap port (HTTP) and then ports
  SGLang 0.5.23 picks at random (`disaggregation/common/conn.py` binds each rank's ZMQ socket with
  `bind_to_random_port`; mooncake's P2P handshake listens on the port its `TransferEngine` picks,
  NIXL on UCX's), and a multi-node group rendezvouses on `distInitPort` before NCCL and Gloo open
  their own random ports. RDMA verbs traffic never crosses the pod network, so no policy sees it.
- The scheduler accepts `spec.scheduler.allowedClients`, by default every pod of the deployment's
  namespace and the SBS operator's pods (its autoscaler scrapes the scheduler's `/metrics`).

Pods in the host network (`spec.engine.hostNetwork`) are outside every NetworkPolicy; the engines'
`--api-key` (`spec.engine.apiKeySecretRef`) is then their only guard.
"""

from __future__ import annotations

from typing import Any

from sbs.kube import labels
from sbs.operator import api, child_names

API_VERSION = "networking.k8s.io/v1"
OPERATOR_POD_LABELS = {"app.kubernetes.io/name": "sbs-operator", "app.kubernetes.io/component": "operator"}
"""The labels of the operator's pods in `manifests/operator/deployment.yaml`."""


def default_clients() -> list[dict[str, Any]]:
    """Who may call the scheduler when the spec does not say: its namespace's pods and the operator's."""
    return [
        {"podSelector": {}},
        {"namespaceSelector": {}, "podSelector": {"matchLabels": dict(OPERATOR_POD_LABELS)}},
    ]


def _policy(
    dep: api.SBSDeployment, name: str, component: str, selector: dict[str, str], ingress: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": dep.namespace,
            "labels": labels.common_labels(dep.name, component),
            "ownerReferences": [child_names.owner_reference(dep)],
        },
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def engine_policy(dep: api.SBSDeployment) -> dict[str, Any]:
    """The engines: HTTP from the scheduler, anything from the deployment's own engines."""
    scheduler = {"podSelector": {"matchLabels": labels.scheduler_selector(dep.name)}}
    engines = {"podSelector": {"matchLabels": labels.engine_selector(dep.name)}}
    return _policy(
        dep,
        child_names.engine_service(dep.name),
        labels.ENGINE,
        labels.engine_selector(dep.name),
        [
            {"from": [scheduler], "ports": [{"protocol": "TCP", "port": dep.spec.engine.port}]},
            {"from": [engines]},
        ],
    )


def scheduler_policy(dep: api.SBSDeployment) -> dict[str, Any]:
    """The scheduler's port, from `allowedClients` (default: `default_clients()`)."""
    s = dep.spec.scheduler
    if s.allowed_clients is None:
        peers = default_clients()
    else:
        peers = [p.model_dump(by_alias=True, exclude_none=True, mode="json") for p in s.allowed_clients]
    return _policy(
        dep,
        child_names.scheduler_name(dep.name),
        labels.SCHEDULER,
        labels.scheduler_selector(dep.name),
        [{"from": peers, "ports": [{"protocol": "TCP", "port": s.port}]}],
    )


def objects(dep: api.SBSDeployment) -> list[dict[str, Any]]:
    return [engine_policy(dep), scheduler_policy(dep)]
