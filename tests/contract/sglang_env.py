"""A cached environment with the real SGLang wheel, and a client that asks SGLang's own code.

``ensure_env()`` builds (once per machine, under a file lock) a virtual environment in
``$SBS_SGLANG_CACHE``, else ``$XDG_CACHE_HOME/sbs-sglang``, else ``~/.cache/sbs-sglang``, at
``<key>/venv`` with key ``sglang-<version>-py<major.minor>-<hash of the pins>``. It holds SGLang
installed with ``--no-deps`` plus the pinned pure-Python closure in ``REQUIREMENTS``: no torch, CUDA or
kernels (``sglang_probe.STAND_INS`` lists the inert stand-ins that take their place). A ``complete``
stamp is written only after a self-test passes, so a half-built environment is rebuilt.

The client functions run ``sglang_probe.py`` in that environment, one subprocess per call::

    parse_server_args([["--model-path", "m", "--tp-size", "8"], ...]) -> [None | "argparse message", ...]
    validate_requests("chat", [{"messages": [...]}, ...]) -> [None | "why SGLang rejects it", ...]

This module imports only the standard library and ``sbs.e2e.toolcache``: the Makefile loads it directly
with the project's virtual environment (``make sglang-env``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sbs.e2e import toolcache

SGLANG_VERSION = "0.5.23"

REQUIREMENTS: tuple[str, ...] = (
    # Imported by the SGLang modules the probe loads (server_args, managers.io_struct,
    # entrypoints.openai.protocol and .serving_completions, entrypoints.api_contract) or by the
    # package's own __init__. Where SGLang 0.5.23 pins a version (openai, sentencepiece, tokenizers,
    # transformers) we use its pin.
    "aiohttp==3.14.5",
    "dill==0.4.1",
    "fastapi==0.165.0",
    "gguf==0.19.0",
    "ipython==9.18.1",
    "Jinja2==3.1.6",
    "jsonschema==4.26.0",
    "msgspec==0.22.0",
    "numpy==2.4.6",
    "openai==2.8.0",
    "orjson==3.13.0",
    "packaging==26.4",
    "partial-json-parser==0.2.1.1.post7",
    "pillow==13.0.0",
    "psutil==7.2.2",
    "pybase64==1.5.1",
    "pydantic==2.14.4",
    "pyzmq==27.3.0",
    "requests==2.34.2",
    "sentencepiece==0.2.1",
    "starlette==1.10.0",
    "tokenizers==0.23.2",
    "tqdm==4.70.1",
    "transformers==5.19.0",
    # Their dependencies (installed with --no-deps, so the closure is listed in full).
    "aiohappyeyeballs==2.7.1",
    "aiosignal==1.4.0",
    "annotated-doc==0.0.7",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "asttokens==3.0.2",
    "attrs==26.1.0",
    "certifi==2026.10.19.post1",
    "charset-normalizer==3.5.3",
    "click==8.5.1",
    "distro==1.9.0",
    "executing==2.3.0",
    "filelock==4.3.1",
    "frozenlist==1.8.0",
    "fsspec==2026.9.0",
    "h11==0.16.0",
    "hf-xet==1.8.0",
    "httpcore==1.0.9",
    "httpx==0.28.1",
    "huggingface_hub==1.33.0",
    "idna==3.20",
    "ipython_pygments_lexers==1.1.1",
    "jedi==0.20.1",
    "jiter==0.19.0",
    "jsonschema-specifications==2025.9.1",
    "markdown-it-py==4.3.0",
    "MarkupSafe==3.0.4",
    "matplotlib-inline==0.2.2",
    "mdurl==0.1.2",
    "multidict==7.2.1",
    "opentelemetry-api==1.45.2",
    "parso==0.8.7",
    "pexpect==4.9.0",
    "prompt_toolkit==3.0.53",
    "propcache==0.5.4",
    "ptyprocess==0.7.0",
    "pure_eval==0.2.4",
    "pydantic_core==2.50.5",
    "Pygments==2.21.0",
    "PyYAML==6.0.4",
    "referencing==0.37.0",
    "regex==2026.11.19",
    "rich==15.0.0",
    "rpds-py==2026.9.1",
    "safetensors==0.8.0",
    "shellingham==1.5.4",
    "sniffio==1.3.1",
    "stack-data==0.6.3",
    "traitlets==5.16.1",
    "typer==0.29.2",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
    "urllib3==2.8.0",
    "wcwidth==0.9.4",
    "yarl==1.25.1",
)
"""The environment's packages besides SGLang, pinned in full so every machine gets the same set."""

