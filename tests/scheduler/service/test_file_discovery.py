"""The engines file: records keyed by role and URL, and the watched source's adds, updates, removes."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sbs.scheduler.core.types import Role
from sbs.scheduler.service import cli
from sbs.scheduler.service.config_file import SettingsError
from sbs.scheduler.service.discovery import ChangeKind, EngineChange
from sbs.scheduler.service.file_discovery import FileSource, file_records

P0 = {"url": "http://p0:30000", "bootstrap_port": 8998}
P1 = {"url": "http://p1:30000", "bootstrap_port": 8998, "dp_size": 8}
D0 = {"url": "http://d0:30000"}


def test_records_are_keyed_by_role_and_url() -> None:
    recs = file_records({"prefill": [P0, P1], "decode": [D0]}, "e.yaml")
    assert sorted(recs) == ["decode@http://d0:30000", "prefill@http://p0:30000", "prefill@http://p1:30000"]
    p1 = recs["prefill@http://p1:30000"]
    assert (p1.role, p1.bootstrap_port, p1.dp_size, p1.draining) == (Role.PREFILL, 8998, 8, False)
    assert file_records({"decode": None}, "e.yaml") == {}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"prefill": [P0], "kubernetes": {}}, "unknown key 'kubernetes'"),
        ({"prefill": [{"url": "p0:1"}]}, "e.yaml: field 'prefill.0.url'"),
        ({"prefill": [P0, P0]}, "listed twice"),
    ],
)
def test_a_bad_engines_file_names_what_is_wrong(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        file_records(doc, "e.yaml")


def write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name("tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


async def test_the_source_follows_a_drain_a_removal_and_a_readd(tmp_path: Path) -> None:
    path = tmp_path / "engines.json"
    write(path, {"prefill": [P0, P1], "decode": [D0]})
    changes = FileSource(path, poll_s=0.01).changes()

    async def take(n: int) -> list[tuple[ChangeKind, str, bool]]:
        out: list[EngineChange] = [await asyncio.wait_for(anext(changes), 5) for _ in range(n)]
        return sorted((c.kind, c.engine.key, c.engine.draining) for c in out)

    assert [k for k, _, _ in await take(3)] == [ChangeKind.ADD] * 3
    write(path, {"prefill": [P0, {**P1, "draining": True}], "decode": [D0]})
    assert await take(1) == [(ChangeKind.UPDATE, "prefill@http://p1:30000", True)]
    path.write_text("prefill: [")  # half written: kept as it was
    await asyncio.sleep(0.05)
    write(path, {"prefill": [P0], "decode": [D0]})
    assert await take(1) == [(ChangeKind.REMOVE, "prefill@http://p1:30000", True)]
    write(path, {"prefill": [P0, P1], "decode": [D0]})
    assert await take(1) == [(ChangeKind.ADD, "prefill@http://p1:30000", False)]
    await changes.aclose()


async def test_a_vanished_file_keeps_the_engines_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "engines.json"
    write(path, {"prefill": [P0], "decode": [D0]})
    changes = FileSource(path, poll_s=0.01).changes()
    assert len([await asyncio.wait_for(anext(changes), 5) for _ in range(2)]) == 2
    path.unlink()
    with caplog.at_level("WARNING"):
        pending = asyncio.ensure_future(anext(changes))
        for _ in range(500):  # until the first poll of the missing file, then about ten more
            if caplog.records:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert not pending.done()  # no change: the engines read before are kept
        assert sum("engines file" in r.getMessage() for r in caplog.records) == 1
        write(path, {"prefill": [P0, P1], "decode": [D0]})
        change = await asyncio.wait_for(pending, 5)
    assert (change.kind, change.engine.key) == (ChangeKind.ADD, "prefill@http://p1:30000")
    await changes.aclose()


def test_run_refuses_a_bad_engines_file_or_one_beside_kubernetes_discovery(tmp_path: Path) -> None:
    bad = tmp_path / "engines.yaml"
    bad.write_text("prefill:\n  - url: p0:1\n")
    result = CliRunner().invoke(cli.main, ["run", "--engines-file", str(bad)])
    assert result.exit_code == 2 and "--engines-file" in result.output and "prefill.0.url" in result.output
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps({"decode": [D0]}))
    config = tmp_path / "config.yaml"
    config.write_text("engines:\n  kubernetes: {namespace: llm, deployment: ds3}\n")
    result = CliRunner().invoke(cli.main, ["run", "--config", str(config), "--engines-file", str(good)])
    assert result.exit_code == 2 and "use one of them" in result.output
