"""Cluster slots: concurrent clusters get distinct directories and pod networks; dead ones are reclaimed."""

import json
import os
from pathlib import Path

import pytest
from sbs.e2e import slots
from sbs.e2e.control_plane import remove_stale


@pytest.fixture
def runtime(monkeypatch, tmp_path):
    monkeypatch.setenv("SBS_E2E_RUNTIME", str(tmp_path))
    return tmp_path


def own_exe() -> str:
    """argv[0] of this process, as `_pid_runs` compares it."""
    return Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode()


def write_state(path, pid, exe):
    state = {"name": "x", "pids": {"etcd": pid}, "argv": {"etcd": [exe]}}
    (path / "state.json").write_text(json.dumps(state))


def test_slots_are_claimed_lowest_first(runtime):
    assert slots.claim_slot(runtime) == (0, runtime / "0")
    assert slots.claim_slot(runtime) == (1, runtime / "1")


def test_a_slot_whose_processes_are_gone_is_reclaimed(runtime):
    (runtime / "0").mkdir()
    write_state(runtime / "0", pid=2**22 + 1, exe="/nonexistent/etcd")  # no such process
    (runtime / "0" / "leftover").write_text("x")
    assert slots.claim_slot(runtime) == (0, runtime / "0")
    assert not (runtime / "0" / "leftover").exists()


def test_a_slot_whose_process_runs_is_kept(runtime):
    (runtime / "0").mkdir()
    write_state(runtime / "0", pid=os.getpid(), exe=own_exe())
    assert slots.claim_slot(runtime)[0] == 1


def test_a_recycled_pid_running_something_else_does_not_hold_a_slot(runtime):
    (runtime / "0").mkdir()
    write_state(runtime / "0", pid=os.getpid(), exe="/nonexistent/kube-apiserver")
    assert slots.claim_slot(runtime)[0] == 0


def test_remove_stale_deletes_only_dead_clusters(runtime):
    for slot, pid in ((0, 2**22 + 1), (1, os.getpid())):
        (runtime / str(slot)).mkdir()
        write_state(runtime / str(slot), pid=pid, exe=own_exe() if pid == os.getpid() else "/x")
    assert remove_stale() == [runtime / "0"]
    assert (runtime / "1").exists()