PROBE = Path(__file__).with_name("sglang_probe.py")
REQUEST_KINDS = ("generate", "completion", "chat")

BUILD_TIMEOUT_S = 1200
"""A cold build takes about a minute on 2 cores (40 s of pip, 10 s of self-test); this bounds a hung index."""

PROBE_TIMEOUT_S = 300
"""A probe call imports SGLang (a few seconds) and checks every item in one process."""


class SGLangEnvError(RuntimeError):
    """The environment could not be built, or the probe failed to run inside it."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """SGLang's judgment of one argv or payload."""

    error: str | None
    """None when SGLang accepts it, else the message of the check that refused it."""
    warnings: tuple[str, ...] = ()
    """Deprecation and other warnings SGLang logged or raised while checking it."""
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """For argvs: the ServerArgs fields whose value differs from the default (plus model_path)."""

    @property
    def ok(self) -> bool:
        return self.error is None


def cache_root() -> Path:
    """`$SBS_SGLANG_CACHE`, else `$XDG_CACHE_HOME/sbs-sglang`, else `~/.cache/sbs-sglang`."""
    return toolcache.cache_root("sglang")


def env_key() -> str:
    """E.g. ``sglang-0.5.23-py3.11-1a2b3c4d``: a new version, Python or pin list gets a new env."""
    pins = "\n".join((f"sglang=={SGLANG_VERSION}", *REQUIREMENTS))
    digest = hashlib.sha256(pins.encode()).hexdigest()[:8]
    return f"sglang-{SGLANG_VERSION}-py{sys.version_info.major}.{sys.version_info.minor}-{digest}"


def _python(env: Path) -> Path:
    return env / "venv" / "bin" / "python"


def _run(cmd: Sequence[str | Path], what: str, timeout_s: float, **kwargs: Any) -> str:
    return toolcache.run(cmd, what, timeout_s=timeout_s, error=SGLangEnvError, **kwargs)


