"""MLflow writes off Tune's event loop. The sweep's callbacks run inside Tune's controller loop,
which also schedules trials, saves its experiment state and talks to the searcher: a
synchronous MLflow call there (a trial's final metrics, params, plots, artifacts at its end)
stalls every trial's next result. Here the callbacks only queue
typed operations on picklable data (jepa_ray.tracking.ops); a writer runs each run's operations in
order, merging a run's queued metric writes into `log_batch` calls. By default the writer is a process
of its own: MLflow's client (SQLAlchemy for a sqlite store, JSON for a server) is Python, and a
thread would hold the driver's GIL while Tune's loop waits for it.

The queue is bounded (a driver that outruns MLflow slows down instead of growing without limit),
`flush()` waits for everything queued, and a failing write is tried again, backing off, for
`patience_s` seconds (a tracking server on a busy head can take longer than a request's timeout
to answer); one that still fails (a server gone) stops the writer with `error` set (nothing
after it is attempted), so that the driver stops the sweep with one line and `--resume` records
what MLflow missed from the trials' stores. A write that finds the store's disk full stops it at
once (waiting frees no space), its `error` being jepa_ray.errors.StorageFull's line naming the
store.

A process writer (the driver's) and a thread writer (tests, with a fake client) run one loop,
`_dispatch`, on the same messages; they differ only in the queues and the worker they are made
with. Nothing here starts a writer on its own: the driver makes the one it passes to its callbacks."""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
from typing import Any, Callable, Protocol

from jepa_ray.cluster import sqlite_path
from jepa_ray.errors import one_line, storage_full
from jepa_ray.tracking import store, writer_lock
from jepa_ray.tracking.ops import CreateRun, Failed, Flush, Flushed, LogBatch, Message, Op, Reply, RunRef, Stop

MAX_QUEUED = 20_000
PATIENCE_S = 120.0
"""Seconds a failing write is tried again before the writer gives up (the sweep's default)."""
MAX_BACKOFF_S = 10.0
WARN_EVERY_S = 60.0
"""At most one "MLflow did not take a write" line per this many seconds (a server that keeps
timing out now and then would otherwise print two lines per hiccup)."""
PARENT_POLL_S = 0.5
"""How often a writer waiting for work checks that the driver that started it is alive: once it
is gone (killed with SIGKILL, say) a writer process writes what was queued and exits."""
MERGE = 4096
"""Operations a writer takes off the queue at once (metric writes to one run among them merge):
with 128 trials reporting, a backed-up queue's 4,096 operations are about 130 requests."""

__all__ = ["MlflowWriter", "RunRef", "WriterFailed"]


class WriterFailed(RuntimeError):
    """MLflow kept refusing the writer's writes; the message is one line."""


class _Queue(Protocol):
    """What the writer needs of a queue: queue.Queue (thread) and multiprocessing's (process)."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None: ...
    def get(self, block: bool = True, timeout: float | None = None) -> Any: ...
    def get_nowait(self) -> Any: ...
    def qsize(self) -> int: ...


class _Worker(Protocol):
    """What the writer needs of its worker: threading.Thread and multiprocessing's Process."""

    def is_alive(self) -> bool: ...
    def join(self, timeout: float | None = None) -> None: ...


def _merge(messages: list[Message]) -> list[Message]:
    """Metric writes to one run become one write, where the first of them was. Trials report
    interleaved, so the writes to one run are rarely consecutive: a later one moves up past other
    runs' operations (independent of it), never past one on its own run (its create, reopen or
    finish) or a flush, so each run's operations keep their order."""
    out: list[Message] = []
    batch_at: dict[Any, int] = {}  # run key -> index in `out` of its metric write later ones may join
    for msg in messages:
        if not isinstance(msg, Op):
            batch_at.clear()
            out.append(msg)
            continue
        run = msg.ref.key
        if not isinstance(msg, LogBatch):
            batch_at.pop(run, None)
        elif run in batch_at:
            out[batch_at[run]] = out[batch_at[run]].joined(msg)
            continue
        else:
            batch_at[run] = len(out)
        out.append(msg)
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

    def _apply(self, op: Op, again: bool) -> None:
        """One try of `op` on its run (`again`: after a failed try); the id of a run it creates
        is kept under its reference's handle, for the operations after it."""
        run_id = op.ref.run_id or self.ids.get(op.ref.handle)
        made = op.again(self.c, run_id) if again else op.apply(self.c, run_id)
        if isinstance(op, CreateRun):
            self.ids[op.ref.handle] = made

    def run(self, op: Op) -> None:
        """`op`, tried until it is written or the patience is spent (then `error` is set)."""
        first_failure = None
        for attempt in itertools.count():
            try:
                self._apply(op, again=attempt > 0)
                self._recovered()
                return
            except Exception as err:  # noqa: BLE001 - MLflow, HTTP and database errors alike
                full = storage_full(err, str(sqlite_path(self.tracking_uri) or self.tracking_uri))
                if full is not None:  # a full disk does not clear up by waiting: stop at once
                    self.error = str(full)
                    return
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


