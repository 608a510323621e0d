"""One writer per sweep: the lock a sweep's MLflow writer process holds for its life.

A driver killed with SIGKILL leaves its writer process behind for a while: it writes what was
queued and then exits (jepa_ray.tracking.writer), and after a tracking server came back from an
outage that can be seconds of writes. A driver resumed meanwhile (`--resume`) reads MLflow to
find each trial's run and what it lacks, and would race those writes: a run the old writer
creates after the new driver looked gets a twin, epochs both write are logged twice (seen in
the chaos benchmark). So the writer holds an exclusive `flock` on a file named after the sweep,
with its driver's pid in it, and a resuming driver first waits for that file to be free.

The file lives on the driver's machine (the head node): a driver resumed on another machine
cannot see it. Linux and macOS (`fcntl`); elsewhere there is no lock and no wait."""

from __future__ import annotations

import hashlib
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from jepa_ray.errors import UsageError
from jepa_ray.reaper import started_at

try:
    import fcntl
except ImportError:  # not a POSIX system
    fcntl = None  # type: ignore[assignment]

POLL_S = 0.2
HOLD_WAIT_S = 10.0
SAY_EVERY_S = 30.0
LOCK_DIR_ENV = "JEPA_RAY_LOCK_DIR"
"""Where the lock files go (default: a `jepa_ray-locks-UID` folder in the temp directory)."""


def lock_path(tracking_uri: str, experiment: str, sweep: str) -> Path:
    """The lock file of the sweep `sweep` recorded in `experiment` at `tracking_uri`."""
    key = hashlib.sha256(f"{tracking_uri}\0{experiment}\0{sweep}".encode()).hexdigest()[:20]
    user = os.getuid() if hasattr(os, "getuid") else 0  # a shared head: each user's own folder
    folder = Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"jepa_ray-locks-{user}")
    return folder / f"writer-{key}.lock"


def hold(path: str | Path, driver: int, wait_s: float = HOLD_WAIT_S) -> int | None:
    """Take the lock for this process (the writer) and record `driver` and itself in it; the
    file descriptor, kept open for the process's life (its end releases the lock). None when
    another process still holds it after `wait_s` (the resuming driver waited for the previous
    holder already: only two drivers started at once under one sweep name get here, and a
    writer that waited for ever would stall its driver)."""
    if fcntl is None:
        return None
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a lock is a safeguard: a writer without one still writes
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(POLL_S)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{driver} {started_at(driver) or '-'} {os.getpid()}\n".encode(), 0)
    return fd


def _holder(path: Path) -> tuple[int, str, int] | None:
    """(driver pid, its start time, writer pid) recorded in the file; None when unreadable."""
    try:
        driver, start, writer = path.read_text().split()
        return int(driver), start, int(writer)
    except (OSError, ValueError):
        return None


def _free(path: Path) -> bool:
    """Whether no process holds the lock (taken and released at once)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:  # none, or not this user's to take: no writer of this user's holds it
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases it if taken


def check_not_running(path: str | Path, sweep: str) -> bool:
    """UsageError when a live driver on this machine holds the sweep's lock (it still runs);
    else whether a writer whose driver is gone still holds it."""
    path = Path(path)
    if fcntl is None or _free(path):
        return False
    holder = _holder(path)
    if holder is not None and holder[1] != "-" and started_at(holder[0]) == holder[1]:
        raise UsageError(
            f"--resume: sweep {sweep} is still running on this machine (driver pid {holder[0]}); "
            "stop it (Ctrl-C) before resuming it"
        )
    return True


def wait_for_previous_writer(path: str | Path, sweep: str, patience_s: float, say: Callable[[str], None]) -> None:
    """Return once no writer of this sweep is left on this machine. A live driver holding it
    (the sweep still running) is a usage error; a writer whose driver is gone is flushing what
    its driver queued: waited for, and killed after `patience_s` seconds (what it did not write,
    --resume records from the trials' stores)."""
    path = Path(path)
    if not check_not_running(path, sweep):
        return
    holder = _holder(path)
    writer = f"pid {holder[2]}" if holder else "a process"
    say(f"waiting for the stopped driver's MLflow writer ({writer}) to finish its writes before resuming")
    began = last_said = time.monotonic()
    killed = False
    while not _free(path):
        now = time.monotonic()
        holder = holder or _holder(path)  # None only in the instant between its lock and its line
        if now - began >= patience_s and holder is not None and not killed:
            say(f"the stopped driver's MLflow writer ({writer}) still writes after {now - began:.0f} s: stopping it")
            try:
                os.kill(holder[2], signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed = True  # now only wait for its end (the lock goes with it)
        elif now - last_said >= SAY_EVERY_S:
            last_said = now
            say(f"still waiting for the stopped driver's MLflow writer ({writer}), {now - began:.0f} s")
        time.sleep(POLL_S)
