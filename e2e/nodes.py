"""Pure builders for the simulated H800 nodes and for kwok's configuration.

Each fake node looks, to the scheduler and the operator, like an 8×H800 server: the labels
NVIDIA's GPU feature discovery sets, a zone/block/rack topology, and capacity for GPUs, RDMA
devices, CPU, memory and 1 GiB hugepages. kwok marks them Ready, keeps their Leases and plays
their pods (Running and Ready at once, gone at once when deleted; Failed first when a finalizer
holds them, see `POD_STOP_STAGE`).

Pod IPs are in 127.0.0.0/8: a cluster in slot `s` owns `127.<POD_NET_BASE + s>.0.0/16`, cut
into one subnet per node, so an emulator bound to a pod's IP is reachable from tests without
leaving loopback, and two clusters on one machine never hand out the same pod IP. Up to 256 nodes
node `i` gets `127.<POD_NET_BASE + s>.<i>.0/24`; a larger cluster gets smaller subnets (`/25` up to
512 nodes, `/26` up to 1,024, ... `/28` up to `MAX_NODES`), and each node then offers at most as
many pods as its subnet has addresses (as GKE sizes a node's range to its max pods).
"""

from __future__ import annotations

import dataclasses
import json

# Label and annotation keys.
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
BLOCK_LABEL = "network.topology.kubernetes.io/block"
"""A group of racks under one set of spine switches (the coarser packing domain)."""
RACK_LABEL = "network.topology.kubernetes.io/rack"
"""Nodes under one leaf switch (the finer packing domain)."""
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
FAKE_NODE_LABEL = "type"  # kwokctl's convention: type=kwok

GPU_RESOURCE = "nvidia.com/gpu"

POD_NET_BASE = 100
"""Second octet of slot 0's pod network (127.100.0.0/16); slot s uses 127.(100+s).0.0/16."""
MAX_SLOTS = 255 - POD_NET_BASE
POD_NET_PREFIX = 16
"""A slot's pod network is a /16."""
NODE_PREFIX_MIN = 24
"""A node's pod subnet is a /24 while every node can have one (up to 256 nodes)..."""
NODE_PREFIX_MAX = 28
"""... and never smaller than a /28 (14 pod addresses)."""
MAX_NODES = 1 << (NODE_PREFIX_MAX - POD_NET_PREFIX)
"""4,096 nodes, each with a /28 of the slot's /16."""
SERVICE_CIDR = "127.96.0.0/16"
"""Service ClusterIPs, in loopback too (nothing proxies them here; they are only data)."""
SERVICE_IP = "127.96.0.1"
"""The `kubernetes` Service's ClusterIP: the first address of SERVICE_CIDR."""


@dataclasses.dataclass(frozen=True)
class NodeShape:
    """What one simulated GPU server offers."""

    gpus: int = 8
    gpu_product: str = "NVIDIA-H800"
    gpu_memory_mib: int = 81559
    """`nvidia.com/gpu.memory` as GPU feature discovery reports an 80 GB H800."""
    cpu: int = 192
    """Two 48-core Xeon 8468 with hyper-threading."""
    memory_gib: int = 2048
    hugepages_1gi_gib: int = 64
    """Reserved as 1 GiB pages, taken out of allocatable memory the way the kubelet does."""
    rdma_resource: str = "rdma/ib"
    rdma_devices: int = 8
    """One 400 Gb/s InfiniBand NIC per GPU."""
    pods: int = 110

    def resources(self) -> dict[str, str]:
        return {
            "cpu": str(self.cpu),
            "memory": f"{self.memory_gib - self.hugepages_1gi_gib}Gi",
            "hugepages-1Gi": f"{self.hugepages_1gi_gib}Gi",
            "hugepages-2Mi": "0",
            "ephemeral-storage": "3500Gi",
            "pods": str(self.pods),
            GPU_RESOURCE: str(self.gpus),
            self.rdma_resource: str(self.rdma_devices),
        }


@dataclasses.dataclass(frozen=True)
class Topology:
    """How nodes are numbered into racks and blocks: node i is in rack i // nodes_per_rack."""

    nodes_per_rack: int = 4
    racks_per_block: int = 4
    region: str = "sim"
    zone: str = "sim-a"

    def rack(self, index: int) -> int:
        return index // self.nodes_per_rack

    def block(self, index: int) -> int:
        return self.rack(index) // self.racks_per_block


def node_name(index: int) -> str:
    return f"h800-{index:03d}"


def node_prefix(node_count: int) -> int:
    """The prefix length of each node's pod subnet in a cluster of `node_count` nodes: the largest
    subnet, from a /24 down, of which the slot's /16 holds one per node."""
    if not 0 <= node_count <= MAX_NODES:
        raise ValueError(f"node count must be in [0, {MAX_NODES}], got {node_count}")
    return NODE_PREFIX_MIN + max(0, (node_count - 1).bit_length() - (NODE_PREFIX_MIN - POD_NET_PREFIX))


