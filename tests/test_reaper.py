"""jepa_ray.reaper: what a driver killed with SIGKILL started is ended by its watcher, and only
that (a process that ended by itself, or a reused pid, is left alone)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from jepa_ray import reaper

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _driver(script: str) -> subprocess.Popen:
    """A stand-in driver: a shell that starts background children, prints their pids and waits."""
    return subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)


def test_descendants_are_the_whole_tree_below_a_process_with_their_start_times():
    drv = _driver("sleep 60 & echo $!; sh -c 'sleep 60 & echo $!; wait' & wait")
    try:
        pids = {int(drv.stdout.readline()), int(drv.stdout.readline())}  # a child and a grandchild
        found = reaper.descendants(drv.pid)
        assert pids <= {pid for pid, _ in found}
        assert all(start == reaper.started_at(pid) for pid, start in found)
        assert reaper.alive(found) == found
        assert reaper.alive({(pid, "1") for pid in pids}) == set()  # another start time: another process
    finally:
        os.killpg(drv.pid, signal.SIGKILL)
        drv.wait()


def test_the_watcher_kills_what_a_killed_driver_left_after_its_grace_and_nothing_that_ended(monkeypatch):
    """The watcher runs in a thread here, so that the driver is killed only once it has seen the
    driver's children (no guess at how long a busy machine takes to start a process)."""
    drv = _driver("sleep 60 & echo $!; sleep 0.5 & echo $!; wait")
    orphan, _short = int(drv.stdout.readline()), int(drv.stdout.readline())
    seen = threading.Event()
    scan = reaper.descendants

    def descendants(root: int) -> set[reaper.Proc]:
        found = scan(root)
        if orphan in {pid for pid, _ in found}:
            seen.set()
        return found

    monkeypatch.setattr(reaper, "descendants", descendants)
    killed: list[set[reaper.Proc]] = []
    driver = (drv.pid, reaper.started_at(drv.pid))
    watcher = threading.Thread(target=lambda: killed.append(reaper.watch(driver, poll_s=0.05, grace_s=3.0)))
    watcher.start()
    try:
        assert seen.wait(60)
        drv.kill()  # SIGKILL of the driver only: its children are orphaned
        drv.wait()
        watcher.join(60)
        assert not watcher.is_alive()
        assert sorted(pid for pid, _ in killed[0]) == [orphan]  # the short one ended by itself in the grace
        deadline = time.monotonic() + 60  # SIGKILL is delivered, not waited for: a bound, not a speed goal
        while reaper.started_at(orphan) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reaper.started_at(orphan) is None
    finally:
        try:
            os.killpg(drv.pid, signal.SIGKILL)  # the orphan, if it lived: it is in the driver's group
        except ProcessLookupError:
            pass


DRIVER_WITH_A_WATCHER = """
import subprocess, time
from jepa_ray import reaper
print(reaper.start().pid, flush=True)
print(subprocess.Popen(["sleep", "60"]).pid, flush=True)
time.sleep(60)
"""


def test_start_runs_a_watcher_that_ends_with_its_driver():
    drv = subprocess.Popen([sys.executable, "-c", DRIVER_WITH_A_WATCHER], stdout=subprocess.PIPE, text=True)
    watcher, child = int(drv.stdout.readline()), int(drv.stdout.readline())
    time.sleep(2 * reaper.POLL_S)
    drv.kill()
    drv.wait()
    deadline = time.monotonic() + 60  # a bound for a busy machine, not a speed goal
    while (reaper.started_at(child) or reaper.started_at(watcher)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert reaper.started_at(child) is None and reaper.started_at(watcher) is None


def test_bad_arguments_exit_2_with_the_usage(capsys):
    assert reaper.main(["not-a-pid"]) == 2
    assert capsys.readouterr().err.strip() == "usage: python -m jepa_ray.reaper DRIVER_PID DRIVER_START_TIME"
