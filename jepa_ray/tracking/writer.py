"""MLflow writes off Tune's event loop. The sweep's callbacks run inside Tune's controller loop,
which also schedules trials, saves its experiment state and talks to the searcher: a
synchronous MLflow call there (a trial's final metrics, params, plots, artifacts: 0.5-0.9 s at a
trial's end on a small CPU) stalls every trial's next result. Here the callbacks only queue
named operations on picklable data (jepa_ray.tracking.ops); a writer runs each run's operations in
order, merging a run's queued metric writes into `log_batch` calls. By default the writer is a process
of its own: MLflow's client (SQLAlchemy for a sqlite store, JSON for a server) is Python, and a
thread would hold the driver's GIL while Tune's loop waits for it.

The queue is bounded (a driver that outruns MLflow slows down instead of growing without limit),
`flush()` waits for everything queued, and a failing write is tried again, backing off, for
`patience_s` seconds (a tracking server on a busy head can take longer than a request's timeout
to answer); one that still fails (a server gone) stops the writer with `error` set (nothing
after it is attempted), so that the driver stops the sweep with one line and `--resume` records
what MLflow missed from the trials' stores."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
from typing import Any, Callable

from jepa_ray.errors import one_line

MAX_QUEUED = 20_000
PATIENCE_S = 120.0
"""Seconds a failing write is tried again before the writer gives up (the sweep's default)."""
MAX_BACKOFF_S = 10.0
WARN_EVERY_S = 60.0
"""At most one "MLflow did not take a write" line per this many seconds (a server that keeps
timing out now and then would otherwise print two lines per hiccup)."""
PARENT_POLL_S = 0.5
"""How often a writer process waiting for work checks that the driver that started it is alive:
once it is gone (killed with SIGKILL, say) the writer writes what was queued and exits."""
MERGE = 4096
"""Operations a writer takes off the queue at once (metric writes to one run among them merge):
with 128 trials reporting, a backed-up queue's 4,096 operations are about 130 requests."""


class RunRef:
    """A run the writer creates (known by its handle until the writer's side has its id) or one
    that exists (its id)."""

    _handles = itertools.count()

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id
        self.handle = next(RunRef._handles)

    def __repr__(self) -> str:
        return f"RunRef({self.run_id or self.handle})"


class WriterFailed(RuntimeError):
    """MLflow kept refusing the writer's writes; the message is one line."""


def _merge(ops: list[tuple]) -> list[tuple]:
    """Metric writes to one run become one write, where the first of them was. Trials report
    interleaved, so the writes to one run are rarely consecutive: a later one moves up past other
    runs' operations (independent of it), never past one on its own run (its create, reopen or
    finish) or a flush, so each run's operations keep their order."""
    out: list[tuple] = []
    batch_at: dict[Any, int] = {}  # run -> index in `out` of its metric write later ones may join
    for op in ops:
        if op[0] in ("flush", "stop"):
            batch_at.clear()
            out.append(op)
            continue
        run = op[2] or ("handle", op[1])  # a run the writer creates is known by its handle only
        if op[0] != "log_batch":
            batch_at.pop(run, None)
        elif run in batch_at:
            first = out[batch_at[run]]
            out[batch_at[run]] = (*first[:3], first[3] + op[3])
            continue
        else:
            batch_at[run] = len(out)
        out.append(op)
    return out


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Executor:
    """Runs operations against a client (in the writer's thread or process): tries a failing one
    again for `patience_s` seconds, backing off, and after one that still fails, runs nothing
    more and reports the error. While it waits for a store it says so (one line when the store
    stops taking writes, one when it takes them again), since the sweep only slows meanwhile."""

    def __init__(
        self,
        tracking_uri: str,
        client,
        patience_s: float,
        backoff_s: float,
        say: Callable[[str], None] = _say,
        orphaned: Callable[[], bool] = lambda: False,
    ):
        self.tracking_uri, self.c, self.patience_s, self.backoff_s = tracking_uri, client, patience_s, backoff_s
        self.orphaned = orphaned  # True once the driver is gone: a failing write is not tried again
        self.ids: dict[int, str] = {}  # RunRef handle -> run id
        self.error: str | None = None
        self.say = say
        self.waiting_since: float | None = None  # first failure of the store's current bad spell
        self.warned_at = -WARN_EVERY_S  # when the last announced spell began

    def _failing(self, err: Exception, now: float) -> None:
        if self.waiting_since is None:
            self.waiting_since = now
            if now - self.warned_at >= WARN_EVERY_S:
                self.warned_at = now
                self.say(
                    f"warning: MLflow at {self.tracking_uri} did not take a write ({one_line(err, 200)}); "
                    f"trying again for up to {self.patience_s:.0f} s (--tracking-patience)"
                )

    def _recovered(self) -> None:
        if self.waiting_since is not None and self.waiting_since == self.warned_at:  # this spell was announced
            self.say(
                f"MLflow at {self.tracking_uri} takes writes again "
                f"(after {time.monotonic() - self.waiting_since:.0f} s)"
            )
        self.waiting_since = None

    def run(self, op: tuple) -> None:
        from jepa_ray.tracking.ops import OPS, created_run

        name, handle, run_id, *args = op
        first_failure = None
        for attempt in itertools.count():
            try:
                # A request that timed out may still have been carried out: a run made by an
                # earlier try is taken, not made twice (metric, param and tag writes repeat safely).
                made = created_run(self.c, *args) if attempt and name == "create_run" else None
                out = made or OPS[name](self.c, run_id or self.ids.get(handle), *args)
                if name == "create_run":
                    self.ids[handle] = out
                self._recovered()
                return
            except Exception as err:  # noqa: BLE001 - MLflow, HTTP and database errors alike
                now = time.monotonic()
                first_failure = first_failure or now
                self._failing(err, now)
                left = first_failure + self.patience_s - now
                if left <= 0 or self.orphaned():
                    self.error = (
                        f"MLflow at {self.tracking_uri} refused writes for {now - first_failure:.0f} s "
                        f"({attempt + 1} tries): {one_line(err, 300)}"
                    )
                    return
                time.sleep(min(self.backoff_s * 2**attempt, MAX_BACKOFF_S, left))


def _take_ops(q, wait: float | None = None) -> list[tuple]:
    """The next operation (waiting for it up to `wait` seconds, for ever when None; none when
    nothing came) and up to MERGE - 1 more already queued, merged."""
    try:
        ops = [q.get(timeout=wait)]
    except queue.Empty:
        return []
    while len(ops) < MERGE:
        try:
            ops.append(q.get_nowait())
        except queue.Empty:
            break
    return _merge(ops)


def _quiet_http(tracking_uri: str) -> None:
    if tracking_uri.startswith("http"):
        # MLflow's own HTTP retries (7, backing off for minutes) would hide a server that went
        # away behind this writer's: one short try per attempt here (this writer's process only).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def _serve(tracking_uri: str, inbox, outbox, patience_s: float, backoff_s: float, parent: int) -> None:
    """The writer process: operations from `inbox`, ("flushed", token) and ("error", line) to
    `outbox`; ("stop",) ends it, and so does the end of the `parent` process, once what it had
    queued is written (each write tried once: nobody waits for them now)."""
    _quiet_http(tracking_uri)
    from jepa_ray.tracking.store import client

    def orphaned() -> bool:
        return os.getppid() != parent

    ex = _Executor(tracking_uri, client(tracking_uri), patience_s, backoff_s, orphaned=orphaned)
    reported = False
    while True:
        last = orphaned()
        ops = _take_ops(inbox, 0 if last else PARENT_POLL_S)
        if last and not ops:
            return
        for op in ops:
            if op[0] == "stop":
                return
            if op[0] == "flush":
                outbox.put(("flushed", op[1]))
            elif ex.error is None:
                ex.run(op)
            if ex.error is not None and not reported:
                outbox.put(("error", ex.error))
                reported = True


class MlflowWriter:
    """Runs the sweep's MLflow writes in order, off the caller's thread: in a process of its own
    (`process=True`, the driver's) or a thread (`client` given: tests pass a fake one)."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        maxsize: int = MAX_QUEUED,
        patience_s: float = PATIENCE_S,
        backoff_s: float = 0.5,
        client=None,
        process: bool | None = None,
    ):
        self.tracking_uri, self.patience_s, self.backoff_s = tracking_uri, patience_s, backoff_s
        self.error: str | None = None
        self.process = client is None if process is None else process
        self._tokens = itertools.count()
        self._flushed: set[int] = set()
        if self.process:
            ctx = mp.get_context("spawn")  # not fork: the driver holds Ray's and Tune's threads
            self.q, self._out = ctx.Queue(maxsize=maxsize), ctx.Queue()
            self._worker = ctx.Process(
                target=_serve, args=(tracking_uri, self.q, self._out, patience_s, backoff_s, os.getpid()), daemon=True
            )
            self._worker.start()
        else:
            _quiet_http(tracking_uri)
            from jepa_ray.tracking.store import client as make_client

            self._ex = _Executor(tracking_uri, client or make_client(tracking_uri), patience_s, backoff_s)
            self.q = queue.Queue(maxsize=maxsize)
            self._events: dict[int, threading.Event] = {}
            self._worker = threading.Thread(target=self._thread, name="mlflow-writer", daemon=True)
            self._worker.start()

    def __reduce__(self):
        # Tune pickles its callbacks with the experiment state (it unpickles them only to restore
        # an experiment, which the sweep never asks of it): a copy is a new writer, started with
        # this one's patience, not with the default before the state is set.
        return (_unpickled_writer, (self.tracking_uri, self.patience_s, self.backoff_s))

    # What the callbacks call (cheap: they only queue) ---------------------------------------

    def do(self, name: str, ref: RunRef, *args: Any) -> None:
        """Queue the operation `name` of jepa_ray.tracking.ops on the run `ref`."""
        self._put((name, ref.handle, ref.run_id, *args))

    def create_run(self, ref: RunRef, exp_id: str, run_name: str, tags: dict[str, str]) -> RunRef:
        self.do("create_run", ref, exp_id, run_name, tags)
        return ref

    def log_metrics(self, ref: RunRef, metrics: dict[str, Any], step: int) -> None:
        """Numeric, finite metrics at `step` (as tracking.store.log_metrics), batched."""
        from jepa_ray.tracking.store import metric_entities

        items = metric_entities(metrics, step)
        if items:
            self.do("log_batch", ref, items)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call is written (or the writer failed);
        True when it all was."""
        if self._poll() is not None or not self._worker.is_alive():
            return False
        token = next(self._tokens)
        if not self.process:
            self._events[token] = threading.Event()
        self._put(("flush", token))
        deadline = None if timeout is None else time.monotonic() + timeout
        while token not in self._flushed and self.error is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            if self.process:
                try:
                    self._take(self._out.get(timeout=0.2 if left is None else min(left, 0.2)))
                except queue.Empty:
                    if not self._worker.is_alive():
                        self.error = self.error or "the MLflow writer process died"
            else:
                self._events[token].wait(0.2 if left is None else min(left, 0.2))
                self._poll()
        return token in self._flushed and self.error is None

    def check(self) -> None:
        """WriterFailed when the writer stopped on a failing write."""
        if self._poll() is not None:
            raise WriterFailed(self.error)

    def close(self) -> None:
        """Flush and end the writer."""
        self.flush()
        if self.process and self._worker.is_alive():
            self.q.put(("stop",))
            self._worker.join(timeout=30)

    @property
    def pending(self) -> int:
        try:
            return self.q.qsize()
        except NotImplementedError:  # multiprocessing queues on some platforms
            return 0

    def _put(self, op: tuple) -> None:
        if self.error is None:
            self.q.put(op)

    def _take(self, message: tuple) -> None:
        kind, value = message
        if kind == "flushed":
            self._flushed.add(value)
        elif kind == "error":
            self.error = self.error or value

    def _poll(self) -> str | None:
        if self.process:
            while True:
                try:
                    self._take(self._out.get_nowait())
                except queue.Empty:
                    break
        elif self._ex.error is not None:
            self.error = self._ex.error
        return self.error

    def _thread(self) -> None:
        while True:
            for op in _take_ops(self.q):
                if op[0] == "flush":
                    self._flushed.add(op[1])
                    self._events.pop(op[1]).set()
                elif self._ex.error is None:
                    self._ex.run(op)


def _unpickled_writer(tracking_uri: str, patience_s: float, backoff_s: float) -> MlflowWriter:
    return MlflowWriter(tracking_uri, patience_s=patience_s, backoff_s=backoff_s)