def _take_ops(q: _Queue, wait: float | None = None) -> list[Message]:
    """The next message (waiting for it up to `wait` seconds, for ever when None; none when
    nothing came) and up to MERGE - 1 more already queued, merged."""
    try:
        messages = [q.get(timeout=wait)]
    except queue.Empty:
        return []
    while len(messages) < MERGE:
        try:
            messages.append(q.get_nowait())
        except queue.Empty:
            break
    return _merge(messages)


def _quiet_http(tracking_uri: str) -> None:
    if tracking_uri.startswith("http"):
        # MLflow's own HTTP retries (7, backing off for minutes) would hide a server that went
        # away behind this writer's: one short try per attempt here (this writer's process only).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def _dispatch(ex: _Executor, inbox: _Queue, outbox: _Queue) -> None:
    """The writer's one loop, in a thread or a process: operations from `inbox` run in order;
    `Flushed` and (once) `Failed` go to `outbox`. `Stop` ends it, and so does the end of the
    driver (`ex.orphaned`, checked every PARENT_POLL_S), once what it had queued is written (each
    write tried once: nobody waits for them now). After a failure, operations are taken but not
    run, so that flushes are still answered and a producer never blocks on a full queue."""
    reported = False
    while True:
        last = ex.orphaned()
        messages = _take_ops(inbox, 0 if last else PARENT_POLL_S)
        if last and not messages:
            return
        for msg in messages:
            if isinstance(msg, Stop):
                return
            if isinstance(msg, Flush):
                outbox.put(Flushed(msg.token))
            elif ex.error is None:
                ex.run(msg)
            if ex.error is not None and not reported:
                outbox.put(Failed(ex.error))
                reported = True


def _serve(
    tracking_uri: str, inbox: _Queue, outbox: _Queue, patience_s: float, backoff_s: float, parent: int, lock: str | None
) -> None:
    """The writer process's entry: its own client, orphaned once the `parent` process is gone;
    holding the sweep's `lock` (jepa_ray.tracking.writer_lock) until it ends."""
    if lock is not None:
        writer_lock.hold(lock, parent)
    _quiet_http(tracking_uri)

    def orphaned() -> bool:
        return os.getppid() != parent

    ex = _Executor(tracking_uri, store.client(tracking_uri), patience_s, backoff_s, orphaned=orphaned)
    # A failing write is said in one line (here and by the driver), not also with the traceback
    # MLflow's sqlite store logs for every database error.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    _dispatch(ex, inbox, outbox)


def _start_process(
    tracking_uri: str, maxsize: int, patience_s: float, backoff_s: float, lock: str | None
) -> tuple[_Queue, _Queue, _Worker]:
    """A writer process (spawned, not forked: the driver holds Ray's and Tune's threads). A spawned
    child runs the parent's main script again (as `__mp_main__`) when `__main__` has a `__file__`:
    for the writer, the sweep script, Ray Tune and the whole driver, seconds of CPU and hundreds of
    MB it never uses (its target and arguments name nothing in `__main__`), so it is hidden."""
    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(maxsize=maxsize), ctx.Queue()
    args = (tracking_uri, inbox, outbox, patience_s, backoff_s, os.getpid(), lock)
    worker = ctx.Process(target=_serve, args=args, daemon=True)
    main = sys.modules["__main__"]
    path = main.__dict__.pop("__file__", None)
    try:
        worker.start()
    finally:
        if path is not None:
            main.__file__ = path
    return inbox, outbox, worker


def _start_thread(ex: _Executor, maxsize: int) -> tuple[_Queue, _Queue, _Worker]:
    """A writer thread running `ex` in the caller's process (tests: a fake client)."""
    inbox, outbox = queue.Queue(maxsize=maxsize), queue.Queue()
    worker = threading.Thread(target=_dispatch, args=(ex, inbox, outbox), name="mlflow-writer", daemon=True)
    worker.start()
    return inbox, outbox, worker