def pod_cidr(slot: int, index: int, prefix: int = NODE_PREFIX_MIN) -> str:
    """Node `index`'s pod subnet (a /`prefix`) in slot `slot`'s pod network."""
    if not 0 <= slot < MAX_SLOTS:
        raise ValueError(f"slot must be in [0, {MAX_SLOTS}), got {slot}")
    if not NODE_PREFIX_MIN <= prefix <= NODE_PREFIX_MAX:
        raise ValueError(f"node prefix must be in [{NODE_PREFIX_MIN}, {NODE_PREFIX_MAX}], got {prefix}")
    subnets = 1 << (prefix - POD_NET_PREFIX)
    if not 0 <= index < subnets:
        raise ValueError(f"node index must be in [0, {subnets}) for /{prefix} subnets, got {index}")
    offset = index << (32 - prefix)
    return f"127.{POD_NET_BASE + slot}.{offset >> 8}.{offset & 0xFF}/{prefix}"


def build_node(
    index: int, *, slot: int, shape: NodeShape, topology: Topology, prefix: int = NODE_PREFIX_MIN
) -> dict:
    """One fake GPU node, with the status kwok keeps (capacity and allocatable). Its pod subnet is a
    /`prefix` (`node_prefix` of the cluster's size); it offers no more pods than that has addresses."""
    name = node_name(index)
    resources = shape.resources()
    resources["pods"] = str(min(shape.pods, (1 << (32 - prefix)) - 2))
    cidr = pod_cidr(slot, index, prefix)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                FAKE_NODE_LABEL: "kwok",
                GPU_PRESENT_LABEL: "true",
                GPU_PRODUCT_LABEL: shape.gpu_product,
                GPU_COUNT_LABEL: str(shape.gpus),
                GPU_MEMORY_LABEL: str(shape.gpu_memory_mib),
                REGION_LABEL: topology.region,
                ZONE_LABEL: topology.zone,
                BLOCK_LABEL: f"block-{topology.block(index)}",
                RACK_LABEL: f"rack-{topology.rack(index):02d}",
            },
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"capacity": dict(resources), "allocatable": dict(resources)},
    }


def build_nodes(count: int, *, slot: int, shape: NodeShape, topology: Topology) -> list[dict]:
    prefix = node_prefix(count)
    return [build_node(i, slot=slot, shape=shape, topology=topology, prefix=prefix) for i in range(count)]


# The harness's own kwok Stage, played after kwok's (see `binaries.Binaries.stage_documents`). kwok's
# `pod-delete` deletes a pod as soon as it has a deletionTimestamp; a pod that still has finalizers
# (Kueue's `kueue.x-k8s.io/managed`) then stays Terminating for good, because whoever holds the
# finalizer waits for a terminal phase that only a kubelet sets. This stage plays that kubelet:
# a deleted pod with finalizers whose containers have stopped is marked Failed. Its weight (1) makes
# kwok pick it over `pod-delete` (weight 0), which matches too; once the pod is Failed only
# `pod-delete` matches, and the pod goes when its finalizers do. Pods without finalizers never
# match, so they are still deleted at once.
POD_STOP_STAGE = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: sbs-pod-stop-on-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: .metadata.deletionTimestamp
      operator: Exists
    - key: .metadata.finalizers
      operator: Exists
    - key: .status.phase
      operator: NotIn
      values: [Failed, Succeeded]
  weight: 1
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Failed
      conditions:
      - {type: Ready, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }}}
      - {type: ContainersReady, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }}}
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: false
        started: false
        restartCount: 0
        state:
          terminated:
            exitCode: 137
            reason: Error
            startedAt: {{ $now | Quote }}
            finishedAt: {{ $now | Quote }}
      {{ end }}
"""
HARNESS_STAGES = (POD_STOP_STAGE,)
"""kwok Stage documents the harness adds to kwok's own."""


NODES_PER_LEASE_WORKER = 32
"""kwok renews each node's Lease every ~10 s (a quarter of `nodeLeaseDurationSeconds`), one PUT per
worker at a time. With 4 workers for 1,000 nodes on a loaded 2-core machine renewals fell ~40 s
behind, the node lifecycle controller marked nodes NotReady and their pods not Ready (which kwok
never sets back): one worker per 32 nodes, at least 4."""


def kwok_config(stages: list[str], *, slot: int, server_port: int, node_count: int = 0) -> str:
    """kwok's `--config`: options (parallelism set, or kwok refuses to start) plus the stages.

    The node IP is 127.0.0.1 so the apiserver's kubelet calls (logs, exec) reach kwok's
    server on loopback; `cidr` is only the fallback for nodes without a pod CIDR. Lease renewal
    workers scale with `node_count` (`NODES_PER_LEASE_WORKER`).
    """
    options = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        "options": {
            "cidr": f"127.{POD_NET_BASE + slot}.255.1/24",
            "nodeIP": "127.0.0.1",
            "serverAddress": f"127.0.0.1:{server_port}",
            "nodePort": server_port,
            "nodeLeaseDurationSeconds": 40,
            "nodeLeaseParallelism": max(4, -(-node_count // NODES_PER_LEASE_WORKER)),
            "podPlayStageParallelism": 4,
            "nodePlayStageParallelism": 4,
            "podsOnNodeSyncParallelism": 1,
        },
    }
    docs = [json.dumps(options, indent=2), *(s.strip() for s in stages)]
    return "\n---\n".join(docs) + "\n"
