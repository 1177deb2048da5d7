"""The cached-tool helpers: where the cache lives, the stamped build under its lock, the step runner."""

import sys
import threading
import time
from pathlib import Path

import pytest
from sbs.e2e import toolcache


def test_cache_root_prefers_the_variable_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SBS_WIDGETS_CACHE", str(tmp_path / "mine"))
    assert toolcache.cache_root("widgets") == tmp_path / "mine"
    monkeypatch.setenv("SBS_WIDGETS_CACHE", "")  # empty counts as unset
    assert toolcache.cache_root("widgets") == tmp_path / "xdg" / "sbs-widgets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert toolcache.cache_root("widgets") == tmp_path / "home" / ".cache" / "sbs-widgets"


def test_the_stamp_makes_the_build_run_once(tmp_path):
    calls: list[Path] = []

    def build(root: Path) -> str:
        calls.append(root)
        (root / "tool").write_text("built")
        return "v1\n"

    root = tmp_path / "cache" / "tool-1"
    assert toolcache.stamped_build(root, build) == root
    assert toolcache.stamped_build(root, build) == root
    assert calls == [root]
    assert (root / toolcache.STAMP).read_text() == "v1\n"
    assert (root / "tool").read_text() == "built"
    assert (tmp_path / "cache" / "tool-1.lock").exists()


def test_a_failed_build_leaves_no_stamp_and_is_rebuilt_from_scratch(tmp_path):
    root = tmp_path / "tool"

    def broken(root: Path) -> str:
        (root / "half").write_text("left over")
        raise RuntimeError("pip failed")

    with pytest.raises(RuntimeError, match="pip failed"):
        toolcache.stamped_build(root, broken)
    assert (root / "half").exists() and not (root / toolcache.STAMP).exists()

    toolcache.stamped_build(root, lambda root: "ok")
    assert (root / toolcache.STAMP).read_text() == "ok"
    assert not (root / "half").exists(), "the rebuild starts from an empty directory"


def test_concurrent_callers_build_once(tmp_path):
    root = tmp_path / "tool"
    calls: list[int] = []

    def slow(root: Path) -> str:
        calls.append(1)
        time.sleep(0.3)
        return "done"

    threads = [threading.Thread(target=toolcache.stamped_build, args=(root, slow)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert (root / toolcache.STAMP).read_text() == "done"


class StepError(Exception):
    pass


def test_run_returns_stdout_and_raises_the_callers_error_with_the_tail(tmp_path):
    assert (
        toolcache.run([sys.executable, "-c", "print('hi')"], "echo", timeout_s=30, error=StepError) == "hi\n"
    )
    script = "import sys; print('x' * 10000); print('the cause', file=sys.stderr); sys.exit(3)"
    with pytest.raises(StepError, match=r"pip install failed \(exit 3\):\n") as info:
        toolcache.run(
            [sys.executable, "-c", script], "pip install", timeout_s=30, error=StepError, cwd=tmp_path
        )
    message = str(info.value)
    assert message.endswith("the cause\n")
    assert len(message) < toolcache.OUTPUT_TAIL + 100, "only the tail of the output"


def test_run_raises_the_callers_error_on_a_timeout_with_the_output_so_far():
    script = "import time; print('resolving', flush=True); time.sleep(30)"
    t0 = time.monotonic()
    with pytest.raises(StepError, match=r"^hung step: no result after 1 s:\nresolving\n$"):
        toolcache.run([sys.executable, "-c", script], "hung step", timeout_s=1, error=StepError)
    assert time.monotonic() - t0 < 20
