"""Every command line the operator writes is accepted by SGLang 0.5.23's own `ServerArgs` parser,
and parses to the parallelism, PD and rendezvous settings the spec asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sbs.operator import api, engine_pods, sglang_args

from tests.contract import sglang_env

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "deepseek-v3-h800.yaml"


def deployment(**spec_overrides: object) -> api.SBSDeployment:
    obj = yaml.safe_load(SAMPLE.read_text())
    obj["spec"].update(spec_overrides)
    obj["metadata"].update(namespace="prod", uid="u-1")
    return api.SBSDeployment.model_validate(obj)


VARIANTS = {
    "sample": deployment(),
    "single-node-groups": deployment(
        prefill={"groups": 2, "nodesPerGroup": 1, "chunkedPrefillSize": 16384},
        decode={"groups": 1, "nodesPerGroup": 1, "maxRunningRequests": 256},
        model={"path": "/models/dsv3", "servedName": "dsv3", "revision": "main", "trustRemoteCode": False},
    ),
    "explicit-parallelism-and-extras": deployment(
        prefill={
            "groups": 1,
            "nodesPerGroup": 2,
            "parallelism": {"tp": 16, "attnDp": 8, "ep": 16},
            "chunkedPrefillSize": 65536,
            "deepepMode": "auto",
            "extraArgs": ["--enable-two-batch-overlap"],
        },
        decode={"groups": 1, "nodesPerGroup": 2, "moeA2ABackend": "none", "memFractionStatic": 0.8},
        engine={"transferBackend": "nixl", "extraArgs": ["--moe-dense-tp-size", "1", "--enable-dp-lm-head"]},
    ),
    "api-key-from-a-secret": deployment(engine={"apiKeySecretRef": {"name": "engine-key", "key": "key"}}),
}
API_KEY = "k3y-from-the-secret"
"""What the kubelet puts in `$(SBS_ENGINE_API_KEY)` from the Secret."""


def argvs_of(dep: api.SBSDeployment) -> list[tuple[str, int, list[str]]]:
    """(role, rank, argv) of every pod of the first group of each role, with $(POD_IP) expanded."""
    out = []
    for role in api.ROLES:
        thash = engine_pods.template_hash(dep.spec, role, False)
        for pod in engine_pods.group_pods(dep, role, 0, thash, gang=False):
            c = pod["spec"]["containers"][0]
            assert c["command"] == list(sglang_args.LAUNCH)
            argv = [
                a.replace(sglang_args.POD_IP_REF, "10.0.0.7").replace(sglang_args.API_KEY_REF, API_KEY)
                for a in c["args"]
            ]
            out.append((role, int(pod["metadata"]["labels"]["sbs.dev/rank"]), argv))
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sglang_accepts_every_generated_command_line(sglang: sglang_env.Probe, variant: str) -> None:
    dep = VARIANTS[variant]
    lines = argvs_of(dep)
    verdicts = sglang.server_args([argv for _, _, argv in lines])
    for (role, rank, argv), verdict in zip(lines, verdicts, strict=True):
        assert verdict.error is None, f"{role} rank {rank}: {verdict.error}\n{' '.join(argv)}"
        assert not verdict.warnings, f"{role} rank {rank} uses deprecated flags: {verdict.warnings}"
        r = dep.spec.role(role)
        v = verdict.values
        assert v["disaggregation_mode"] == role
        assert v.get("tp_size", 1) == r.tp_size
        assert v.get("attn_dp_size", 1) == r.attn_dp_size
        assert v.get("ep_size", 1) == r.ep_size
        assert v.get("nnodes", 1) == r.nodes_per_group and v.get("node_rank", 0) == rank
        if r.nodes_per_group > 1:
            assert v["dist_init_addr"].endswith(f"-engines.prod.svc:{dep.spec.engine.dist_init_port}")
        assert v.get("port", 30000) == dep.spec.engine.port and v["host"] == "10.0.0.7"
        assert v.get("disaggregation_transfer_backend", "mooncake") == dep.spec.engine.transfer_backend
        if r.chunked_prefill_size:
            assert v["chunked_prefill_size"] == r.chunked_prefill_size
        assert v["enable_metrics"] is True
        assert v.get("api_key") == (API_KEY if dep.spec.engine.api_key_secret_ref else None)


def test_the_contract_can_fail(sglang: sglang_env.Probe) -> None:
    dep = VARIANTS["sample"]
    _, _, argv = argvs_of(dep)[0]
    bad = [*argv, "--attn-dp-szie", "32"]  # a typo the operator could make
    assert "unrecognized arguments" in (sglang.parse_server_args([bad])[0] or "")