class MlflowWriter:
    """Runs the sweep's MLflow writes in order, off the caller's thread: in a process of its own
    (`process=True`, the driver's) or a thread (`client` given: tests pass a fake one). `lazy`:
    nothing starts until the first write (an unpickled copy that is never written to never
    starts a process). `lock`: the sweep's lock file, held by a process writer until it ends, so
    that a resumed driver waits for a killed one's writer (jepa_ray.tracking.writer_lock)."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        maxsize: int = MAX_QUEUED,
        patience_s: float = PATIENCE_S,
        backoff_s: float = 0.5,
        client=None,
        process: bool | None = None,
        lazy: bool = False,
        lock: str | None = None,
    ):
        self.tracking_uri, self.patience_s, self.backoff_s = tracking_uri, patience_s, backoff_s
        self.lock = lock  # a process writer holds it for its life (jepa_ray.tracking.writer_lock)
        self.error: str | None = None
        self.process = client is None if process is None else process
        self._tokens = itertools.count()
        self._flushed: set[int] = set()
        self._maxsize, self._client = maxsize, client
        self._worker: _Worker | None = None
        self._closed = False
        if not lazy:
            self._start()

    def _start(self) -> None:
        if self.process:
            self.q, self._out, self._worker = _start_process(
                self.tracking_uri, self._maxsize, self.patience_s, self.backoff_s, self.lock
            )
        else:
            _quiet_http(self.tracking_uri)
            ex = _Executor(
                self.tracking_uri, self._client or store.client(self.tracking_uri), self.patience_s, self.backoff_s
            )
            self.q, self._out, self._worker = _start_thread(ex, self._maxsize)

    def __reduce__(self):
        # Tune pickles its callbacks with the experiment state (it unpickles them only to restore
        # an experiment, which the sweep never asks of it): a copy is a new writer with this
        # one's patience, which starts only if something is written to it.
        return (_unpickled_writer, (self.tracking_uri, self.patience_s, self.backoff_s))

    # What the callbacks call (cheap: they only queue) ---------------------------------------

    def send(self, op: Op) -> None:
        """Queue `op` (jepa_ray.tracking.ops) after everything queued before it (nothing once
        the writer failed: it would not be attempted)."""
        self._put(op)

    def create_run(self, ref: RunRef, exp_id: str, run_name: str, tags: dict[str, str]) -> RunRef:
        """Queue the creation of the run `ref` (a new RunRef, which later operations name)."""
        self.send(CreateRun(ref, exp_id, run_name, tags))
        return ref

    def log_metrics(self, ref: RunRef, metrics: dict[str, Any], step: int) -> None:
        """Numeric, finite metrics at `step` (as tracking.store.log_metrics), batched."""
        items = store.metric_entities(metrics, step)
        if items:
            self.send(LogBatch(ref, items))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call is written (or the writer failed);
        True when it all was."""
        if self._worker is None:
            return self.error is None  # never started: nothing was queued
        if self._poll() is not None or self._died():
            return False
        token = next(self._tokens)
        self._put(Flush(token))
        deadline = None if timeout is None else time.monotonic() + timeout
        while token not in self._flushed and self.error is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                self._take(self._out.get(timeout=0.2 if left is None else min(left, 0.2)))
            except queue.Empty:
                self._died()
        return token in self._flushed and self.error is None

    def check(self) -> None:
        """WriterFailed when the writer stopped on a failing write, or its process died."""
        if self._poll() is not None or self._died():
            raise WriterFailed(self.error)

    def _died(self) -> bool:
        """Whether the writer ended before it was closed (killed, or it crashed): then nothing
        more is written, which the sweep must hear as a failure (`error`), never pass over."""
        if self._worker is None or self._closed or self._worker.is_alive():
            return False
        if self.error is None:
            code = getattr(self._worker, "exitcode", None)
            self.error = "the MLflow writer process died" + (f" (exit code {code})" if code is not None else "")
        return True

    def close(self) -> None:
        """Flush and end the writer."""
        self.flush()
        self._closed = True
        if self._worker is not None and self._worker.is_alive():
            self.q.put(Stop())
            self._worker.join(timeout=30)

    @property
    def pending(self) -> int:
        """Messages queued and not yet taken by the writer (0 where the platform cannot count)."""
        if self._worker is None:
            return 0
        try:
            return self.q.qsize()
        except NotImplementedError:  # multiprocessing queues on some platforms
            return 0

    def _put(self, msg: Message) -> None:
        if self.error is None:
            if self._worker is None:
                self._start()
            self.q.put(msg)

    def _take(self, reply: Reply) -> None:
        if isinstance(reply, Flushed):
            self._flushed.add(reply.token)
        else:
            self.error = self.error or reply.error

    def _poll(self) -> str | None:
        """The writer's error, once every reply it sent so far is taken."""
        if self._worker is None:
            return self.error
        while True:
            try:
                self._take(self._out.get_nowait())
            except queue.Empty:
                return self.error


def _unpickled_writer(tracking_uri: str, patience_s: float, backoff_s: float) -> MlflowWriter:
    return MlflowWriter(tracking_uri, patience_s=patience_s, backoff_s=backoff_s, lazy=True)
