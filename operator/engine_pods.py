"""Pure builders for engine groups: pods (one per node, rank 0 the leader), DNS and gang PodGroups.

A group is identified by (role, index, template hash); its pods are created together and, since
an engine cannot survive a lost rank, only ever deleted together.
"""

from __future__ import annotations

from typing import Any

from sbs.kube import labels
from sbs.kube.apply import short_hash
from sbs.operator import api, child_names, kueue, sglang_args
from sbs.operator.api_refs import API_KEY_ENV, POD_IP_ENV

GPU_RESOURCE = "nvidia.com/gpu"
GANG = {
    "scheduler-plugins": {
        "apiVersion": "scheduling.x-k8s.io/v1alpha1",
        "plural": "podgroups",
        "scheduler": "scheduler-plugins-scheduler",
        "label": "scheduling.x-k8s.io/pod-group",
    },
    "volcano": {
        "apiVersion": "scheduling.volcano.sh/v1beta1",
        "plural": "podgroups",
        "scheduler": "volcano",
        "annotation": "scheduling.k8s.io/group-name",
    },
}


def serving_revision(spec: api.SBSDeploymentSpec) -> str:
    """What prefill and decode must share to exchange KV: model and engine settings."""
    return short_hash(
        {"model": spec.model.model_dump(mode="json"), "engine": spec.engine.model_dump(mode="json")}
    )


SCALE_FIELDS = {"groups", "groups_owner"}
"""How many groups a role has does not shape its pods: scaling never replaces groups."""


def template_hash(spec: api.SBSDeploymentSpec, role: str, gang: bool, owner_uid: str = "") -> str:
    """Everything that shapes a role's pods: a change replaces that role's groups.

    The owner's UID is part of it, so a deployment deleted and created again under the same name
    never collides with its predecessor's pods while the garbage collector removes them.
    """
    return short_hash(
        {
            "revision": serving_revision(spec),
            "role": spec.role(role).model_dump(mode="json", exclude=SCALE_FIELDS),
            "gang": gang,
            "owner": owner_uid,
        }
    )


def group_labels(dep: api.SBSDeployment, role: str, index: int, thash: str) -> dict[str, str]:
    return {
        **labels.common_labels(dep.name, labels.ENGINE),
        labels.ROLE: role,
        labels.GROUP: str(index),
        labels.REVISION: serving_revision(dep.spec),
        labels.TEMPLATE_HASH: thash,
        labels.GROUP_ID: child_names.group_id(dep.name, role, index, thash),
    }


def _affinity(r: api.RoleSpec, gid: str) -> dict[str, Any] | None:
    affinity: dict[str, Any] = dict(r.affinity or {})
    if r.topology_key:
        pod_affinity = dict(affinity.get("podAffinity") or {})
        terms = list(pod_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or [])
        terms.append(
            {"labelSelector": {"matchLabels": {labels.GROUP_ID: gid}}, "topologyKey": r.topology_key}
        )
        pod_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = terms
        affinity["podAffinity"] = pod_affinity
    return affinity or None


def env(e: api.EngineSettings) -> list[dict[str, Any]]:
    """The pod IP, the API key from its Secret, then the user's variables (literals or key references)."""
    pod_ip = {"fieldRef": {"fieldPath": "status.podIP"}}
    out: list[dict[str, Any]] = [{"name": POD_IP_ENV, "valueFrom": pod_ip}]
    if e.api_key_secret_ref:
        ref = e.api_key_secret_ref.model_dump(mode="json")
        out.append({"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": ref}})
    for v in e.env:
        if v.value_from is None:
            out.append({"name": v.name, "value": v.value})
        else:
            source = v.value_from.model_dump(by_alias=True, exclude_none=True)
            out.append({"name": v.name, "valueFrom": source})
    return out


