"""Fake H800 nodes and kwok's configuration."""

import ipaddress
import itertools

import pytest
import yaml
from sbs.e2e import nodes


def make_node(index=0, slot=0, **shape):
    return nodes.build_node(index, slot=slot, shape=nodes.NodeShape(**shape), topology=nodes.Topology())


def test_node_is_labelled_like_an_h800_server():
    labels = make_node()["metadata"]["labels"]
    assert labels[nodes.GPU_PRODUCT_LABEL] == "NVIDIA-H800"
    assert labels[nodes.GPU_PRESENT_LABEL] == "true"
    assert labels[nodes.GPU_COUNT_LABEL] == "8"
    assert labels[nodes.ZONE_LABEL] == "sim-a"
    assert labels["kubernetes.io/hostname"] == "h800-000"


def test_node_offers_gpus_rdma_cpu_memory_and_hugepages():
    node = make_node()
    assert node["status"]["capacity"] == node["status"]["allocatable"]
    res = node["status"]["allocatable"]
    assert res["nvidia.com/gpu"] == "8"
    assert res["rdma/ib"] == "8"
    assert res["cpu"] == "192"
    assert res["hugepages-1Gi"] == "64Gi"
    assert res["memory"] == "1984Gi"  # hugepages come out of allocatable memory


def test_racks_and_blocks_follow_the_node_index():
    topo = nodes.Topology(nodes_per_rack=4, racks_per_block=4)
    built = nodes.build_nodes(64, slot=0, shape=nodes.NodeShape(), topology=topo)
    labels = [n["metadata"]["labels"] for n in built]
    assert [lab[nodes.RACK_LABEL] for lab in labels[:5]] == ["rack-00"] * 4 + ["rack-01"]
    assert labels[15][nodes.BLOCK_LABEL] == "block-0"
    assert labels[16][nodes.BLOCK_LABEL] == "block-1"
    assert len({lab[nodes.RACK_LABEL] for lab in labels}) == 16
    assert len({lab[nodes.BLOCK_LABEL] for lab in labels}) == 4


@pytest.mark.parametrize("count", [256, 1000, nodes.MAX_NODES])
def test_pod_cidrs_are_loopback_and_disjoint_across_nodes_and_slots(count):
    prefix = nodes.node_prefix(count)
    cidrs = [nodes.pod_cidr(slot, i, prefix) for slot in (0, 1, nodes.MAX_SLOTS - 1) for i in range(count)]
    nets = sorted(ipaddress.ip_network(c) for c in cidrs)
    assert all(n.subnet_of(ipaddress.ip_network("127.0.0.0/8")) for n in nets)
    assert not any(a.overlaps(b) for a, b in itertools.pairwise(nets))
    assert not any(n.overlaps(ipaddress.ip_network(nodes.SERVICE_CIDR)) for n in nets)


@pytest.mark.parametrize(
    ("count", "prefix", "pods"), [(1, 24, "110"), (256, 24, "110"), (257, 25, "110"), (1000, 26, "62"),
                                  (nodes.MAX_NODES, 28, "14")],
)  # fmt: skip
def test_large_clusters_get_smaller_subnets_and_as_many_pods_as_addresses(count, prefix, pods):
    assert nodes.node_prefix(count) == prefix
    last = nodes.build_nodes(count, slot=0, shape=nodes.NodeShape(), topology=nodes.Topology())[-1]
    net = ipaddress.ip_network(last["spec"]["podCIDR"])
    assert net.prefixlen == prefix and net.subnet_of(ipaddress.ip_network("127.100.0.0/16"))
    assert last["status"]["allocatable"]["pods"] == pods
    assert int(pods) <= net.num_addresses - 2


@pytest.mark.parametrize(
    ("slot", "index", "prefix"),
    [(-1, 0, 24), (nodes.MAX_SLOTS, 0, 24), (0, 256, 24), (0, 1024, 26), (0, 0, 23), (0, 0, 29)],
)
def test_pod_cidr_rejects_out_of_range(slot, index, prefix):
    with pytest.raises(ValueError, match="must be in"):
        nodes.pod_cidr(slot, index, prefix)


def test_node_spec_carries_its_pod_cidr():
    spec = make_node(index=5, slot=2)["spec"]
    assert spec == {"podCIDR": "127.102.5.0/24", "podCIDRs": ["127.102.5.0/24"]}


def test_service_ip_is_in_the_service_cidr():
    assert ipaddress.ip_address(nodes.SERVICE_IP) in ipaddress.ip_network(nodes.SERVICE_CIDR)


def test_kwok_config_sets_parallelism_loopback_and_stages():
    stage = "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Stage\nmetadata: {name: s}\n"
    docs = list(yaml.safe_load_all(nodes.kwok_config([stage, stage], slot=3, server_port=12345)))
    options = docs[0]["options"]
    assert docs[0]["kind"] == "KwokConfiguration"
    assert [d["kind"] for d in docs[1:]] == ["Stage", "Stage"]
    for key in ("nodeLeaseParallelism", "podPlayStageParallelism", "nodePlayStageParallelism"):
        assert options[key] > 0  # kwok refuses to start with 0
    assert options["nodeIP"] == "127.0.0.1"
    assert options["serverAddress"] == "127.0.0.1:12345"
    assert ipaddress.ip_address(options["cidr"].split("/")[0]).is_loopback


def test_too_many_nodes_are_refused():
    with pytest.raises(ValueError, match="node count"):
        nodes.build_nodes(nodes.MAX_NODES + 1, slot=0, shape=nodes.NodeShape(), topology=nodes.Topology())


@pytest.mark.parametrize(("count", "workers"), [(0, 4), (64, 4), (128, 4), (129, 5), (1000, 32)])
def test_kwok_lease_workers_scale_with_the_node_count(count, workers):
    (options, *_) = yaml.safe_load_all(nodes.kwok_config([], slot=0, server_port=1, node_count=count))
    assert options["options"]["nodeLeaseParallelism"] == workers
