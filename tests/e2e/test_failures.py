"""A broken or dying component is reported with its log, promptly, never as a hang."""

import os
import signal
import threading
import time

import pytest
from sbs.e2e import binaries
from sbs.e2e.control_plane import ClusterSettings, ComponentError, ControlPlane
from sbs.e2e.waits import WaitTimeout

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bins() -> binaries.Binaries:
    try:
        return binaries.find_binaries()
    except binaries.BinariesMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def test_a_component_that_cannot_start_fails_the_start_with_its_log(bins):
    settings = ClusterSettings(node_count=0, extra_args={"kube-apiserver": ("--no-such-flag=1",)})
    plane = ControlPlane(bins, settings, name="broken")
    started = time.monotonic()
    with pytest.raises(ComponentError) as err:
        plane.start()
    assert time.monotonic() - started < 20  # reported at once, not after the 60 s wait timeout
    assert err.value.name == "kube-apiserver"
    assert "unknown flag: --no-such-flag" in str(err.value)
    assert not plane.dir.exists()  # the slot was given back
    assert not plane.components  # nothing left running


def test_a_component_that_dies_later_is_reported_by_the_next_wait(bins):
    with ControlPlane(bins, ClusterSettings(node_count=1), name="dying") as plane:
        os.kill(plane.components["kwok"].pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(ComponentError, match="kwok exited with code -9"):
            plane.wait(lambda: False, "something that never happens")
        assert time.monotonic() - started < 5


def test_a_wait_that_times_out_says_what_it_waited_for_and_shows_the_logs(bins):
    with ControlPlane(bins, ClusterSettings(node_count=1), name="slow") as plane:
        with pytest.raises(WaitTimeout) as err:
            plane.wait(lambda: False, "the impossible", timeout_s=0.5)
        assert "timed out after 0.5 s waiting for the impossible" in str(err.value)
        assert "--- kube-apiserver (pid" in str(err.value)


def test_a_component_restarted_from_a_short_lived_thread_outlives_that_thread(bins):
    """Chaos restarts run in an injector thread; the restarted process must not get the parent-death
    signal when that thread ends (it is tied to the thread that forked, not to the process)."""
    with ControlPlane(bins, ClusterSettings(node_count=1), name="restart") as plane:
        old = plane.components["etcd"].pid
        restarter = threading.Thread(target=plane.restart, args=("etcd",))
        restarter.start()
        restarter.join()
        assert plane.components["etcd"].pid != old
        time.sleep(1.0)  # the signal would arrive at once: give it time to
        plane.check()
        assert plane.kube.get("/api/v1/nodes")["items"]
