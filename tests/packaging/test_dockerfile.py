"""The Dockerfile: linted with hadolint, its shape checked, and its install steps replayed.

There is no Docker engine here, so `test_install_steps_work_in_a_fresh_virtual_environment`
runs the Dockerfile's own RUN commands, verbatim, with bash: the builder's `pip wheel` in a copy
of the build context made by the .dockerignore rules, then the runtime stage's install into a
fresh virtual environment, with the ARG/ENV paths pointed at a temporary directory. The entry
points must then start, and nothing may be written into the installed tree (read-only root FS).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from sbs.operator import api

from tests.packaging import dockerfile, tools

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
ENTRY_POINTS = ("sbs-operator", "sbs-scheduler", "sbs-engine", "sbs-sim")
"""What the image is for (the operator, the scheduler, the engine emulator; the simulator too)."""
MODULES = ("sbs.operator.handlers", "sbs.scheduler.service.app", "sbs.sim.emulator.server", "sbs.sim.cli")
"""Imported in the installed environment: `--help` alone imports little (click commands are lazy)."""


@pytest.fixture(scope="module")
def parsed() -> dockerfile.Dockerfile:
    return dockerfile.parse(DOCKERFILE.read_text())


def test_hadolint_finds_nothing() -> None:
    result = tools.hadolint(str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_setup_would_report_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = tools.hadolint(str(bad))
    assert result.returncode == 1
    assert "DL3006" in result.stdout and "DL3013" in result.stdout


def test_two_stages_non_root_runtime_with_oci_labels(parsed: dockerfile.Dockerfile) -> None:
    builder, runtime = parsed.stages
    assert (builder.name, runtime.name) == ("builder", "runtime")
    assert builder.base == runtime.base == parsed.global_args["PYTHON_IMAGE"]
    assert parsed.global_args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert runtime.user == "65532:65532"
    assert not runtime.copies, "the runtime stage copies nothing: wheels come through a bind mount"
    # no build tools: the only install is pip from local wheels, without an index
    (install,) = runtime.runs
    assert "--no-index" in install.command and "apt-get" not in install.command
    assert install.mounts == [
        {"type": "bind", "from": "builder", "source": builder.args["SBS_WHEELS"],
         "target": runtime.args["SBS_WHEELS"]}
    ]  # fmt: skip
    for key in ("title", "description", "version", "licenses", "source"):
        assert runtime.labels.get(f"org.opencontainers.image.{key}"), key
    # the version everywhere is the project's
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert runtime.args["VERSION"] == runtime.labels["org.opencontainers.image.version"] == version
    assert api.SBS_IMAGE.endswith(f":{version}")
    # read-only root FS: bytecode compiled at install, HOME and matplotlib's cache in /tmp
    assert runtime.env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert runtime.env["HOME"] == "/tmp" and runtime.env["MPLCONFIGDIR"].startswith("/tmp/")
    assert runtime.env["PATH"].split(":")[0] == f"{runtime.args['SBS_VENV']}/bin"


def test_dockerignore_sends_only_what_the_wheel_needs() -> None:
    files = dockerfile.context_files(REPO, (REPO / ".dockerignore").read_text())
    tops = {f.split("/")[0] for f in files}
    assert tops == {
        "pyproject.toml", "README.md", "settings", "kube", "scheduler", "sim", "operator", "bench", "e2e"
    }  # fmt: skip
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    # every package folder that pyproject maps is in the context
    dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert set(dirs.values()) <= tops


def test_dockerignore_rules_follow_docker_semantics() -> None:
    rules = dockerfile.ignore_rules("*\n!keep/\n**/__pycache__\n!keep/**/x.pyc\n")
    assert dockerfile.excluded("other.txt", rules)
    assert dockerfile.excluded("deep/a/b.py", rules)  # excluded with its parent
    assert not dockerfile.excluded("keep/a/b.py", rules)
    assert dockerfile.excluded("keep/a/__pycache__/b.pyc", rules)
    assert not dockerfile.excluded("keep/a/__pycache__/x.pyc", rules)  # the last match wins


def _bash(command: str, *, cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"$ {command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_install_steps_work_in_a_fresh_virtual_environment(
    parsed: dockerfile.Dockerfile, tmp_path: Path
) -> None:
    builder, runtime = parsed.stage("builder"), parsed.stage("runtime")
    # The base image's Python: a fresh virtual environment (its bundled pip, nothing else).
    base = tmp_path / "base-python"
    subprocess.run([sys.executable, "-m", "venv", str(base)], check=True, cwd=tmp_path)
    leaks = ("PYTHON", "VIRTUAL_ENV", "PIP_TARGET", "PIP_PREFIX", "PIP_USER", "PIP_REQUIRE_VIRTUALENV")
    host = {k: v for k, v in os.environ.items() if not k.startswith(leaks)}  # keeps the machine's pip config
    path = f"{base / 'bin'}:{host['PATH']}"

    # builder: COPY . . (by .dockerignore) into WORKDIR, then its RUN steps
    src = tmp_path / "src"
    assert builder.copies == [([".", ], ".")] and builder.workdir == "/src"  # fmt: skip
    for rel in dockerfile.context_files(REPO, (REPO / ".dockerignore").read_text()):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    wheels = tmp_path / "wheels"
    env = {**host, **builder.env, "PATH": path, "SBS_WHEELS": str(wheels)}
    assert set(builder.args) == {"SBS_WHEELS"}, "a new build arg needs a value in this test"
    for run in builder.runs:
        _bash(run.command, cwd=src, env=env)
    assert sorted(wheels.glob("sbs-*.whl")), sorted(p.name for p in wheels.iterdir())

    # runtime: the install step into a fresh virtual environment from those wheels only
    venv = tmp_path / "opt-sbs"
    assert set(runtime.args) == {"VERSION", "SBS_WHEELS", "SBS_VENV"}, "new build args need values here"
    env = {**host, "PATH": path, "VERSION": runtime.args["VERSION"], "SBS_WHEELS": str(wheels),
           "SBS_VENV": str(venv)}  # fmt: skip
    for run in runtime.runs:
        _bash(run.command, cwd=tmp_path, env=env)
    assert not (venv / "bin" / "pip").exists(), "the runtime environment has no pip"

    # the image's environment: its PATH first, HOME and MPLCONFIGDIR in a scratch /tmp
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    image_env = {k: v.replace("/tmp", str(scratch)) for k, v in runtime.env.items()}
    image_env["PATH"] = f"{venv / 'bin'}:{host['PATH']}"  # ENV PATH: the venv first
    image_env.pop("PYTHONDONTWRITEBYTECODE")  # prove nothing *would* be written without it
    before = _snapshot(venv)
    for command in ENTRY_POINTS:
        result = subprocess.run(
            [command, "--help"], cwd=scratch, env=image_env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and result.stdout.startswith("Usage: "), (command, result.stderr)
    result = subprocess.run(
        ["python", "-c", f"import {', '.join(MODULES)}; import sbs.operator.cli as c; print(c.__file__)"],
        cwd=scratch, env=image_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(venv)), result.stdout  # the installed copy, not the repo
    assert _snapshot(venv) == before, "running wrote into the installed tree (read-only root FS)"
