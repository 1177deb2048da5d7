"""Pure builders for the sample deployment (DeepSeek-V3 on H800): engine group pods, their SGLang command
lines, hashes, the headless Service, gang PodGroups and the scheduler's objects. No cluster."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sbs.kube import labels
from sbs.operator import api, child_names, engine_pods, scheduler_objects
from sbs.scheduler.service.kube_discovery import engine_from_pod
from sbs.settings.scheduling import POLICY_NAMES, SchedulerSettings
from sbs.settings.service import ServiceSettings

REPO = Path(__file__).resolve().parents[2]
SAMPLE = yaml.safe_load((REPO / "manifests" / "samples" / "deepseek-v3-h800.yaml").read_text())
NS = "ml"
UID = "0b9d7c1e-uid"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
EXPECTED = {  # role: (nodes per group, groups, DP size, DeepEP mode)
    "prefill": (4, 4, 32, "normal"),
    "decode": (9, 2, 72, "low_latency"),
}


def make_deployment(name: str | None = None, **spec_patch: Any) -> api.SBSDeployment:
    """The sample, with top-level spec sections merged (one level deep) from `spec_patch`."""
    raw = copy.deepcopy(SAMPLE)
    for key, value in spec_patch.items():
        raw["spec"][key] = {**raw["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    raw["metadata"] = {"name": name or raw["metadata"]["name"], "namespace": NS, "uid": UID, "generation": 1}
    return api.SBSDeployment.model_validate(raw)


def pods_of(dep: api.SBSDeployment, role: str, index: int = 0, *, gang: bool = False) -> list[dict[str, Any]]:
    thash = engine_pods.template_hash(dep.spec, role, gang)
    return engine_pods.group_pods(dep, role, index, thash, gang=gang)


def all_pods(dep: api.SBSDeployment, *, gang: bool = False) -> list[dict[str, Any]]:
    return [
        p
        for role in api.ROLES
        for index in range(dep.spec.role(role).groups)
        for p in pods_of(dep, role, index, gang=gang)
    ]


def flag(args: list[str], name: str) -> str | None:
    """The value after `name` (None when absent; "" for a switch without a value)."""
    if name not in args:
        return None
    assert args.count(name) == 1, name
    i = args.index(name)
    return args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""


def args_of(pod: dict[str, Any]) -> list[str]:
    return pod["spec"]["containers"][0]["args"]


@pytest.fixture
def dep() -> api.SBSDeployment:
    return make_deployment()


# ---- engine group pods ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", api.ROLES)
def test_a_group_has_one_pod_per_node_leader_first(dep, role):
    nodes, groups, _, _ = EXPECTED[role]
    assert dep.spec.role(role).groups == groups
    for index in range(groups):
        pods = pods_of(dep, role, index)
        assert len(pods) == nodes
        ranks = [p["metadata"]["labels"][labels.RANK] for p in pods]
        assert ranks == [str(r) for r in range(nodes)]
        leaders = [p["metadata"]["labels"][labels.LEADER] for p in pods]
        assert leaders == ["true"] + ["false"] * (nodes - 1)
        assert {p["metadata"]["labels"][labels.GROUP] for p in pods} == {str(index)}
        assert {p["metadata"]["labels"][labels.ROLE] for p in pods} == {role}


def test_prefill_leader_announces_bootstrap_port_and_dp_size(dep):
    leader, *workers = pods_of(dep, "prefill")
    assert leader["metadata"]["annotations"] == {
        labels.BOOTSTRAP_PORT: "8998",
        labels.SGLANG_BOOTSTRAP_PORT: "8998",
        labels.DP_SIZE: "32",
        labels.ENGINE_PORT: "30000",
    }
    assert all("annotations" not in p["metadata"] for p in workers)


def test_decode_leader_has_dp_size_but_no_bootstrap_port(dep):
    leader, *workers = pods_of(dep, "decode")
    assert leader["metadata"]["annotations"] == {labels.DP_SIZE: "72", labels.ENGINE_PORT: "30000"}
    assert all("annotations" not in p["metadata"] for p in workers)


def test_hostnames_are_unique_dns_labels_and_pod_names_valid_subdomains(dep):
    pods = all_pods(dep)
    assert len(pods) == 4 * 4 + 2 * 9
    hostnames = [p["spec"]["hostname"] for p in pods]
    assert len(set(hostnames)) == len(hostnames)
    assert all(len(h) <= 63 and DNS_LABEL.match(h) for h in hostnames), hostnames
    names = [p["metadata"]["name"] for p in pods]
    assert len(set(names)) == len(names)
    assert all(len(n) <= 253 and DNS_SUBDOMAIN.match(n) for n in names), names
    assert {p["spec"]["subdomain"] for p in pods} == {"deepseek-v3-engines"}


def test_longest_name_and_highest_group_index_still_give_valid_names_and_labels():
    dep = make_deployment("d" * api.MAX_NAME_LENGTH, prefill={"groups": 256}, decode={"groups": 256})
    for role in api.ROLES:
        for pod in pods_of(dep, role, 255):
            assert DNS_LABEL.match(pod["spec"]["hostname"]) and len(pod["spec"]["hostname"]) <= 63
            assert len(pod["metadata"]["name"]) <= 63, pod["metadata"]["name"]
            for key, value in pod["metadata"]["labels"].items():
                assert len(value) <= 63 and LABEL_VALUE.match(value), (key, value)
    assert DNS_LABEL.match(engine_pods.headless_service(dep)["metadata"]["name"])


@pytest.mark.parametrize("role", api.ROLES)
def test_pods_request_all_gpus_of_a_node_and_rdma(dep, role):
    for pod in pods_of(dep, role):
        resources = pod["spec"]["containers"][0]["resources"]
        assert resources["limits"] == {"nvidia.com/gpu": "8", "rdma/ib": "8"}
        assert resources["requests"] == {
            "cpu": "64",
            "memory": "1024Gi",
            "nvidia.com/gpu": "8",
            "rdma/ib": "8",
        }


def test_rdma_count_zero_requests_no_rdma():
    dep = make_deployment(decode={"resources": {"rdma": {"count": 0}}})
    assert pods_of(dep, "decode")[0]["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": "8"
    }


@pytest.mark.parametrize("role", api.ROLES)
def test_pods_select_h800_nodes_and_pack_a_group_into_one_topology_domain(dep, role):
    pods = pods_of(dep, role, 1)
    gid = pods[0]["metadata"]["labels"][labels.GROUP_ID]
    assert gid.startswith(f"deepseek-v3-{role}-1-")
    for pod in pods:
        assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H800"}
        assert pod["metadata"]["labels"][labels.GROUP_ID] == gid
        terms = pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms == [
            {
                "labelSelector": {"matchLabels": {labels.GROUP_ID: gid}},
                "topologyKey": "network.topology.kubernetes.io/block",
            }
        ]


def test_user_affinity_is_kept_and_the_group_term_added_once():
    user_term = {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}
    node_affinity = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    affinity = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [user_term]}}
    dep = make_deployment(decode={"affinity": {**affinity, "nodeAffinity": node_affinity}})
    for _ in range(2):  # building twice must not accumulate terms in the spec
        pod = pods_of(dep, "decode")[0]
        terms = pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert len(terms) == 2 and terms[0] == user_term
        assert pod["spec"]["affinity"]["nodeAffinity"] == node_affinity
    assert dep.spec.decode.affinity == {**affinity, "nodeAffinity": node_affinity}


def test_empty_topology_key_means_no_pod_affinity():
    dep = make_deployment(prefill={"topologyKey": ""})
    assert "affinity" not in pods_of(dep, "prefill")[0]["spec"]


def test_host_network_and_tolerations_reach_the_pod_spec():
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    dep = make_deployment(engine={"hostNetwork": True}, decode={"tolerations": [toleration]})
    spec = pods_of(dep, "decode")[0]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["tolerations"] == [toleration]


# ---- the SGLang command line ----------------------------------------------------------------------


@pytest.mark.parametrize("role", api.ROLES)
def test_every_rank_rendezvouses_at_the_leaders_dns_name(dep, role):
    nodes, _, _, _ = EXPECTED[role]
    for index in (0, 1):
        pods = pods_of(dep, role, index)
        leader_dns = f"{pods[0]['spec']['hostname']}.deepseek-v3-engines.{NS}.svc:5757"
        for rank, pod in enumerate(pods):
            args = args_of(pod)
            assert flag(args, "--nnodes") == str(nodes)
            assert flag(args, "--node-rank") == str(rank)
            assert flag(args, "--dist-init-addr") == leader_dns
            assert pod["spec"]["containers"][0]["command"] == ["python3", "-m", "sglang.launch_server"]


@pytest.mark.parametrize("role", api.ROLES)
def test_parallelism_and_disaggregation_flags(dep, role):
    _, _, dp, deepep = EXPECTED[role]
    args = args_of(pods_of(dep, role)[0])
    assert flag(args, "--model-path") == "deepseek-ai/DeepSeek-V3"
    assert flag(args, "--served-model-name") == "deepseek-v3"
    assert flag(args, "--trust-remote-code") is None  # off unless the spec asks (test_security.py)
    assert flag(args, "--disaggregation-mode") == role
    assert flag(args, "--disaggregation-transfer-backend") == "mooncake"
    assert flag(args, "--disaggregation-ib-device") == ",".join(f"mlx5_{i}" for i in range(8))
    assert flag(args, "--tp-size") == str(dp)
    assert flag(args, "--attn-dp-size") == str(dp)
    assert flag(args, "--ep-size") == str(dp)
    assert flag(args, "--moe-a2a-backend") == "deepep"
    assert flag(args, "--deepep-mode") == deepep
    assert flag(args, "--enable-metrics") == ""
    assert flag(args, "--host") == "$(POD_IP)"
    assert flag(args, "--port") == "30000"


def test_bootstrap_port_and_chunked_prefill_only_on_prefill(dep):
    prefill, decode = args_of(pods_of(dep, "prefill")[0]), args_of(pods_of(dep, "decode")[0])
    assert flag(prefill, "--disaggregation-bootstrap-port") == "8998"
    assert flag(prefill, "--chunked-prefill-size") == "524288"
    assert flag(decode, "--disaggregation-bootstrap-port") is None
    assert flag(decode, "--chunked-prefill-size") is None


def test_chunked_prefill_size_appears_where_it_is_set():
    dep = make_deployment(decode={"chunkedPrefillSize": 72 * 256}, prefill={"chunkedPrefillSize": None})
    assert flag(args_of(pods_of(dep, "decode")[0]), "--chunked-prefill-size") == str(72 * 256)
    assert flag(args_of(pods_of(dep, "prefill")[0]), "--chunked-prefill-size") is None


def test_single_node_groups_have_no_rendezvous_flags():
    dep = make_deployment(decode={"nodesPerGroup": 1})
    args = args_of(pods_of(dep, "decode")[0])
    assert [flag(args, f) for f in ("--nnodes", "--node-rank", "--dist-init-addr")] == [None, None, None]


def test_extra_args_come_last_engine_then_role():
    dep = make_deployment(
        engine={"extraArgs": ["--enable-dp-lm-head"]}, decode={"extraArgs": ["--cuda-graph-bs", "64"]}
    )
    assert args_of(pods_of(dep, "decode")[0])[-3:] == ["--enable-dp-lm-head", "--cuda-graph-bs", "64"]
    assert args_of(pods_of(dep, "prefill")[0])[-1] == "--enable-dp-lm-head"


def test_headless_service_gives_every_engine_pod_a_stable_name(dep):
    svc = engine_pods.headless_service(dep)
    assert svc["metadata"]["name"] == "deepseek-v3-engines"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    for pod in all_pods(dep):
        labels = pod["metadata"]["labels"]
        assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())


# ---- hashes and revisions -------------------------------------------------------------------------


def hashes(dep: api.SBSDeployment) -> dict[str, str]:
    return {r: engine_pods.template_hash(dep.spec, r, False) for r in api.ROLES}


def test_serving_revision_is_shared_by_both_roles(dep):
    revisions = {p["metadata"]["labels"][labels.REVISION] for p in all_pods(dep)}
    assert revisions == {engine_pods.serving_revision(dep.spec)}


def test_image_change_changes_both_template_hashes_and_the_revision(dep):
    new = make_deployment(engine={"image": "lmsysorg/sglang:v0.5.24"})
    assert engine_pods.serving_revision(new.spec) != engine_pods.serving_revision(dep.spec)
    old_h, new_h = hashes(dep), hashes(new)
    assert all(old_h[r] != new_h[r] for r in api.ROLES)
    assert {p["spec"]["containers"][0]["image"] for p in all_pods(new)} == {"lmsysorg/sglang:v0.5.24"}
    old_names = {p["metadata"]["name"] for p in all_pods(dep)}
    assert old_names.isdisjoint(p["metadata"]["name"] for p in all_pods(new))  # surge never clashes


@pytest.mark.parametrize(
    ("role", "patch"),
    [
        ("decode", {"maxRunningRequests": 4096}),
        ("decode", {"deepepMode": "auto"}),
        ("prefill", {"chunkedPrefillSize": 262_144}),
        ("prefill", {"resources": {"cpu": "96"}}),
    ],
)
def test_a_role_field_changes_only_that_roles_hash(dep, role, patch):
    other = "prefill" if role == "decode" else "decode"
    new = make_deployment(**{role: patch})
    assert hashes(new)[role] != hashes(dep)[role]
    assert hashes(new)[other] == hashes(dep)[other]
    assert engine_pods.serving_revision(new.spec) == engine_pods.serving_revision(dep.spec)


def test_scheduler_and_strategy_changes_leave_engine_hashes_alone(dep):
    new = make_deployment(scheduler={"policy": "least_load"}, updateStrategy={"maxSurge": 2})
    assert hashes(new) == hashes(dep)


def test_gang_scheduling_changes_the_template_hash(dep):
    assert engine_pods.template_hash(dep.spec, "decode", True) != engine_pods.template_hash(
        dep.spec, "decode", False
    )


# ---- ownership and determinism --------------------------------------------------------------------


def everything(dep: api.SBSDeployment) -> list[dict[str, Any]]:
    gang_pg = [
        engine_pods.pod_group(dep, r, i, engine_pods.template_hash(dep.spec, r, True))
        for r in api.ROLES
        for i in range(dep.spec.role(r).groups)
    ]
    return [
        *all_pods(dep),
        *all_pods(dep, gang=True),
        *gang_pg,
        engine_pods.headless_service(dep),
        *scheduler_objects.objects(dep),
    ]


def test_every_object_is_owned_by_the_deployment_and_in_its_namespace(dep):
    for obj in everything(dep):
        meta = obj["metadata"]
        assert meta["namespace"] == NS, meta["name"]
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "sbs.dev/v1alpha1",
                "kind": "SBSDeployment",
                "name": "deepseek-v3",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ], meta["name"]
        assert meta["labels"][labels.DEPLOYMENT] == "deepseek-v3"


def test_builders_are_deterministic(dep):
    again = make_deployment()
    assert everything(dep) == everything(again)
    assert everything(dep) == everything(dep)
    assert hashes(dep) == hashes(again)


# ---- the scheduler --------------------------------------------------------------------------------


def by_kind(dep: api.SBSDeployment) -> dict[str, dict[str, Any]]:
    objs = scheduler_objects.objects(dep)
    kinds = {o["kind"]: o for o in objs}
    assert len(kinds) == len(objs)
    return kinds


def test_scheduler_role_only_reads_pods(dep):
    objs = by_kind(dep)
    assert set(objs) == {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment", "Service"}
    assert objs["Role"]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    binding = objs["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "deepseek-v3-scheduler",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "deepseek-v3-scheduler", "namespace": NS}
    ]
    pod_spec = objs["Deployment"]["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == objs["ServiceAccount"]["metadata"]["name"]


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_scheduler_config_map_holds_valid_settings_with_the_chosen_policy(policy):
    dep = make_deployment(scheduler={"policy": policy, "settings": {"sync": {"transit_s": 0.01}, "seed": 7}})
    cfg = yaml.safe_load(by_kind(dep)["ConfigMap"]["data"][scheduler_objects.CONFIG_KEY])
    settings = SchedulerSettings.model_validate(cfg["scheduler"])
    assert settings.policy.type == policy
    assert settings.sync.transit_s == 0.01 and settings.seed == 7
    assert cfg["port"] == 8000
    service = ServiceSettings.model_validate(cfg)  # the whole file is what `sbs-scheduler run` accepts
    k8s = service.engines.kubernetes
    assert k8s is not None and (k8s.namespace, k8s.deployment) == (NS, dep.name)
    leader = pods_of(dep, "prefill")[0]
    assert (
        engine_from_pod(
            {**leader, "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}},
            deployment=k8s.deployment,
        )
        is not None
    )  # the scheduler recognises the operator's leaders


def test_policy_settings_reach_the_config():
    dep = make_deployment(
        scheduler={"policy": "sbs", "settings": {"policy": {"batching": {"lead_s": 0.004}}}}
    )
    cfg = yaml.safe_load(by_kind(dep)["ConfigMap"]["data"][scheduler_objects.CONFIG_KEY])
    assert SchedulerSettings.model_validate(cfg["scheduler"]).policy.batching.lead_s == 0.004


def test_a_config_change_restarts_the_scheduler(dep):
    new = make_deployment(scheduler={"settings": {"seed": 1}})
    template = "spec", "template", "metadata", "annotations"
    a, b = by_kind(dep)["Deployment"], by_kind(new)["Deployment"]
    for key in template:
        a, b = a[key], b[key]
    assert a[labels.SPEC_HASH] != b[labels.SPEC_HASH]


@pytest.mark.parametrize(
    ("settings", "policy", "where"),
    [
        ({"sync": {"transit_s": -1}}, "sbs", "spec.scheduler.settings.sync.transit_s"),
        ({"batching": {"lead_s": 0.1}}, "sbs", "spec.scheduler.settings.batching"),
        (
            {"policy": {"batching": {"max_hold_s": 0}}},
            "sbs",
            "spec.scheduler.settings.policy.sbs.batching.max_hold_s",
        ),
        ({"policy": {"batching": {}}}, "round_robin", "spec.scheduler.settings.policy.round_robin.batching"),
    ],
)
def test_invalid_scheduler_settings_name_the_field(settings, policy, where):
    dep = make_deployment(scheduler={"policy": policy, "settings": settings})
    with pytest.raises(scheduler_objects.SchedulerSettingsError) as info:
        scheduler_objects.objects(dep)
    assert str(info.value).startswith(f"{where}:"), str(info.value)


# ---- gang scheduling ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", api.ROLES)
def test_pod_group_needs_the_whole_group(dep, role):
    thash = engine_pods.template_hash(dep.spec, role, True)
    pg = engine_pods.pod_group(dep, role, 1, thash)
    pods = engine_pods.group_pods(dep, role, 1, thash, gang=True)
    gid = pods[0]["metadata"]["labels"][labels.GROUP_ID]
    assert pg["apiVersion"] == "scheduling.x-k8s.io/v1alpha1" and pg["kind"] == "PodGroup"
    assert pg["metadata"]["name"] == gid
    assert pg["spec"] == {"minMember": EXPECTED[role][0]}
    for pod in pods:
        assert pod["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
        assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == gid


def test_without_gang_pods_use_the_default_scheduler(dep):
    for pod in pods_of(dep, "decode"):
        assert "schedulerName" not in pod["spec"]
        assert "scheduling.x-k8s.io/pod-group" not in pod["metadata"]["labels"]


def test_volcano_gang_uses_the_group_name_annotation_and_a_custom_scheduler_name():
    dep = make_deployment(gangScheduling={"provider": "volcano", "schedulerName": "my-volcano"})
    pods = pods_of(dep, "decode", gang=True)
    gid = pods[0]["metadata"]["labels"][labels.GROUP_ID]
    for pod in pods:
        assert pod["spec"]["schedulerName"] == "my-volcano"
        assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == gid
    pg = engine_pods.pod_group(dep, "decode", 0, engine_pods.template_hash(dep.spec, "decode", True))
    assert pg["apiVersion"] == "scheduling.volcano.sh/v1beta1" and pg["spec"]["minMember"] == 9


def test_a_recreated_deployment_never_reuses_its_predecessors_pod_names(dep):
    first = engine_pods.template_hash(dep.spec, "prefill", False, "uid-1")
    second = engine_pods.template_hash(dep.spec, "prefill", False, "uid-2")
    assert first != second
    assert child_names.pod_name("d", "prefill", 0, first, 0) != child_names.pod_name(
        "d", "prefill", 0, second, 0
    )


def test_several_scheduler_replicas_share_the_prefill_through_leases(dep):
    dep.spec.scheduler.replicas = 3
    objs = by_kind(dep)
    assert objs["Deployment"]["spec"]["replicas"] == 3
    assert scheduler_objects.config(dep)["replicas"] == {"backend": "kubernetes"}
    lease_rules = [r for r in objs["Role"]["rules"] if r["apiGroups"] == ["coordination.k8s.io"]]
    assert lease_rules and lease_rules[0]["resources"] == ["leases"] and "delete" in lease_rules[0]["verbs"]
    container = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_IP": "status.podIP"}
    dep.spec.scheduler.replicas = 1
    assert "replicas" not in scheduler_objects.config(dep)
