"""When a sweep stops early: after too many failed trials (trials the collapse guard or a
scheduler stopped do not count: they say the hyperparameters are bad, not that the sweep fails),
once its compute budget in trial-epochs is spent (both read the outcome ledger), on SIGTERM, or
when MLflow stops taking its writes."""

from __future__ import annotations

import contextlib
import signal
import threading

from jepa_ray.outcome import Ledger, Outcome, epochs_of


class FailureLimit:
    """Counts the ledger's trial ends and says when failed ones reach the limit (0: never)."""

    def __init__(self, limit: int, ledger: Ledger | None = None):
        self.limit = limit
        self.ledger = ledger if ledger is not None else Ledger()

    def _count(self, outcome: Outcome) -> int:
        return self.ledger.count(outcome)

    @property
    def failed(self) -> int:
        return self._count(Outcome.FAILED)

    @property
    def collapsed(self) -> int:
        return self._count(Outcome.COLLAPSED)

    @property
    def stopped(self) -> int:
        """Stopped by a scheduler (at a rung)."""
        return self._count(Outcome.STOPPED)

    @property
    def finished(self) -> int:
        return self._count(Outcome.FINISHED)

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


def stop_reason(limit: FailureLimit, budget: EpochBudget) -> str:
    """Why trials the sweep cut short did not end (the ledger's UNFINISHED reason)."""
    if limit.reached:
        return f"stopped before its end: the sweep stopped after {limit.failed} failed trials"
    if budget.reached:
        return f"stopped before its end: the sweep's budget of {budget.budget} trial-epochs was spent"
    return "stopped before its end: the sweep ended first"


def make_stopper(limit: FailureLimit, budget: EpochBudget | None = None, ledger: Ledger | None = None):
    """Stop every trial when the failure limit or the compute budget is reached (and tell the
    ledger why, so that the trials Tune stops then end unfinished with that reason)."""
    from ray.tune import Stopper

    class StopOnFailuresOrBudget(Stopper):
        def __call__(self, trial_id, result):
            if budget is not None:
                budget.add(trial_id, result)
            return False

        def stop_all(self):
            stop = limit.reached or (budget is not None and budget.reached)
            if stop and ledger is not None:
                ledger.close_reason(stop_reason(limit, budget or EpochBudget()))
            return stop

    return StopOnFailuresOrBudget()


class TrackingFailed(RuntimeError):
    """MLflow stopped taking the sweep's writes (the message is one line)."""


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
