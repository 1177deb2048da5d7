"""Secure defaults of what the operator builds (no cluster): engine pods without an API token and with
one added capability, credentials only as Secret references, remote code off, the scheduler's Secret
mounts and config keys, and the shape of the NetworkPolicies (their semantics: test_network_policies.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from sbs.kube import labels
from sbs.operator import api, network_policies, scheduler_objects, sglang_args
from sbs.settings.service import ServiceSettings

from tests.operator.test_builders import SAMPLE, args_of, flag, make_deployment, pods_of

SECRET = {"name": "hub", "key": "token"}


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod["spec"]["containers"]
    return c


def every_pod(dep: api.SBSDeployment) -> list[dict[str, Any]]:
    return [p for role in api.ROLES for p in pods_of(dep, role)]


# ---- engine pods -----------------------------------------------------------------------------------


def test_engine_pods_get_no_service_account_token_and_no_service_links():
    for pod in every_pod(make_deployment()):
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["spec"]["enableServiceLinks"] is False
        assert "serviceAccountName" not in pod["spec"]


def test_engine_containers_drop_every_capability_but_ipc_lock():
    for pod in every_pod(make_deployment()):
        assert pod["spec"]["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
        assert container(pod)["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]},
        }


def test_ipc_lock_off_adds_no_capability():
    for pod in every_pod(make_deployment(engine={"ipcLock": False})):
        assert container(pod)["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_trust_remote_code_is_off_by_default_and_passed_when_asked():
    assert api.ModelSource(path="m").trust_remote_code is False
    assert "trustRemoteCode" not in SAMPLE["spec"]["model"]  # DeepSeek-V3's config is native to transformers
    on = make_deployment(model={**SAMPLE["spec"]["model"], "trustRemoteCode": True})
    assert flag(args_of(pods_of(on, "prefill")[0]), "--trust-remote-code") == ""


def test_env_takes_literals_and_secret_or_config_map_keys():
    env = [
        {"name": "NCCL_DEBUG", "value": "INFO"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": SECRET}},
        {
            "name": "MC_CONF",
            "valueFrom": {"configMapKeyRef": {"name": "mc", "key": "conf", "optional": True}},
        },
    ]
    dep = make_deployment(engine={"env": env})
    for pod in every_pod(dep):
        got = container(pod)["env"]
        assert got[0]["name"] == "POD_IP"
        assert got[1:] == [
            {"name": "NCCL_DEBUG", "value": "INFO"},
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {**SECRET, "optional": False}}},
            {
                "name": "MC_CONF",
                "valueFrom": {"configMapKeyRef": {"name": "mc", "key": "conf", "optional": True}},
            },
        ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "A", "value": "x", "valueFrom": {"secretKeyRef": SECRET}},
            "value and valueFrom are exclusive",
        ),
        ({"name": "A", "valueFrom": {}}, "exactly one of secretKeyRef and configMapKeyRef"),
        (
            {"name": "A", "valueFrom": {"secretKeyRef": SECRET, "configMapKeyRef": SECRET}},
            "exactly one of secretKeyRef and configMapKeyRef",
        ),
        ({"name": "SBS_ENGINE_API_KEY", "value": "x"}, "set by the operator"),
        ({"name": "POD_IP", "value": "x"}, "set by the operator"),
        ({"name": "A", "valueFrom": {"secretKeyRef": {"name": "Bad_Name", "key": "k"}}}, "pattern"),
    ],
)
def test_bad_env_entries_are_refused_naming_the_problem(entry, message):
    with pytest.raises(ValidationError, match=message):
        make_deployment(engine={"env": [entry]})


def test_api_key_reaches_engines_as_a_reference_only():
    dep = make_deployment(engine={"apiKeySecretRef": SECRET})
    for pod in every_pod(dep):
        c = container(pod)
        assert {"name": "SBS_ENGINE_API_KEY", "valueFrom": {"secretKeyRef": SECRET}} in c["env"]
        assert flag(c["args"], "--api-key") == "$(SBS_ENGINE_API_KEY)" == sglang_args.API_KEY_REF
    without = make_deployment()
    assert all(flag(args_of(p), "--api-key") is None for p in every_pod(without))


# ---- the scheduler ---------------------------------------------------------------------------------


def scheduler_parts(dep: api.SBSDeployment) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(config, pod spec, container) of the scheduler."""
    objs = {o["kind"]: o for o in scheduler_objects.objects(dep)}
    cfg = yaml.safe_load(objs["ConfigMap"]["data"][scheduler_objects.CONFIG_KEY])
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    return cfg, pod, pod["containers"][0]


