"""The SGLang probe accepts what SGLang 0.5.23 accepts and refuses, with SGLang's message, what it refuses."""

import pytest

from tests.contract import sglang_env, sglang_probe

IB = "mlx5_0,mlx5_1,mlx5_2,mlx5_3,mlx5_4,mlx5_5,mlx5_6,mlx5_7"
COMMON = [
    "--model-path", "deepseek-ai/DeepSeek-V3", "--trust-remote-code", "--host", "0.0.0.0", "--port", "30000",
    "--disaggregation-transfer-backend", "mooncake", "--disaggregation-ib-device", IB,
    "--moe-a2a-backend", "deepep", "--enable-metrics",
]  # fmt: skip
# The published DeepSeek-V3 PD + large-scale EP recipe (LMSYS, May 2025) in 0.5.23 flag names:
# prefill on 4 nodes (TP32 = attention DP32, EP32), decode on 9 nodes (TP72 = DP72, EP72).
PREFILL = [
    *COMMON, "--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", "8998",
    "--nnodes", "4", "--node-rank", "0", "--dist-init-addr", "10.0.0.1:5757",
    "--tp-size", "32", "--attn-dp-size", "32", "--ep-size", "32", "--deepep-mode", "normal",
    "--chunked-prefill-size", "524288", "--max-running-requests", "8192",
]  # fmt: skip
DECODE = [
    *COMMON, "--disaggregation-mode", "decode",
    "--nnodes", "9", "--node-rank", "3", "--dist-init-addr", "10.0.1.1:5050",
    "--tp-size", "72", "--attn-dp-size", "72", "--ep-size", "72", "--deepep-mode", "low_latency",
    "--chunked-prefill-size", "81920", "--max-running-requests", "18432",
]  # fmt: skip

ArgvVerdicts = dict[str, sglang_env.Verdict]
RequestVerdicts = dict[tuple[str, str], sglang_env.Verdict]

PD_FIELDS = {"bootstrap_host": "10.0.0.7", "bootstrap_port": 8998, "bootstrap_room": 12345}
MESSAGES = [{"role": "user", "content": "hello"}]


BAD_ARGVS = {
    "unknown_flag": (["--model-path", "m", "--no-such-flag"], ["unrecognized arguments", "--no-such-flag"]),
    "bad_choice": (
        ["--model-path", "m", "--disaggregation-mode", "bogus"],
        ["--disaggregation-mode", "choice"],
    ),
    "bad_int": (["--model-path", "m", "--nnodes", "notanint"], ["--nnodes", "invalid int value", "notanint"]),
    "missing_model_path": (["--tp-size", "8"], ["required", "--model-path"]),
}
DEPRECATED_DP = ["--model-path", "m", "--dp-size", "8", "--enable-dp-attention"]

GOOD_GENERATE = {
    "rid": "req-1",
    "text": "hello",
    "sampling_params": {"max_new_tokens": 16, "temperature": 0.0},
    **PD_FIELDS,
    "routed_dp_rank": 3,
    "disagg_prefill_dp_rank": 1,
}
ROUTING = {**PD_FIELDS, "routed_dp_rank": 2, "disagg_prefill_dp_rank": 0, "rid": "req-3"}
PAYLOADS = {
    "generate": {
        "pd": GOOD_GENERATE,
        "room_not_int": {**GOOD_GENERATE, "bootstrap_room": "not-a-room"},
        "room_numeric_string": {**GOOD_GENERATE, "bootstrap_room": "12"},
        "no_input": {"rid": "req-2", "sampling_params": {}},
        "unknown_sampling_param": {**GOOD_GENERATE, "sampling_params": {"max_tokens": 16}},
        "unknown_field": {**GOOD_GENERATE, "sbs_unknown_field": 1},
        "deprecated_dp_rank": {"text": "hello", "data_parallel_rank": 1},
    },
    "completion": {
        "pd": {"model": "m", "prompt": "hello", "max_tokens": 8, **ROUTING},
        "empty_prompt": {"model": "m", "prompt": "", **ROUTING},
        "max_tokens_not_int": {"model": "m", "prompt": "hello", "max_tokens": "many"},
        "unknown_field": {"model": "m", "prompt": "hello", "sbs_unknown_field": 1},
    },
    "chat": {
        "pd": {"model": "m", "messages": MESSAGES, "stream": True, **ROUTING},
        "no_messages": {"model": "m", **ROUTING},
        "dp_rank_not_int": {"model": "m", "messages": MESSAGES, "routed_dp_rank": "two"},
        "unknown_field": {"model": "m", "messages": MESSAGES, "sbs_unknown_field": 1},
    },
}


