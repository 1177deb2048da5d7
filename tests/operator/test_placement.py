"""Topology-aware placement of whole engine groups: free slots per domain, best fit, pinning."""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sbs.kube import timestamps
from sbs.operator import cluster_view, placement

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
            "allocatable": {placement.GPU: str(gpus), "cpu": "192", "memory": "1984Gi", "rdma/ib": "8"},
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


def test_quantities_parse_as_kubernetes_writes_them() -> None:
    q = placement.quantity
    assert (q("500m"), q("2"), q("1.5"), q("64Gi"), q("1k"), q("1e3"), q("3M"), q(None)) == (
        0.5, 2, 1.5, 64 * 2**30, 1000, 1000, 3e6, 0,
    )  # fmt: skip
    with pytest.raises(ValueError):
        q("lots")


def test_requests_are_what_kube_scheduler_reserves() -> None:
    p = {"spec": {
        "containers": [
            {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {placement.GPU: "8"}}},
            {"resources": {"requests": {"cpu": "500m"}}},
        ],
        "initContainers": [{"resources": {"requests": {"cpu": "4", "memory": "512Mi"}}}],
        "overhead": {"cpu": "100m"},
    }}  # fmt: skip
    assert placement.requests(p) == pytest.approx({placement.GPU: 8, "cpu": 4.1, "memory": 2**30})


def test_a_node_whose_memory_other_pods_hold_is_not_free_whatever_its_gpus() -> None:
    """A GPU-less pod holding most of a node's memory makes kube-scheduler refuse an engine pod there
    (`Insufficient memory`): placement must see it too, or it pins groups where they strand."""
    nodes = [node("a1", "a"), node("a2", "a"), node("b1", "b")]
    hog = pod(0, node_name="a1")
    hog["spec"]["containers"] = [{"resources": {"requests": {"memory": "1500Gi"}}}]
    engine = {"cpu": 64.0, "memory": 1024 * 2.0**30, "rdma/ib": 8.0}
    alloc = placement.allocation(nodes, [hog])
    assert alloc.free(key=KEY, selector=H800, gpus=8) == {"a": 2, "b": 1}  # GPUs alone: a1 looks free
    assert alloc.free(key=KEY, selector=H800, gpus=8, other=engine) == {"a": 1, "b": 1}
    assert alloc.free(key=KEY, selector=H800, gpus=8, other={"example.com/fpga": 1}) == {}  # nowhere


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


# ---- the shared cluster view: one listing per TTL, pages, reservations ------------------------------


class PagedApi:
    """Nodes and pods served `limit` at a time with `continue` tokens; counts LIST rounds."""

    def __init__(
        self, nodes: list[dict[str, Any]], pods: list[dict[str, Any]], fail: int | None = None
    ) -> None:
        self.items = {"/api/v1/nodes": nodes, "/api/v1/pods": pods}
        self.rounds: Counter[str] = Counter()
        self.params: list[dict[str, Any]] = []
        self.fail = fail

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        from sbs.kube.client import ApiError

        if self.fail is not None:
            raise ApiError("GET", path, self.fail, "Forbidden", "")
        self.params.append(params)
        start = int(params.get("continue", 0))
        if start == 0:
            self.rounds[path] += 1
        await asyncio.sleep(0.01)  # a round trip, so that concurrent readers overlap
        items = self.items[path]
        end = start + params["limit"]
        meta = {"continue": str(end)} if end < len(items) else {}
        return {"metadata": meta, "items": items[start:end]}


def test_the_view_lists_pods_once_per_ttl_for_many_concurrent_readers_in_pages() -> None:
    nodes = [node(f"a{i}", "a") for i in range(5)]
    pods = [pod(8, node_name="a0"), pod(8, node_name="a1"), pod(8, node_name="a2", phase="Succeeded")]
    api = PagedApi(nodes, pods)
    view = cluster_view.ClusterView(ttl_s=60.0, page_size=2)

    async def readers() -> list[Any]:
        return await asyncio.gather(*(view.allocation(api) for _ in range(20)))  # type: ignore[arg-type]

    allocs = asyncio.run(readers())
    assert api.rounds == {"/api/v1/nodes": 1, "/api/v1/pods": 1}
    assert all(a is allocs[0] for a in allocs)
    assert allocs[0].free(key=KEY, selector=H800, gpus=8) == {"a": 3}
    assert {p["limit"] for p in api.params} == {2}
    assert any(p.get("fieldSelector") == cluster_view.LIVE_PODS for p in api.params)


def test_without_permission_to_list_nodes_the_view_is_empty_and_does_not_retry_within_its_ttl() -> None:
    api = PagedApi([], [], fail=403)
    view = cluster_view.ClusterView(ttl_s=60.0)

    async def twice() -> tuple[Any, Any]:
        return await view.nodes(api), await view.allocation(api)  # type: ignore[arg-type]

    assert asyncio.run(twice()) == (None, None)
    assert view.lists["nodes"] == 1