def test_scheduler_mounts_its_tokens_and_the_engine_key_and_names_them_in_its_config():
    dep = make_deployment(
        engine={"apiKeySecretRef": SECRET},
        scheduler={"auth": {"secretRef": {"name": "sched-auth", "key": "tokens"}}},
    )
    cfg, pod, c = scheduler_parts(dep)
    assert cfg["auth"] == {"tokens_file": "/etc/sbs/auth/tokens"}
    assert cfg["engines"]["api_key_file"] == "/etc/sbs/engine-api-key/key"
    settings = ServiceSettings.model_validate(cfg)  # the service reads exactly this
    assert settings.auth is not None and settings.engines.api_key_file == "/etc/sbs/engine-api-key/key"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["auth"]["secret"] == {
        "secretName": "sched-auth",
        "items": [{"key": "tokens", "path": "tokens"}],
        "defaultMode": 0o440,
    }
    assert volumes["engine-api-key"]["secret"]["secretName"] == "hub"
    assert volumes["engine-api-key"]["secret"]["items"] == [{"key": "token", "path": "key"}]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert set(mounts) == {"/etc/sbs/config", "/etc/sbs/auth", "/etc/sbs/engine-api-key"}  # none nested
    assert all(m["readOnly"] for m in mounts.values())
    assert c["args"] == ["run", "--config", "/etc/sbs/config/scheduler.yaml"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == 65532


def test_without_auth_or_key_the_scheduler_has_neither():
    cfg, pod, _ = scheduler_parts(make_deployment())
    assert "auth" not in cfg and "api_key_file" not in cfg["engines"]
    assert [v["name"] for v in pod["volumes"]] == ["config"]


def test_scheduler_pod_is_restricted():
    _, pod, c = scheduler_parts(make_deployment())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_no_object_holds_more_than_a_secret_reference():
    dep = make_deployment(
        engine={
            "apiKeySecretRef": SECRET,
            "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": SECRET}}],
        },
        scheduler={"auth": {"secretRef": SECRET}},
    )
    built = [*every_pod(dep), *scheduler_objects.objects(dep), *network_policies.objects(dep)]
    text = json.dumps(built)
    assert '"value": ' not in text.replace('"value": ""', "")  # only the references and literal-free env
    assert all(o["kind"] != "Secret" for o in built)


# ---- NetworkPolicies -------------------------------------------------------------------------------


def test_network_policies_select_the_deployments_pods_and_are_owned():
    dep = make_deployment()
    engine, sched = network_policies.objects(dep)
    assert engine["spec"]["podSelector"] == {"matchLabels": labels.engine_selector(dep.name)}
    assert sched["spec"]["podSelector"] == {"matchLabels": labels.scheduler_selector(dep.name)}
    for policy in (engine, sched):
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["metadata"]["ownerReferences"][0]["uid"] == dep.uid
        assert policy["metadata"]["namespace"] == dep.namespace


def test_engine_http_port_only_from_the_scheduler_all_ports_from_own_engines():
    dep = make_deployment(engine={"port": 31000})
    rules = network_policies.engine_policy(dep)["spec"]["ingress"]
    assert rules == [
        {
            "from": [{"podSelector": {"matchLabels": labels.scheduler_selector(dep.name)}}],
            "ports": [{"protocol": "TCP", "port": 31000}],
        },
        {"from": [{"podSelector": {"matchLabels": labels.engine_selector(dep.name)}}]},
    ]


def test_scheduler_clients_default_and_from_the_spec():
    dep = make_deployment()
    (rule,) = network_policies.scheduler_policy(dep)["spec"]["ingress"]
    assert rule["from"] == network_policies.default_clients()
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    peers = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}},
        {"ipBlock": {"cidr": "10.8.0.0/16"}},
    ]
    (rule,) = network_policies.scheduler_policy(make_deployment(scheduler={"allowedClients": peers}))["spec"][
        "ingress"
    ]
    assert rule["from"] == [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": "gateway"},
                "matchExpressions": [],
            }
        },
        {"ipBlock": {"cidr": "10.8.0.0/16"}},
    ]


@pytest.mark.parametrize(
    ("peers", "message"),
    [
        ([], "at least 1 item"),
        ([{}], "set ipBlock alone"),
        ([{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}], "set ipBlock alone"),
        ([{"ipBlock": {"cidr": "10.0.0.1/8"}}], "canonical form"),
        ([{"podSelector": {"matchLabels": {"a/b/c": "x"}}}], "label keys"),
        ([{"podSelector": {"matchLabels": {"app": "-x"}}}], "label values"),
        (
            [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}],
            "In and NotIn need values",
        ),
    ],
)
def test_bad_allowed_clients_are_refused(peers, message):
    with pytest.raises(ValidationError, match=message):
        make_deployment(scheduler={"allowedClients": peers})