def _probe_env() -> dict[str, str]:
    """The caller's environment without SGLang knobs (reproducible choices), offline for Hugging Face."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SGLANG_", "SGL_"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _call_probe(python: Path, request: Mapping[str, Any]) -> dict[str, Any]:
    out = _run(
        [python, "-I", PROBE],  # isolated: no PYTHON* variables, user site or script folder on sys.path
        f"sglang probe ({request['op']})",
        PROBE_TIMEOUT_S,
        input=json.dumps(request),
        env=_probe_env(),
        cwd=PROBE.parent,
    )
    try:
        reply: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError as e:
        raise SGLangEnvError(f"sglang probe wrote something other than JSON: {out[:500]!r}") from e
    return reply


def _build(env: Path) -> str:
    print(f"building the SGLang {SGLANG_VERSION} contract environment in {env}", file=sys.stderr)
    # -I and cwd: the repository's operator/ folder must not shadow the standard library's module.
    _run([sys.executable, "-I", "-m", "venv", env / "venv"], "python -m venv", BUILD_TIMEOUT_S, cwd=env)
    pip = [_python(env), "-I", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    # --no-compile: byte-compiling all of SGLang takes minutes on 2 cores; the self-test below compiles
    # (and caches) just the modules the probe imports.
    _run(
        [*pip, "--no-compile", "--only-binary=:all:", f"sglang=={SGLANG_VERSION}", *REQUIREMENTS],
        f"pip install sglang=={SGLANG_VERSION} and its light dependencies",
        BUILD_TIMEOUT_S,
        cwd=env,
    )
    info = Probe(_python(env)).info(selftest=True)
    if info["sglang"] != SGLANG_VERSION:
        raise SGLangEnvError(f"expected sglang {SGLANG_VERSION} in {env}, got {info['sglang']}")
    return json.dumps(info, indent=2) + "\n"


@functools.cache
def ensure_env() -> Path:
    """The environment's python, building the environment first if it is missing or incomplete.

    Raises SGLangEnvError (with pip's output) when the build fails.
    """
    return _python(toolcache.stamped_build(cache_root() / env_key(), _build))


def _verdicts(reply: Mapping[str, Any]) -> list[Verdict]:
    return [Verdict(r["error"], tuple(r["warnings"]), r["values"]) for r in reply["results"]]


@dataclasses.dataclass(frozen=True)
class Probe:
    """SGLang's own checks, run by ``python`` (an environment from ``ensure_env``)."""

    python: Path

    def server_args(self, argvs: Sequence[Sequence[str]]) -> list[Verdict]:
        """Each argv (the arguments after ``python -m sglang.launch_server``) as SGLang parses it."""
        if not argvs:
            return []
        return _verdicts(_call_probe(self.python, {"op": "server_args", "argvs": [list(a) for a in argvs]}))

    def requests(self, kind: str, payloads: Sequence[Any]) -> list[Verdict]:
        """Each payload as the JSON body of ``/generate``, ``/v1/completions`` or ``/v1/chat/completions``."""
        return self.mixed_requests([(kind, p) for p in payloads])

    def mixed_requests(self, items: Sequence[tuple[str, Any]]) -> list[Verdict]:
        """Like ``requests``, for (kind, payload) pairs of several kinds in one probe call."""
        if unknown := sorted({kind for kind, _ in items} - set(REQUEST_KINDS)):
            raise ValueError(
                f"unknown request kind {unknown[0]!r}; expected one of: {', '.join(REQUEST_KINDS)}"
            )
        if not items:
            return []
        return _verdicts(_call_probe(self.python, {"op": "requests", "items": [list(i) for i in items]}))

    def prefill_delayer(self, scenarios: Sequence[Mapping[str, Any]]) -> list[list[tuple[bool, str]]]:
        """Per scenario, SGLang's own prefill-delayer verdicts (`allow`, `reason`) pass by pass
        (`sglang_probe.run_prefill_delayer`)."""
        reply = _call_probe(self.python, {"op": "prefill_delayer", "scenarios": list(scenarios)})
        return [[(bool(a), str(r)) for a, r in v.values["verdicts"]] for v in _verdicts(reply)]

    def parse_server_args(self, argvs: list[list[str]]) -> list[str | None]:
        """None for each argv SGLang accepts, else the error (argparse's message for a bad flag or value)."""
        return [v.error for v in self.server_args(argvs)]

    def validate_requests(self, kind: str, payloads: list[dict[str, Any]]) -> list[str | None]:
        """None for each payload SGLang accepts as a ``kind`` body, else why it refuses it."""
        return [v.error for v in self.requests(kind, payloads)]

    def info(self, *, selftest: bool = False) -> dict[str, Any]:
        """The SGLang and Python versions and the stand-ins imported (by ``import sglang``, or by the
        self-test, which imports every module the checks use and runs each on a valid input)."""
        info: dict[str, Any] = _call_probe(self.python, {"op": "selftest" if selftest else "info"})["info"]
        return info


def probe() -> Probe:
    """A Probe on the cached environment, building it first if needed (raises SGLangEnvError)."""
    return Probe(ensure_env())


def parse_server_args(argvs: list[list[str]]) -> list[str | None]:
    """``Probe.parse_server_args`` on the cached environment."""
    return probe().parse_server_args(argvs)


def validate_requests(kind: str, payloads: list[dict[str, Any]]) -> list[str | None]:
    """``Probe.validate_requests`` on the cached environment."""
    return probe().validate_requests(kind, payloads)
