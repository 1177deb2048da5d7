"""Check engine command lines and request bodies with SGLang's own code.

Run by the cached SGLang environment's python (see ``sglang_env.py``), never imported by the test
suite and never importing ``sbs``. It reads one JSON request on stdin and writes one JSON reply on
stdout::

    {"op": "server_args", "argvs": [[...], ...]}
    {"op": "requests", "items": [["generate" | "completion" | "chat", {...}], ...]}
    {"op": "prefill_delayer", "scenarios": [{"max_delay_passes": N, "watermark": x | null,
        "max_running": M, "passes": [[[prefillable, token_usage, running, max_prefill_bs], ...], ...]}]}
    {"op": "info"} or {"op": "selftest"}

and answers ``{"results": [{"error": str | None, "warnings": [...], "values": {...}}, ...], "info": {...}}``.

What runs, all of it SGLang 0.5.23's own code:

- argv: ``sglang.srt.server_args.prepare_server_args(argv)``, the launcher's entry: the argparse parser
  built by ``ServerArgs.add_cli_args`` (unknown flags, types, choices, required ``--model-path``,
  deprecated spellings, which log a warning), the ``--config`` YAML merge and ``ServerArgs.from_cli_args``
  (a msgspec Struct: no type checks; ``__post_init__`` is empty in 0.5.23). Not run:
  ``ServerArgs.resolve_once()``, the resolution pipeline that reads the model's HF config, probes the GPU
  and checks cross-flag rules (e.g. it refuses ``--dp-size`` > 1 with ``--attn-dp-size`` > 1).
- ``/generate``: pydantic validation of the ``GenerateReqInput`` dataclass, as FastAPI does for the
  route's body (lax types, unknown keys ignored); then ``entrypoints.api_contract.generate_contract_error``
  (the route's strict schema check: no string-to-int coercion, unknown ``sampling_params`` keys refused);
  then ``GenerateReqInput.normalize_batch_and_arguments()``. Not run: TokenizerManager checks that need a
  tokenizer or the server's state (prompt length, ``routed_dp_rank`` within the DP size, sampling-param
  ``verify``).
- ``/v1/completions``: ``CompletionRequest.model_validate`` (pydantic, unknown keys ignored), then
  ``OpenAIServingCompletion._validate_request`` (empty prompt). ``/v1/chat/completions``:
  ``ChatCompletionRequest.model_validate`` only; ``OpenAIServingChat._validate_request`` (empty messages,
  tools, media) needs a running server's template manager and server args.

The environment holds the real SGLang wheel and its light pure-Python dependencies, but no GPU stack.
Before SGLang is imported, an import hook provides inert stand-ins for the top-level modules in
``STAND_INS`` and for nothing else; any other missing module still raises ``ModuleNotFoundError``
(SGLang's optional ``try: import flashinfer`` paths see a machine without it). The stand-ins behave
like a PyTorch build with no accelerator: ``torch.version.cuda`` and ``.hip`` are None, ``torch.npu``,
``torch.hpu`` and ``torch.musa`` do not exist, every call returns a falsy inert value, decorators
return the function unchanged and CamelCase attributes are classes that can be subclassed.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import importlib.abc
import importlib.machinery
import json
import logging
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

STAND_INS: dict[str, str] = {
    "torch": "PyTorch (the CUDA build is gigabytes); sglang.srt.utils.common imports it at module level",
    "triton": "GPU kernel compiler; sglang.kernels define @triton.jit kernels at import time",
    "torchvision": "torch extension; sglang.srt.multimodal.internvl_utils imports it (via srt.configs)",
    "tvm_ffi": "apache-tvm-ffi, the JIT kernel loader; sglang.kernels.ops.communication.all_reduce",
    "compressed_tensors": "torch-based quantisation library; sglang.srt.layers.quantization imports it",
}
"""Top-level modules replaced by inert stand-ins, each with why SGLang imports it."""

_STAND_IN_VALUES: dict[str, Any] = {"torch.version.cuda": None, "torch.version.hip": None}
"""Attributes with fixed values: no CUDA and no ROCm, so SGLang takes no accelerator branch."""

_ABSENT: frozenset[str] = frozenset({"torch.npu", "torch.hpu", "torch.musa", "torch.version.musa"})
"""Attributes that do not exist: SGLang probes them with ``hasattr`` to detect other accelerators."""

_STAND_IN_VERSION = "0.0.0"
"""``torch.__version__`` and friends: transformers then disables its torch integration."""


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class _InertMeta(abc.ABCMeta):
    """Metaclass of stand-in classes: class attributes are inert too (``torch._C._foo``)."""

    def __getattr__(cls, attr: str) -> Any:
        if _is_dunder(attr):
            raise AttributeError(attr)
        return _Inert(f"{cls.__module__}.{cls.__name__}.{attr}")


class _InertClass(metaclass=_InertMeta):
    """Base of stand-in classes (``torch.nn.Module``, ``torch.Tensor``): subclassable, inert instances."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __init_subclass__(cls, **kwargs: Any) -> None:
        pass

    def __getattr__(self, attr: str) -> Any:
        if _is_dunder(attr):
            raise AttributeError(attr)
        return _Inert(f"{type(self).__name__}().{attr}")