@pytest.fixture(scope="module")
def argv_verdicts(sglang: sglang_env.Probe) -> ArgvVerdicts:
    """Every argv of this module, judged in one probe call (each call imports SGLang afresh)."""
    argvs = {"prefill": PREFILL, "decode": DECODE, "deprecated_dp": DEPRECATED_DP}
    argvs |= {name: argv for name, (argv, _) in BAD_ARGVS.items()}
    return dict(zip(argvs, sglang.server_args(list(argvs.values())), strict=True))


@pytest.fixture(scope="module")
def request_verdicts(sglang: sglang_env.Probe) -> RequestVerdicts:
    """Every payload of this module, judged in one probe call."""
    cases = {(kind, name): payload for kind, named in PAYLOADS.items() for name, payload in named.items()}
    items = [(kind, payload) for (kind, _), payload in cases.items()]
    return dict(zip(cases, sglang.mixed_requests(items), strict=True))


def test_environment_holds_sglang_without_gpu_stack(sglang: sglang_env.Probe) -> None:
    info = sglang.info()
    assert info["sglang"] == sglang_env.SGLANG_VERSION
    assert set(info["stand_ins_used"]) <= set(sglang_probe.STAND_INS)
    assert "torch" in info["stand_ins_used"]


def test_published_deepseek_command_lines_are_accepted(argv_verdicts: ArgvVerdicts) -> None:
    prefill, decode = argv_verdicts["prefill"], argv_verdicts["decode"]
    assert (prefill.error, prefill.warnings) == (None, ())
    assert (decode.error, decode.warnings) == (None, ())
    assert prefill.values["disaggregation_mode"] == "prefill"
    assert [prefill.values[f] for f in ("tp_size", "attn_dp_size", "ep_size")] == [32, 32, 32]
    assert prefill.values["disaggregation_ib_device"] == IB
    assert decode.values["deepep_mode"] == "low_latency"
    assert (decode.values["nnodes"], decode.values["node_rank"]) == (9, 3)
    assert decode.values["max_running_requests"] == 18432


@pytest.mark.parametrize("case", BAD_ARGVS)
def test_bad_command_lines_are_refused_with_argparse_message(argv_verdicts: ArgvVerdicts, case: str) -> None:
    error = argv_verdicts[case].error
    assert error is not None
    for fragment in BAD_ARGVS[case][1]:
        assert fragment in error


def test_deprecated_dp_attention_spelling_is_accepted_with_a_warning(
    argv_verdicts: ArgvVerdicts,
) -> None:
    verdict = argv_verdicts["deprecated_dp"]
    assert verdict.ok
    assert any("--attn-dp-size" in w for w in verdict.warnings)


def test_plain_client_functions_keep_order(sglang: sglang_env.Probe) -> None:
    errors = sglang.parse_server_args([PREFILL, ["--model-path", "m", "--bogus"]])
    assert errors == [None, "unrecognized arguments: --bogus"]


def test_generate_bodies(request_verdicts: RequestVerdicts) -> None:
    def error(case: str) -> str | None:
        return request_verdicts["generate", case].error

    assert error("pd") is None
    assert (error("room_not_int") or "").startswith("GenerateReqInput: bootstrap_room")
    # pydantic alone would coerce "12" to an int; the server's API contract check refuses it.
    assert (error("room_numeric_string") or "").startswith("api contract:")
    assert error("no_input") == (
        "normalize_batch_and_arguments: Either text, input_ids or input_embeds should be provided."
    )
    assert "unknown field `max_tokens`" in (error("unknown_sampling_param") or "")
    assert error("unknown_field") is None  # unknown top-level keys: ignored by the dataclass and the contract


def test_deprecated_data_parallel_rank_is_accepted_with_a_warning(
    request_verdicts: RequestVerdicts,
) -> None:
    verdict = request_verdicts["generate", "deprecated_dp_rank"]
    assert verdict.ok
    assert any("routed_dp_rank" in w for w in verdict.warnings)


def test_openai_bodies_carry_pd_routing_fields(request_verdicts: RequestVerdicts) -> None:
    def error(kind: str, case: str) -> str | None:
        return request_verdicts[kind, case].error

    assert error("completion", "pd") is None
    assert error("completion", "empty_prompt") == "_validate_request: Prompt cannot be empty"
    assert (error("completion", "max_tokens_not_int") or "").startswith("CompletionRequest: max_tokens")
    assert error("completion", "unknown_field") is None  # pydantic's default extra policy: ignore
    assert error("chat", "pd") is None
    assert error("chat", "no_messages") == "ChatCompletionRequest: messages: Field required"
    assert (error("chat", "dp_rank_not_int") or "").startswith("ChatCompletionRequest: routed_dp_rank")
    assert error("chat", "unknown_field") is None


def test_unknown_request_kind_is_refused_before_running_sglang(sglang: sglang_env.Probe) -> None:
    with pytest.raises(ValueError, match="expected one of: generate, completion, chat"):
        sglang.validate_requests("embeddings", [{}])
