"""When a sweep stops early: after too many failed trials (trials the collapse guard or a
scheduler stopped do not count: they say the hyperparameters are bad, not that the sweep fails),
once its compute budget in trial-epochs is spent (both read the outcome ledger), on SIGTERM,
when MLflow stops taking its writes, or when a disk it writes is full (a trial's checkpoint,
the MLflow or Optuna store: `StorageFull`, stopped as on Ctrl-C, so that --resume goes on once
space is freed)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import TYPE_CHECKING

from ray.tune import Stopper

from jepa_ray.cluster import sqlite_path
from jepa_ray.errors import StorageFull, causes, storage_full
from jepa_ray.outcome import Ledger, Outcome, epochs_of

if TYPE_CHECKING:  # an annotation: the plan is read, never built here
    from jepa_ray.sweep.planning import SweepPlan


class FailureLimit:
    """Says when the ledger's failed trials reach the limit (0: never); collapsed and stopped
    trials are other outcomes, so they never count."""

    def __init__(self, limit: int, ledger: Ledger | None = None):
        self.limit = limit
        self.ledger = ledger if ledger is not None else Ledger()

    @property
    def failed(self) -> int:
        return self.ledger.count(Outcome.FAILED)

    @property
    def reasons(self) -> list[str]:
        return [e.reason for e in self.ledger.ends.values() if e.outcome is Outcome.FAILED]

    @property
    def reached(self) -> bool:
        return self.limit > 0 and self.failed >= self.limit


class EpochBudget:
    """Counts the epochs every trial trained (each trial's furthest epoch) against a budget."""

    def __init__(self, budget: int = 0, spent_before: int = 0):
        self.budget, self.spent_before = budget, spent_before
        self.epochs: dict[str, int] = {}

    def add(self, trial_id: str, result: dict) -> None:
        """Count a result (again: idempotent, so the stopper and the progress callback may both)."""
        self.epochs[trial_id] = max(self.epochs.get(trial_id, 0), epochs_of(result))

    @property
    def spent(self) -> int:
        return self.spent_before + sum(self.epochs.values())

    @property
    def reached(self) -> bool:
        return self.budget > 0 and self.spent >= self.budget


def stop_reason(
    limit: FailureLimit, budget: EpochBudget, full: StorageFull | None = None, tracking: str | None = None
) -> str:
    """Why trials the sweep cut short did not end (the ledger's UNFINISHED reason): a full disk,
    MLflow that stopped taking writes (`tracking`, the writer's error), the failure limit, the
    budget, else the sweep's own end (Ctrl-C, the search's last trial)."""
    if full is not None:
        return f"stopped before its end: {full}"
    if tracking is not None:
        return f"stopped before its end: {tracking}"
    if limit.reached:
        return f"stopped before its end: the sweep stopped after {limit.failed} failed trials"
    if budget.reached:
        return f"stopped before its end: the sweep's budget of {budget.budget} trial-epochs was spent"
    return "stopped before its end: the sweep ended first"


class StopOnFailuresOrBudget(Stopper):
    """Stop every trial when the failure limit or the compute budget is reached, or once the
    sweep met a full disk (and tell the ledger why, so that the trials Tune stops then end
    unfinished with that reason)."""

    def __init__(self, limit: FailureLimit, budget: EpochBudget, ledger: Ledger):
        self.limit, self.budget, self.ledger = limit, budget, ledger

    def __call__(self, trial_id, result):
        self.budget.add(trial_id, result)
        return False

    def stop_all(self):
        full = self.ledger.storage_full
        stop = full is not None or self.limit.reached or self.budget.reached
        if stop:
            self.ledger.close_reason(stop_reason(self.limit, self.budget, full))
        return stop


class TrackingFailed(RuntimeError):
    """MLflow stopped taking the sweep's writes (the message is one line)."""


def full_disk(err: BaseException, sweep: SweepPlan) -> StorageFull | None:
    """The full disk behind `err` (None when it is another error), named by what was writing:
    the Optuna study's database for an Optuna error, the MLflow store for an MLflow one, else
    the file the error names or the sweep's storage path (Tune's own state, a checkpoint)."""
    raisers = _packages(err)
    where = sweep.storage
    if "optuna" in raisers:
        where = str(sqlite_path(sweep.storage_url) or sweep.storage_url)
    elif "mlflow" in raisers:
        where = str(sqlite_path(sweep.opts.tracking_uri) or sweep.opts.tracking_uri)
    return storage_full(err, where)


def _packages(err: BaseException) -> set[str]:
    """The top-level packages whose code raised `err` or what caused it: the errors' own and
    every frame of their tracebacks (a database error raised by SQLAlchemy inside Optuna)."""
    names = set()
    for cause in causes(err):
        names.add(type(cause).__module__.split(".")[0])
        tb = cause.__traceback__
        while tb is not None:
            names.add(str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0])
            tb = tb.tb_next
    return names


@contextlib.contextmanager
def sigterm_as_interrupt(on_signal=lambda: None):
    """SIGTERM ends the sweep as Ctrl-C does (Tune stops its trials, the ledger closes them, the
    MLflow writer flushes) instead of killing the driver with writes queued."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def interrupt(signum, frame):
        got.append(signum)
        on_signal()
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield got
    finally:
        signal.signal(signal.SIGTERM, previous)
