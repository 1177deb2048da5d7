"""Pure builders for the SBS scheduler of a deployment: config, Deployment, Service and its RBAC.

The scheduler discovers its engines by watching the deployment's leader pods, so it gets a
ServiceAccount allowed to read pods in its namespace and nothing else.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError
from sbs.kube import labels
from sbs.kube.apply import short_hash
from sbs.operator import api, child_names
from sbs.settings.scheduling import SchedulerSettings
from sbs.settings.service import ServiceSettings, validation_message

CONFIG_KEY = "scheduler.yaml"
CONFIG_DIR = "/etc/sbs/config"
AUTH_DIR, AUTH_FILE = "/etc/sbs/auth", "tokens"
"""`spec.scheduler.auth.secretRef`'s key, mounted (the service re-reads it when the Secret changes)."""
ENGINE_KEY_DIR, ENGINE_KEY_FILE = "/etc/sbs/engine-api-key", "key"
"""`spec.engine.apiKeySecretRef`'s key: the scheduler sends it to the engines."""


_LEASE_RULE = {  # the replicas' Leases: with more than one replica only
    "apiGroups": ["coordination.k8s.io"],
    "resources": ["leases"],
    "verbs": ["get", "list", "create", "update", "patch", "delete"],
}


class SchedulerSettingsError(ValueError):
    """`spec.scheduler.settings` is not a valid `SchedulerSettings`."""


def core_settings(spec: api.SchedulerSpec) -> dict[str, Any]:
    """The core's settings: `spec.scheduler.settings` with the policy type from `spec.scheduler.policy`."""
    raw = dict(spec.settings)
    policy = {**(raw.pop("policy", None) or {}), "type": spec.policy}
    try:
        settings = SchedulerSettings.model_validate({**raw, "policy": policy})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise SchedulerSettingsError(f"spec.scheduler.settings.{where}: {err['msg']}") from None
    return settings.model_dump(mode="json")


def config(dep: api.SBSDeployment) -> dict[str, Any]:
    """The scheduler's configuration file (`sbs-scheduler run --config`, validated as its
    `ServiceSettings`): where to listen, which deployment's engines to watch, how to schedule."""
    s = dep.spec.scheduler
    cfg = {
        "host": "0.0.0.0",
        "port": s.port,
        "engines": {
            "kubernetes": {
                "namespace": dep.namespace,
                "deployment": dep.name,
                "default_port": dep.spec.engine.port,
            }
        },
        "scheduler": core_settings(s),
    }
    if s.replicas > 1:  # the replicas split the prefill instances through Leases (docs/scaling.md)
        cfg["replicas"] = {"backend": "kubernetes"}
    if s.auth:
        cfg["auth"] = {"tokens_file": f"{AUTH_DIR}/{AUTH_FILE}"}
    if dep.spec.engine.api_key_secret_ref:
        cfg["engines"]["api_key_file"] = f"{ENGINE_KEY_DIR}/{ENGINE_KEY_FILE}"
    try:
        ServiceSettings.model_validate(cfg)
    except ValidationError as exc:
        raise SchedulerSettingsError(f"scheduler config: {validation_message(exc)}") from None
    return cfg


def _meta(dep: api.SBSDeployment, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": dep.namespace,
        "labels": labels.common_labels(dep.name, labels.SCHEDULER),
        "ownerReferences": [child_names.owner_reference(dep)],
    }


def _secret_mounts(dep: api.SBSDeployment) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts of the Secrets the scheduler reads: its API tokens and the engines' key."""
    refs = []
    if dep.spec.scheduler.auth:
        refs.append(("auth", dep.spec.scheduler.auth.secret_ref, AUTH_DIR, AUTH_FILE))
    if dep.spec.engine.api_key_secret_ref:
        refs.append(("engine-api-key", dep.spec.engine.api_key_secret_ref, ENGINE_KEY_DIR, ENGINE_KEY_FILE))
    volumes = [
        {
            "name": v,
            "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": f}], "defaultMode": 0o440},
        }
        for v, ref, _, f in refs
    ]
    mounts = [{"name": v, "mountPath": d, "readOnly": True} for v, _, d, _ in refs]
    return volumes, mounts


def objects(dep: api.SBSDeployment) -> list[dict[str, Any]]:
    """ServiceAccount, Role, RoleBinding, ConfigMap, Deployment and Service of the scheduler."""
    name = child_names.scheduler_name(dep.name)
    s = dep.spec.scheduler
    cfg = yaml.safe_dump(config(dep), sort_keys=True)
    selector = labels.scheduler_selector(dep.name)
    secret_volumes, secret_mounts = _secret_mounts(dep)
    container = {
        "name": "scheduler",
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "command": ["sbs-scheduler"],
        "args": ["run", "--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "ports": [{"name": "http", "containerPort": s.port}],
        "env": [  # a replica's name and address among its peers
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": s.cpu, "memory": s.memory}, "limits": {"memory": s.memory}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}, *secret_mounts],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(dep, name),
        "spec": {
            "replicas": s.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": labels.common_labels(dep.name, labels.SCHEDULER),
                    # a config change restarts the scheduler
                    "annotations": {labels.SPEC_HASH: short_hash(cfg)},
                },
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,  # the mounted Secrets are readable by this group only
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [{"name": "config", "configMap": {"name": name}}, *secret_volumes],
                },
            },
        },
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(dep, name)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(dep, name),
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                *([_LEASE_RULE] if s.replicas > 1 else []),
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(dep, name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": dep.namespace}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(dep, name), "data": {CONFIG_KEY: cfg}},
        deployment,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(dep, name),
            "spec": {"selector": selector, "ports": [{"name": "http", "port": s.port, "targetPort": "http"}]},
        },
    ]


def endpoint(dep: api.SBSDeployment) -> str:
    return f"http://{child_names.scheduler_name(dep.name)}.{dep.namespace}.svc:{dep.spec.scheduler.port}"