def test_two_groups_placed_at_once_never_target_the_same_free_nodes() -> None:
    """Domains a and b have room for one 4-node group each; two deployments place one each, at the
    same time, from one cached listing: the first choice is reserved before the second is made."""
    from sbs.operator import api as api_mod
    from sbs.operator import group_plan, reconciler

    nodes = [node(f"{d}{i}", d) for d in "ab" for i in range(4)]
    api = PagedApi(nodes, [])
    view = cluster_view.ClusterView(ttl_s=60.0)

    def dep(name: str) -> api_mod.SBSDeployment:
        spec = {"model": {"path": "/m"}, "prefill": {"groups": 1, "nodesPerGroup": 4, "topologyKey": KEY},
                "decode": {"groups": 0, "nodesPerGroup": 1}}  # fmt: skip
        meta = {"name": name, "namespace": "ns", "uid": name, "generation": 1}
        return api_mod.SBSDeployment.model_validate({"metadata": meta, "spec": spec})

    create = [group_plan.GroupAction("prefill", 0, "h", "Create")]

    async def both() -> list[Any]:
        placing = (reconciler._placed(api, view, dep(n), create, False) for n in ("x", "y"))  # type: ignore[arg-type]
        return await asyncio.gather(*placing)

    placed = asyncio.run(both())
    domains = sorted(
        pods[0]["metadata"]["annotations"][placement.DOMAIN_ANNOTATION] for [(_, pods, _)] in placed
    )
    assert domains == ["a", "b"]
    assert api.rounds["/api/v1/pods"] == 1
    # both created: a listing that starts afterwards shows the pods themselves, reservations dropped
    for [(_, _, reservation)] in placed:
        view.settle(reservation)
    api.items["/api/v1/pods"] = [p for [(_, pods, _)] in placed for p in pods]
    alloc = asyncio.run(view.allocation(api, 0.0))  # type: ignore[arg-type]
    assert view.reservations == []
    assert alloc is not None and view.free(alloc, key=KEY, selector=H800, gpus=8) == {"a": 0, "b": 0}


def test_a_reservation_holds_while_its_pods_are_created_and_a_full_view_is_listed_again() -> None:
    from sbs.operator import api as api_mod
    from sbs.operator import group_plan, reconciler

    api = PagedApi([node(f"a{i}", "a") for i in range(4)], [])
    view = cluster_view.ClusterView(ttl_s=60.0)
    spec = {"model": {"path": "/m"}, "prefill": {"groups": 1, "nodesPerGroup": 4, "topologyKey": KEY},
            "decode": {"groups": 0, "nodesPerGroup": 1}}  # fmt: skip
    dep = api_mod.SBSDeployment.model_validate(
        {"metadata": {"name": "d", "namespace": "ns", "uid": "u", "generation": 1}, "spec": spec}
    )
    create = [group_plan.GroupAction("prefill", 0, "h", "Create")]
    [(_, _, first)] = asyncio.run(reconciler._placed(api, view, dep, create, False))  # type: ignore[arg-type]
    assert first is not None and first.domain == "a"
    asyncio.run(view.allocation(api, 0.0))  # type: ignore[arg-type]
    assert view.reservations == [first]  # still being created: no listing may drop it
    view.settle(first)  # creation failed before any pod existed: the next listing frees the domain
    [(_, _, second)] = asyncio.run(reconciler._placed(api, view, dep, create, False))  # type: ignore[arg-type]
    assert second is not None and second.domain == "a"  # the cached view was full: it listed again
    assert api.rounds["/api/v1/pods"] == 3


def test_node_info_tells_when_a_node_went_not_ready() -> None:
    n = node("a1", "a", ready="False")
    n["status"]["conditions"][1]["lastTransitionTime"] = "2027-01-15T08:00:00Z"
    info = placement.node_info(n)
    assert not info.ready and info.not_ready_since == timestamps.parse("2027-01-15T08:00:00Z")
    assert placement.node_info(node("a2", "a")).not_ready_since is None


def test_a_ready_node_still_tainted_not_ready_counts_as_free() -> None:
    """Right after nodes join, the node controller lifts `node.kubernetes.io/not-ready` a few
    seconds after they turn Ready: placing around them then left groups unpinned (e2e start-up)."""
    joining = node("a1", "a")
    joining["spec"]["taints"] = [{"key": placement.NOT_READY_TAINT, "effect": "NoSchedule"}]
    down = node("a2", "a", ready="False")
    down["spec"]["taints"] = [{"key": placement.NOT_READY_TAINT, "effect": "NoSchedule"}]
    assert slots([joining, down]) == {"a": 1}
