"""Nothing a driver started outlives it, even when it is killed with SIGKILL (the OOM killer on
a head node, `kill -9`).

A driver that starts a local Ray instance owns a tree of processes: Ray's GCS and raylet, the
raylet's agents and workers, the MLflow writer and multiprocessing's resource tracker. On a
clean exit `ray.shutdown()` ends them; after SIGKILL the GCS and raylet die with their parent,
but the dashboard and runtime-env agents and the writer are re-parented to init and stay (about
0.5 GB per kill, measured). A killed process cannot clean up after itself, so a small watcher
process (this module, stdlib only) keeps a list of the driver's descendants, refreshed every
`POLL_S`, and once the driver is gone gives them `GRACE_S` to end on their own (the writer
flushes what it can) and kills what is left. Linux only (it reads /proc); elsewhere it is not
started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 1.0
"""How often the watcher looks at the driver and its descendants (a scan of /proc: a few ms)."""
GRACE_S = 5.0
"""Seconds the driver's descendants get to end by themselves once it is gone."""

Proc = tuple[int, str]
"""A process: (pid, start time in clock ticks since boot), so that a reused pid is not taken
for the process that had it."""


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def started_at(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), None when it is gone or a zombie."""
    fields = _stat(pid)
    return None if fields is None or fields[0] in ("Z", "X") else fields[19]


def descendants(root: int) -> set[Proc]:
    """Every live process below `root` in the process tree (children, their children, ...)."""
    children: dict[int, list[Proc]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(int(stat.parent.name))
        if fields is not None and fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append((int(stat.parent.name), fields[19]))
    found: set[Proc] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def alive(procs: set[Proc]) -> set[Proc]:
    """Those of `procs` still running (same pid, same start time)."""
    return {(pid, start) for pid, start in procs if started_at(pid) == start}


def watch(driver: Proc, *, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> set[Proc]:
    """Watch `driver` until it is gone, then end what it left; returns the processes killed."""
    me = os.getpid()
    known: set[Proc] = set()
    while started_at(driver[0]) == driver[1]:
        known |= {p for p in descendants(driver[0]) if p[0] != me}
        known = alive(known)  # ended ones go: their pids may be reused
        time.sleep(poll_s)
    deadline = time.monotonic() + grace_s
    while alive(known) and time.monotonic() < deadline:
        time.sleep(min(poll_s, 0.1))
    left = alive(known)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def start(driver_pid: int | None = None) -> subprocess.Popen | None:
    """Start the watcher of this process (or `driver_pid`); None where /proc is not there."""
    pid = os.getpid() if driver_pid is None else driver_pid
    begun = started_at(pid) if sys.platform.startswith("linux") else None
    if begun is None:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "jepa_ray.reaper", str(pid), begun],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the driver's group: Ctrl-C on the driver is not for it
        close_fds=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[0].isdigit():
        print("usage: python -m jepa_ray.reaper DRIVER_PID DRIVER_START_TIME", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch((int(args[0]), args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