def container_security(e: api.EngineSettings) -> dict[str, Any]:
    """Root (a capability added for a non-root user never becomes effective: Kubernetes grants no
    ambient capabilities), every capability dropped but IPC_LOCK (memory pinned for RDMA and
    DeepEP/NVSHMEM registration), no privilege escalation. Namespace level: `privileged` with IPC_LOCK,
    `baseline` without (docs/operator.md)."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"], **({"add": ["IPC_LOCK"]} if e.ipc_lock else {})},
    }


def _container(dep: api.SBSDeployment, role: str, index: int, thash: str, rank: int) -> dict[str, Any]:
    spec, r, e = dep.spec, dep.spec.role(role), dep.spec.engine
    leader_host = child_names.leader_address(dep, role, index, thash)
    ports = [{"name": "http", "containerPort": e.port}, {"name": "dist", "containerPort": e.dist_init_port}]
    if role == "prefill":
        ports.append({"name": "bootstrap", "containerPort": e.bootstrap_port})
    limits = {GPU_RESOURCE: str(r.gpus_per_node)}
    if r.resources.rdma.count:
        limits[r.resources.rdma.name] = str(r.resources.rdma.count)
    container: dict[str, Any] = {
        "name": "sglang",
        "image": e.image,
        "imagePullPolicy": e.image_pull_policy,
        "command": list(sglang_args.LAUNCH),
        "args": sglang_args.engine_args(spec, role, rank=rank, dist_init_host=leader_host),
        "env": env(e),
        "ports": ports,
        "resources": {
            "requests": {"cpu": r.resources.cpu, "memory": r.resources.memory, **limits},
            "limits": limits,
        },
        "securityContext": container_security(e),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if rank == 0:
        container["readinessProbe"] = {
            "httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3,
        }  # fmt: skip
        container["startupProbe"] = {
            "httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 180,
        }  # fmt: skip
    return container


def group_pods(
    dep: api.SBSDeployment, role: str, index: int, thash: str, *, gang: bool, queue: str | None = None
) -> list[dict[str, Any]]:
    """The pods of one engine group, leader first; with `queue`, one Kueue pod group in that LocalQueue."""
    r, e = dep.spec.role(role), dep.spec.engine
    group = group_labels(dep, role, index, thash)
    gid = group[labels.GROUP_ID]
    pods = []
    for rank in range(r.nodes_per_group):
        pod_labels = {**group, labels.RANK: str(rank), labels.LEADER: "true" if rank == 0 else "false"}
        annotations: dict[str, str] = {}
        if rank == 0:
            annotations = {labels.DP_SIZE: str(r.attn_dp_size), labels.ENGINE_PORT: str(e.port)}
            if role == "prefill":
                annotations[labels.BOOTSTRAP_PORT] = str(e.bootstrap_port)
                annotations[labels.SGLANG_BOOTSTRAP_PORT] = str(e.bootstrap_port)
        pod_spec: dict[str, Any] = {
            "hostname": child_names.hostname(role, index, thash, rank),
            "subdomain": child_names.engine_service(dep.name),
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "automountServiceAccountToken": False,  # engines never call the Kubernetes API
            "enableServiceLinks": False,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "nodeSelector": dict(r.node_selector),
            "containers": [_container(dep, role, index, thash, rank)],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": e.shm_size}}],
        }
        if r.tolerations:
            pod_spec["tolerations"] = list(r.tolerations)
        affinity = _affinity(r, gid)
        if affinity:
            pod_spec["affinity"] = affinity
        if e.host_network:
            pod_spec["hostNetwork"] = True
            pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
        if gang:
            provider = GANG[dep.spec.gang_scheduling.provider]
            pod_spec["schedulerName"] = dep.spec.gang_scheduling.scheduler_name or provider["scheduler"]
            if "label" in provider:
                pod_labels[provider["label"]] = gid
            else:
                annotations[provider["annotation"]] = gid
        if queue is not None:
            more_labels, more_annotations = kueue.pod_fields(dep, role, gid, queue)
            pod_labels.update(more_labels)
            annotations.update(more_annotations)
        metadata: dict[str, Any] = {
            "name": child_names.pod_name(dep.name, role, index, thash, rank),
            "namespace": dep.namespace,
            "labels": pod_labels,
            "ownerReferences": [child_names.owner_reference(dep)],
        }
        if annotations:
            metadata["annotations"] = annotations
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec})
    return pods


def pod_group(dep: api.SBSDeployment, role: str, index: int, thash: str) -> dict[str, Any]:
    """The gang-scheduling PodGroup of one engine group (all nodes or none)."""
    provider = GANG[dep.spec.gang_scheduling.provider]
    r = dep.spec.role(role)
    group = group_labels(dep, role, index, thash)
    return {
        "apiVersion": provider["apiVersion"],
        "kind": "PodGroup",
        "metadata": {
            "name": group[labels.GROUP_ID],
            "namespace": dep.namespace,
            "labels": group,
            "ownerReferences": [child_names.owner_reference(dep)],
        },
        "spec": {"minMember": r.nodes_per_group},
    }


def headless_service(dep: api.SBSDeployment) -> dict[str, Any]:
    """Stable DNS for every engine pod (`<hostname>.<name>-engines`), ready or not, for rendezvous."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": child_names.engine_service(dep.name),
            "namespace": dep.namespace,
            "labels": labels.common_labels(dep.name, labels.ENGINE),
            "ownerReferences": [child_names.owner_reference(dep)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels.engine_selector(dep.name),
            "ports": [{"name": "http", "port": dep.spec.engine.port, "targetPort": "http"}],
        },
    }
