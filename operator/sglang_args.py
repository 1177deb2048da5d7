"""The SGLang 0.5.23 command line of one engine pod, written by the operator (users never template it).

Every flag here is checked against SGLang's own `ServerArgs` parser by the contract tests.
`$(POD_IP)` and `$(SBS_ENGINE_API_KEY)` are expanded by the kubelet from the pod's environment.
"""

from __future__ import annotations

from sbs.operator import api
from sbs.operator.api_refs import API_KEY_ENV, POD_IP_ENV

LAUNCH = ("python3", "-m", "sglang.launch_server")
POD_IP_REF = f"$({POD_IP_ENV})"
API_KEY_REF = f"$({API_KEY_ENV})"
"""The key itself stays in its Secret: the pod spec holds only this reference."""
DEFAULT_DEEPEP_MODE = {"prefill": "normal", "decode": "low_latency"}


def engine_args(spec: api.SBSDeploymentSpec, role: str, *, rank: int, dist_init_host: str) -> list[str]:
    """Arguments (after `python3 -m sglang.launch_server`) for rank `rank` of a `role` group."""
    r = spec.role(role)
    e = spec.engine
    args = ["--model-path", spec.model.path]
    if spec.model.served_name:
        args += ["--served-model-name", spec.model.served_name]
    if spec.model.revision:
        args += ["--revision", spec.model.revision]
    if spec.model.trust_remote_code:
        args.append("--trust-remote-code")
    args += ["--disaggregation-mode", role, "--disaggregation-transfer-backend", e.transfer_backend]
    if role == "prefill":
        args += ["--disaggregation-bootstrap-port", str(e.bootstrap_port)]
    if e.ib_devices:
        args += ["--disaggregation-ib-device", e.ib_devices]
    args += ["--tp-size", str(r.tp_size), "--attn-dp-size", str(r.attn_dp_size), "--ep-size", str(r.ep_size)]
    args += ["--moe-a2a-backend", r.moe_a2a_backend]
    if r.moe_a2a_backend == "deepep":
        args += ["--deepep-mode", r.deepep_mode or DEFAULT_DEEPEP_MODE[role]]
    if r.nodes_per_group > 1:
        args += [
            "--nnodes", str(r.nodes_per_group),
            "--node-rank", str(rank),
            "--dist-init-addr", f"{dist_init_host}:{e.dist_init_port}",
        ]  # fmt: skip
    if r.chunked_prefill_size:
        args += ["--chunked-prefill-size", str(r.chunked_prefill_size)]
    if r.max_running_requests:
        args += ["--max-running-requests", str(r.max_running_requests)]
    if r.mem_fraction_static:
        args += ["--mem-fraction-static", str(r.mem_fraction_static)]
    args += ["--enable-metrics", "--host", POD_IP_REF, "--port", str(e.port)]
    if e.api_key_secret_ref:
        args += ["--api-key", API_KEY_REF]
    return args + list(e.extra_args) + list(r.extra_args)
