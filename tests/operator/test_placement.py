"""Topology-aware placement of whole engine groups: free slots per domain, best fit, pinning."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sbs.operator import placement

KEY = "network.topology.kubernetes.io/block"
H800 = {"nvidia.com/gpu.product": "NVIDIA-H800"}


def node(
    name: str,
    domain: str | None,
    *,
    gpus: int | str = 8,
    labels: dict[str, str] | None = None,
    ready: str = "True",
    unschedulable: bool = False,
) -> dict[str, Any]:
    all_labels = dict(H800 if labels is None else labels)
    if domain is not None:
        all_labels[KEY] = domain
    return {
        "metadata": {"name": name, "labels": all_labels},
        "spec": {"unschedulable": True} if unschedulable else {},
        "status": {
            "allocatable": {placement.GPU: str(gpus)},
            "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": ready}],
        },
    }


def pod(
    gpus: int | str = 8, *, node_name: str | None = None, domain: str | None = None, phase: str = "Running"
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"p-{node_name or domain}"}
    if domain is not None:
        meta["annotations"] = {placement.DOMAIN_ANNOTATION: domain}
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "resources": {"limits": {placement.GPU: str(gpus)}}}]
    }
    if node_name is not None:
        spec["nodeName"] = node_name
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


def slots(nodes, pods=(), gpus: int = 8, selector: dict[str, str] | None = None) -> dict[str, int]:
    return placement.free_slots(
        list(nodes), list(pods), key=KEY, selector=H800 if selector is None else selector, gpus=gpus
    )


# ---- free_slots -----------------------------------------------------------------------------------


def test_free_slots_counts_nodes_per_domain():
    nodes = [node("a1", "a"), node("a2", "a"), node("b1", "b")]
    assert slots(nodes) == {"a": 2, "b": 1}


def test_nodes_without_the_topology_label_or_the_selector_are_not_counted():
    nodes = [
        node("a1", "a"),
        node("x", None),
        node("a100", "a", labels={"nvidia.com/gpu.product": "NVIDIA-A100"}),
    ]
    assert slots(nodes) == {"a": 1}


def test_unschedulable_and_not_ready_nodes_are_not_counted():
    nodes = [
        node("a1", "a"),
        node("a2", "a", unschedulable=True),
        node("a3", "a", ready="False"),
        node("a4", "a", ready="Unknown"),
    ]
    assert slots(nodes) == {"a": 1}


def test_nodes_with_too_few_gpus_are_not_counted():
    nodes = [node("a1", "a", gpus=8), node("a2", "a", gpus=4), node("b1", "b", gpus=0)]
    assert slots(nodes) == {"a": 1}
    assert slots(nodes, gpus=4) == {"a": 2}


def test_bound_pods_use_up_their_nodes_gpus():
    nodes = [node("a1", "a"), node("a2", "a"), node("b1", "b")]
    pods = [pod(8, node_name="a1"), pod(4, node_name="b1")]
    assert slots(nodes, pods) == {"a": 1}
    assert slots(nodes, pods, gpus=4) == {"a": 1, "b": 1}


def test_bound_pods_on_one_node_add_up():
    nodes = [node("a1", "a")]
    assert slots(nodes, [pod(4, node_name="a1"), pod(2, node_name="a1")], gpus=2) == {"a": 1}
    assert slots(nodes, [pod(4, node_name="a1"), pod(4, node_name="a1")], gpus=2) == {}


def test_finished_pods_free_their_gpus():
    nodes = [node("a1", "a"), node("a2", "a")]
    pods = [pod(8, node_name="a1", phase="Succeeded"), pod(8, node_name="a2", phase="Failed")]
    assert slots(nodes, pods) == {"a": 2}


def test_pinned_but_unbound_pods_reserve_a_slot_in_their_domain():
    nodes = [node(f"a{i}", "a") for i in range(4)] + [node("b1", "b")]
    pods = [pod(8, domain="a"), pod(8, domain="a"), pod(8, domain="b")]
    assert slots(nodes, pods) == {"a": 2, "b": 0}


def test_unpinned_unbound_pods_and_small_pending_pods_reserve_nothing():
    nodes = [node("a1", "a"), node("a2", "a")]
    assert slots(nodes, [pod(8), pod(2, domain="a")]) == {"a": 2}


def test_gpu_quantities_in_milli_units():
    nodes = [node("a1", "a", gpus="8000m")]
    assert slots(nodes, [pod("4000m", node_name="a1")], gpus=4) == {"a": 1}


# ---- choose ---------------------------------------------------------------------------------------


def test_choose_is_best_fit():
    free = {"a": 9, "b": 4, "c": 5, "d": 3}
    assert placement.choose(free, 4) == "b"
    assert placement.choose(free, 5) == "c"
    assert placement.choose(free, 9) == "a"


def test_choose_breaks_ties_by_name():
    assert placement.choose({"c": 4, "a": 4, "b": 4}, 4) == "a"


def test_choose_returns_none_when_nothing_fits():
    assert placement.choose({"a": 8, "b": 3}, 9) is None
    assert placement.choose({}, 1) is None
    assert placement.choose({"a": 0}, 1) is None


def test_a_decode_group_is_not_stranded_in_a_half_full_block():
    nodes = [node(f"a{i}", "a") for i in range(16)] + [node(f"b{i}", "b") for i in range(9)]
    pods = [pod(8, node_name=f"a{i}") for i in range(8)]  # block a: 8 of 16 busy
    assert placement.choose(slots(nodes, pods), 9) == "b"
    assert placement.choose(slots(nodes, pods), 4) == "a"  # the tighter hole for the small group


# ---- pin ------------------------------------------------------------------------------------------


def terms(p: dict[str, Any]) -> list[dict[str, Any]]:
    na = p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    return na["nodeSelectorTerms"]


IN_A = {"key": KEY, "operator": "In", "values": ["a"]}


def test_pin_adds_a_required_node_affinity_term_and_the_annotation():
    pinned = placement.pin(pod(8), KEY, "a")
    assert terms(pinned) == [{"matchExpressions": [IN_A]}]
    assert pinned["metadata"]["annotations"] == {placement.DOMAIN_ANNOTATION: "a"}


def test_pin_adds_the_domain_to_every_existing_term_and_keeps_the_rest():
    p = pod(8)
    p["metadata"]["annotations"] = {"keep": "me"}
    zone = {"key": "zone", "operator": "In", "values": ["z1"]}
    host = {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["bad"]}
    p["spec"]["affinity"] = {
        "podAffinity": {"x": 1},
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1}],
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [zone]},
                    {"matchExpressions": [host], "matchFields": [{"key": "metadata.name"}]},
                ]
            },
        },
    }
    before = copy.deepcopy(p)
    pinned = placement.pin(p, KEY, "a")
    assert terms(pinned) == [
        {"matchExpressions": [zone, IN_A]},
        {"matchExpressions": [host, IN_A], "matchFields": [{"key": "metadata.name"}]},
    ]
    affinity = pinned["spec"]["affinity"]
    assert affinity["podAffinity"] == {"x": 1}
    assert affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == [{"weight": 1}]
    assert pinned["metadata"]["annotations"] == {"keep": "me", placement.DOMAIN_ANNOTATION: "a"}
    assert pinned["spec"]["containers"] == p["spec"]["containers"]
    assert p == before  # the input is not modified


def test_a_pinned_pod_is_counted_by_free_slots():
    nodes = [node("a1", "a"), node("a2", "a")]
    assert slots(nodes, [placement.pin(pod(8), KEY, "a")]) == {"a": 1}


# ---- property: placing groups one after another never over-commits a domain -----------------------


def bind(p: dict[str, Any], nodes: list[dict[str, Any]], busy: set[str]) -> None:
    """What kube-scheduler does with a pinned pod: put it on a free node of its domain."""
    domain = p["metadata"]["annotations"][placement.DOMAIN_ANNOTATION]
    name = next(
        n["metadata"]["name"]
        for n in nodes
        if n["metadata"]["labels"][KEY] == domain and n["metadata"]["name"] not in busy
    )
    p["spec"]["nodeName"] = name
    busy.add(name)


@settings(max_examples=100, deadline=None)
@given(
    capacities=st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 12), min_size=1),
    groups=st.lists(st.integers(1, 10), max_size=20),
    data=st.data(),
)
def test_choose_never_over_commits_a_domain(capacities, groups, data):
    nodes = [node(f"{d}{i:02}", d) for d, n in capacities.items() for i in range(n)]
    pods: list[dict[str, Any]] = []
    busy: set[str] = set()
    placed = dict.fromkeys(capacities, 0)
    for size in groups:
        free = slots(nodes, pods)
        assert {d: free.get(d, 0) for d in capacities} == {d: capacities[d] - placed[d] for d in capacities}
        domain = placement.choose(free, size)
        fitting = [d for d in capacities if capacities[d] - placed[d] >= size]
        if domain is None:
            assert fitting == []
            continue
        assert free[domain] == min(capacities[d] - placed[d] for d in fitting)  # best fit
        placed[domain] += size
        assert placed[domain] <= capacities[domain]
        pods += [placement.pin(pod(8), KEY, domain) for _ in range(size)]
        for p in pods:  # kube-scheduler binds some pinned pods between placements: slots must not change
            if "nodeName" not in p["spec"] and data.draw(st.booleans()):
                bind(p, nodes, busy)


def test_nodes_with_untolerated_taints_are_not_free() -> None:
    def node(name: str, domain: str, taints: list[dict]) -> dict:
        return {
            "metadata": {"name": name, "labels": {"block": domain}},
            "spec": {"taints": taints},
            "status": {
                "allocatable": {"nvidia.com/gpu": "8"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }

    unreachable = {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}
    soft = {"key": "dedicated", "value": "x", "effect": "PreferNoSchedule"}
    nodes = [node("a", "b0", [unreachable]), node("b", "b0", [soft]), node("c", "b1", [])]
    assert placement.free_slots(nodes, [], key="block", selector={}, gpus=8) == {"b0": 1, "b1": 1}
    tolerate = [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoSchedule"}]
    assert placement.free_slots(nodes, [], key="block", selector={}, gpus=8, tolerations=tolerate) == {
        "b0": 2, "b1": 1,
    }  # fmt: skip
    assert placement.tolerated(
        {"key": "k", "value": "v", "effect": "NoSchedule"}, [{"key": "k", "value": "v"}]
    )
    assert not placement.tolerated(
        {"key": "k", "value": "v", "effect": "NoSchedule"}, [{"key": "k", "value": "w"}]
    )