class _Inert(types.ModuleType):
    """A stand-in module, attribute or call result: falsy, empty, zero, and callable as a decorator."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__path__: list[str] = []
        self.__file__ = f"<inert stand-in for {name}>"
        self.__spec__ = importlib.machinery.ModuleSpec(name, _LOADER, is_package=True)
        self.__version__ = _STAND_IN_VERSION

    def __getattr__(self, attr: str) -> Any:
        if _is_dunder(attr):
            raise AttributeError(attr)
        full = f"{self.__name__}.{attr}"
        if full in _ABSENT:
            raise AttributeError(f"inert stand-in {self.__name__!r} has no attribute {attr!r}")
        if full in _STAND_IN_VALUES:
            return _STAND_IN_VALUES[full]
        if full in sys.modules:
            return sys.modules[full]
        value: Any
        if attr.lstrip("_")[:1].isupper():
            value = _InertMeta(attr, (_InertClass,), {"__module__": self.__name__})
        else:
            value = _Inert(full)
        setattr(self, attr, value)
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]  # @torch.compile, @triton.jit
        return _Inert(f"{self.__name__}()")

    def __bool__(self) -> bool:
        return False

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __contains__(self, item: object) -> bool:
        return False

    def __int__(self) -> int:
        return 0

    __index__ = __int__

    def __float__(self) -> float:
        return 0.0

    def __getitem__(self, item: object) -> Any:
        return self

    def __repr__(self) -> str:
        return f"<inert {self.__name__}>"


def _same(self: _Inert, *args: Any) -> _Inert:
    return self


def _false(self: _Inert, other: object) -> bool:
    return False


_ARITHMETIC = (
    "neg", "pos", "abs", "invert", "add", "radd", "sub", "rsub", "mul", "rmul", "truediv", "rtruediv",
    "floordiv", "rfloordiv", "mod", "rmod", "pow", "rpow", "matmul", "rmatmul", "and", "rand", "or", "ror",
    "xor", "rxor", "lshift", "rlshift", "rshift", "rrshift",
)  # fmt: skip
for _op in _ARITHMETIC:
    setattr(_Inert, f"__{_op}__", _same)
for _op in ("lt", "le", "gt", "ge"):
    setattr(_Inert, f"__{_op}__", _false)


class _StandInLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _Inert(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


_LOADER = _StandInLoader()


class _StandInFinder(importlib.abc.MetaPathFinder):
    """Finds the allow-listed GPU-stack modules, and only those, as inert stand-ins."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname.partition(".")[0] in STAND_INS:
            return importlib.machinery.ModuleSpec(fullname, _LOADER, is_package=True)
        return None


def install_stand_ins() -> None:
    """Put the stand-in finder first on ``sys.meta_path`` (before any SGLang import)."""
    sys.meta_path.insert(0, _StandInFinder())


# --------------------------------------------------------------------------------------------------
# Capturing what SGLang reports
# --------------------------------------------------------------------------------------------------


class ArgvError(Exception):
    """``ArgumentParser.error`` was called: argparse's own message, without usage or exit."""


def _raise_argv_error(self: argparse.ArgumentParser, message: str) -> None:
    raise ArgvError(message)


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().replace("\033[1;33m", "").replace("\033[0m", ""))


@contextlib.contextmanager
def _capture_warnings() -> Iterator[list[str]]:
    """Collect Python warnings and SGLang's WARNING+ log records raised inside the block.

    The handler sits on the ``sglang`` logger, not the root: ``prepare_server_args`` calls
    ``logging.basicConfig(force=True)``, which replaces the root's handlers.
    """
    handler = _ListHandler()
    logger = logging.getLogger("sglang")
    logger.addHandler(handler)
    messages: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        logger.removeHandler(handler)
        messages.extend(f"{w.category.__name__}: {w.message}" for w in caught)
        messages.extend(handler.messages)


