"""MLflow writes off Tune's event loop. The sweep's callbacks run inside Tune's controller loop,
which also schedules trials, saves its experiment state and talks to the searcher: a
synchronous MLflow call there (a trial's final metrics, params, plots, artifacts: 0.5-0.9 s at a
trial's end on a small CPU) stalls every trial's next result. Here the callbacks only queue
operations; one thread writes them, in order, merging consecutive metric writes to one run into
`log_batch` calls. The queue is bounded (a driver that outruns MLflow slows down instead of
growing without limit), `flush()` waits for everything queued, and a write that keeps failing
(a tracking server gone) stops the writer with `error` set (nothing after it is attempted), so
that the driver stops the sweep with one line and `--resume` records what MLflow missed from the
trials' stores."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jepa_ray.errors import one_line

MAX_QUEUED = 20_000
BATCH_METRICS = 1000
"""MLflow's log_batch limit on metrics per call."""


class RunRef:
    """A run the writer creates (its id set by the writer's thread) or one that exists."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"RunRef({self.run_id})"


@dataclass
class _Op:
    call: Callable[[Any], None] | None = None
    ref: RunRef | None = None
    metrics: list = field(default_factory=list)
    done: threading.Event | None = None


class WriterFailed(RuntimeError):
    """MLflow kept refusing the writer's writes; the message is one line."""


class MlflowWriter:
    def __init__(
        self,
        tracking_uri: str,
        *,
        maxsize: int = MAX_QUEUED,
        retries: int = 3,
        backoff_s: float = 0.5,
        client=None,
    ):
        from jepa_ray.tracking.store import client as make_client

        if tracking_uri.startswith("http"):
            # MLflow's own HTTP retries (7, backing off for minutes) would hide a server that went
            # away behind this writer's: one short try per attempt here.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        self.tracking_uri = tracking_uri
        self.c = client if client is not None else make_client(tracking_uri)
        self.retries, self.backoff_s = retries, backoff_s
        self.q: queue.Queue[_Op] = queue.Queue(maxsize=maxsize)
        self.error: str | None = None
        self.written = 0
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._run, name="mlflow-writer", daemon=True)
        self._thread.start()

    def __reduce__(self):
        # Tune pickles its callbacks with the experiment state: a copy is a new, empty writer.
        return (MlflowWriter, (self.tracking_uri,), {"retries": self.retries, "backoff_s": self.backoff_s})

    def __setstate__(self, state: dict) -> None:
        self.retries, self.backoff_s = state["retries"], state["backoff_s"]

    # What the callbacks call (cheap: they only queue) ---------------------------------------

    def call(self, fn: Callable[[Any], None]) -> None:
        """Run fn(client) on the writer's thread, after everything queued before it."""
        self._put(_Op(call=fn))

    def log_metrics(self, ref: RunRef, metrics: dict[str, Any], step: int) -> None:
        """Numeric, finite metrics at `step` (as tracking.store.log_metrics), batched."""
        from jepa_ray.tracking.store import metric_entities

        items = metric_entities(metrics, step)
        if items:
            self._put(_Op(ref=ref, metrics=items))

    def create_run(self, ref: RunRef, exp_id: str, run_name: str, tags: dict[str, str]) -> RunRef:
        def create(c) -> None:
            ref.run_id = c.create_run(exp_id, run_name=run_name, tags=tags).info.run_id

        self.call(create)
        return ref

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call is written (or the writer failed);
        True when it all was."""
        if self.error is not None or not self._thread.is_alive():
            return False
        done = threading.Event()
        self._put(_Op(done=done))
        done.wait(timeout)
        return done.is_set() and self.error is None

    def check(self) -> None:
        """WriterFailed when the writer stopped on a failing write."""
        if self.error is not None:
            raise WriterFailed(self.error)

    @property
    def pending(self) -> int:
        return self.q.qsize()

    def _put(self, op: _Op) -> None:
        if self.error is None:
            self.q.put(op)
        elif op.done is not None:
            op.done.set()

    # The writer's thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            ops = [self.q.get()]
            while len(ops) < 256:
                try:
                    ops.append(self.q.get_nowait())
                except queue.Empty:
                    break
            start = time.perf_counter()
            for batch in _merge(ops):
                if self.error is None:
                    self._write(batch)
                if batch.done is not None:
                    batch.done.set()
            self.busy_s += time.perf_counter() - start

    def _write(self, op: _Op) -> None:
        for attempt in range(self.retries + 1):
            try:
                if op.call is not None:
                    op.call(self.c)
                else:
                    for i in range(0, len(op.metrics), BATCH_METRICS):
                        self.c.log_batch(op.ref.run_id, metrics=op.metrics[i : i + BATCH_METRICS])
                self.written += 1
                return
            except Exception as err:  # noqa: BLE001 - MLflow, HTTP and database errors alike
                if attempt == self.retries:
                    self.error = (
                        f"MLflow at {self.tracking_uri} refused writes {self.retries + 1} times over "
                        f"{self.backoff_s * (2**self.retries - 1):.0f} s: {one_line(err, 300)}"
                    )
                    return
                time.sleep(self.backoff_s * 2**attempt)


def _merge(ops: list[_Op]) -> list[_Op]:
    """Consecutive metric writes to one run become one write (order kept)."""
    out: list[_Op] = []
    for op in ops:
        last = out[-1] if out else None
        if op.metrics and last is not None and last.metrics and last.ref is op.ref and last.done is None:
            last.metrics = last.metrics + op.metrics
        else:
            out.append(_Op(op.call, op.ref, list(op.metrics), op.done))
    return out