def _result(error: str | None, notes: list[str], values: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": error, "warnings": notes, "values": values or {}}


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def check_server_args(argvs: list[list[str]]) -> list[dict[str, Any]]:
    """Run ``sglang.srt.server_args.prepare_server_args(argv)`` for each argv.

    That is SGLang's own launcher entry: its argparse parser from ``ServerArgs.add_cli_args`` (with
    ``ArgumentParser.error`` raising instead of exiting), the ``--config`` YAML merge and
    ``ServerArgs.from_cli_args``. ``ServerArgs.resolve_once()`` (model config download, GPU memory and
    platform resolution) is not run. ``values`` holds the fields whose value differs from the default.
    """
    from sglang.srt import server_args as sa
    from sglang.srt.sampling.watermarking import core  # noqa: F401  (prepare_server_args' lazy import)
    from sglang.srt.utils import server_args_config_parser  # noqa: F401  (likewise, for --config)

    argparse.ArgumentParser.error = _raise_argv_error  # type: ignore[method-assign,assignment]
    parser = argparse.ArgumentParser()
    sa.ServerArgs.add_cli_args(parser)
    defaults = vars(parser.parse_args(["--model-path", "x"]))
    results = []
    for argv in argvs:
        args, error = None, None
        with _capture_warnings() as notes:
            try:
                args = sa.prepare_server_args(list(argv))
            except ArgvError as e:
                error = str(e)
            except SystemExit as e:  # --help, --version
                error = f"argv asked argparse to exit (code {e.code})"
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
        if args is None:
            results.append(_result(error, notes))
            continue
        values = {
            name: _jsonable(getattr(args, name))
            for name, default in defaults.items()
            if name != "model_path" and hasattr(args, name) and getattr(args, name) != default
        }
        results.append(_result(None, notes, {**values, "model_path": args.model_path}))
    return results


def _pydantic_error(e: Any) -> str:
    parts = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _generate_check() -> Callable[[Any], str | None]:
    """The ``/generate`` route's checks, in the server's order."""
    import pydantic
    from sglang.srt.entrypoints.api_contract import generate_contract_error
    from sglang.srt.managers.io_struct import GenerateReqInput

    adapter = pydantic.TypeAdapter(GenerateReqInput)

    def check(payload: Any) -> str | None:
        try:  # FastAPI's body parsing: pydantic validates the dataclass (lax mode, extra keys ignored)
            obj = adapter.validate_python(payload)
        except pydantic.ValidationError as e:
            return f"GenerateReqInput: {_pydantic_error(e)}"
        contract = generate_contract_error(payload)  # the handler's schema check (HTTP 400)
        if contract is not None:
            return f"api contract: {contract}"
        try:  # the first step of TokenizerManager.generate_request
            obj.normalize_batch_and_arguments()
        except (ValueError, TypeError) as e:
            return f"normalize_batch_and_arguments: {e}"
        return None

    return check


def _openai_check(model: Any, validate: Callable[[Any], str | None] | None) -> Callable[[Any], str | None]:
    """An OpenAI route's checks: FastAPI's body parsing (HTTP 422), then the serving class's rules."""
    import pydantic

    def check(payload: Any) -> str | None:
        try:
            request = model.model_validate(payload)
        except pydantic.ValidationError as e:
            return f"{model.__name__}: {_pydantic_error(e)}"
        error = validate(request) if validate is not None else None
        return f"_validate_request: {error}" if error else None

    return check


def _request_check(kind: str) -> Callable[[Any], str | None]:
    """The checks for one kind of body, with every SGLang module they need already imported."""
    if kind == "generate":
        return _generate_check()
    from sglang.srt.entrypoints.openai import protocol

    if kind == "completion":
        from sglang.srt.entrypoints.openai.serving_completions import OpenAIServingCompletion

        def completion_rules(request: Any) -> str | None:
            # The method reads only the request, so no serving object (tokenizer manager) is needed.
            error: str | None = OpenAIServingCompletion._validate_request(None, request)  # type: ignore[arg-type]
            return error

        return _openai_check(protocol.CompletionRequest, completion_rules)
    if kind == "chat":
        # OpenAIServingChat._validate_request needs a running server's state (template manager,
        # tool parsers, server args), so only the pydantic model is checked.
        return _openai_check(protocol.ChatCompletionRequest, None)
    raise ValueError(f"unknown request kind {kind!r}; expected one of: chat, completion, generate")


def check_requests(items: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Validate each (kind, payload) as the body of ``/generate``, ``/v1/completions`` or
    ``/v1/chat/completions`` (kind "generate", "completion" or "chat")."""
    checks = {kind: _request_check(kind) for kind in dict.fromkeys(kind for kind, _ in items)}
    results = []
    for kind, payload in items:
        with _capture_warnings() as notes:
            try:
                error = checks[kind](payload)
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
        results.append(_result(error, notes))
    return results


def run_prefill_delayer(scenarios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SGLang's own prefill-delayer negotiation (``PrefillDelayer._negotiate_should_allow_prefill``,
    its state carried pass to pass), with the ranks' all-gather replaced by the given reports (each
    rank: prefillable, KV usage, running batch, largest recent prefill batch). DP attention on, the
    queue trigger off. Each scenario's value: the passes' ``[allow, reason]``."""
    import numpy as np
    from sglang.srt.managers import prefill_delayer as pd

    results = []
    for sc in scenarios:
        delayer = object.__new__(pd.PrefillDelayer)  # its __init__ wants a live process group
        delayer.__dict__.update(
            _max_delay_passes=sc["max_delay_passes"], _token_usage_low_watermark=sc["watermark"],
            _debug_log_enabled=False, _queue_min_ratio=None, _max_delay_ms=5000.0,
            _queue_trigger_enabled=False, _prefill_max_requests=None, num_dp_ranks=len(sc["passes"][0]),
            attn_dp_enabled=True, _metrics_collector=None, _curr_state=None, skip_first_delayer=True,
        )  # fmt: skip
        verdicts = []
        for ranks in sc["passes"]:
            wm = sc["watermark"]
            gathered = np.array(
                [
                    [int(p), int(bool(p) and wm is not None and u < wm), run, bs, 0, 0]
                    for p, u, run, bs in ranks
                ],
                dtype=np.int64,
            )
            delayer._gather_info = lambda gathered=gathered, **_: gathered
            p0, u0, run0, bs0 = ranks[0]
            out = delayer._negotiate_should_allow_prefill(
                local_prefillable=bool(p0), token_usage=u0, running_batch=run0, max_prefill_bs=bs0,
                max_running_requests=sc["max_running"], waiting_queue_len=0,
            )  # fmt: skip
            verdicts.append([bool(out.output_allow), out.output_reason])
        results.append(_result(None, [], {"verdicts": verdicts}))
    return results


def selftest() -> None:
    """Import everything the checks use and see each accept a minimal valid input."""
    outcomes = [
        *check_server_args([["--model-path", "m"]]),
        *check_requests(
            [
                ("generate", {"text": "hi"}),
                ("completion", {"prompt": "hi"}),
                ("chat", {"messages": [{"role": "user", "content": "hi"}]}),
            ]
        ),
    ]
    errors = [o["error"] for o in outcomes if o["error"] is not None]
    if errors:
        raise RuntimeError(f"self-test: SGLang refused minimal valid inputs: {errors}")


def info() -> dict[str, Any]:
    """Versions, and the stand-in modules SGLang actually imported."""
    import sglang

    used = sorted(name for name, mod in sys.modules.items() if isinstance(mod, _Inert) and "." not in name)
    return {"sglang": sglang.__version__, "python": sys.version.split()[0], "stand_ins_used": used}


def main() -> int:
    request = json.load(sys.stdin)
    # SGLang and transformers print while importing; keep fd 1 for the JSON reply only.
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    install_stand_ins()
    op = request["op"]
    if op == "server_args":
        results = check_server_args(request["argvs"])
    elif op == "requests":
        results = check_requests([(kind, payload) for kind, payload in request["items"]])
    elif op == "prefill_delayer":
        results = run_prefill_delayer(request["scenarios"])
    elif op == "info":
        import sglang  # noqa: F401

        results = []
    elif op == "selftest":
        selftest()
        results = []
    else:
        raise ValueError(
            f"unknown op {op!r}; expected one of: info, prefill_delayer, requests, selftest, server_args"
        )
    with os.fdopen(reply_fd, "w") as out:
        json.dump({"results": results, "info": info()}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
