"""Counting failed trials, and stopping a sweep that keeps failing. Trials the collapse guard
stopped are counted apart: they say the hyperparameters are bad, not that the sweep fails."""

from __future__ import annotations

from jepa_ray.contract import RESULT_FAILURE, FailureKind, failure_kind, is_final
from jepa_ray.errors import one_line


class FailureLimit:
    """Counts failed trials (errors and reported failures) and stops the sweep at a limit.
    Trials the collapse guard stopped are counted apart: they say the hyperparameters are bad,
    not that the sweep keeps failing."""

    def __init__(self, limit: int):
        self.limit, self.failed, self.reasons, self.collapsed, self.finished = limit, 0, [], 0, 0
        self.stopped = 0  # by a scheduler, at a rung

    def record(self, why: str, kind: FailureKind = FailureKind.FAILED) -> None:
        if kind in (FailureKind.COLLAPSED, FailureKind.STOPPED):
            self.collapsed += kind is FailureKind.COLLAPSED
            self.stopped += kind is FailureKind.STOPPED
            return
        self.failed += 1
        self.reasons.append(why)

    @property
    def reached(self) -> bool:
        return self.limit > 0 and self.failed >= self.limit


def make_failure_callback(limit: FailureLimit, stopped: dict[str, str] | None = None):
    """A Tune callback that counts every trial's end into `limit` (`stopped`: the scheduler's
    ledger of trials it stopped at a rung)."""
    stopped = {} if stopped is None else stopped

    from ray.tune import Callback

    from jepa_ray.tracking import trial_error_text

    class FailureCounter(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            kind = failure_kind(result)
            if kind is not None:
                limit.record(one_line(result[RESULT_FAILURE]), kind)
            elif trial.trial_id in stopped:
                limit.record(stopped[trial.trial_id], FailureKind.STOPPED)
            elif is_final(result):
                limit.finished += 1

        def on_trial_error(self, iteration, trials, trial, **info):
            limit.record(one_line(trial_error_text(trial)))

    return FailureCounter()


class EpochBudget:
    """Counts the epochs every trial trained (each trial's furthest epoch) against a budget."""

    def __init__(self, budget: int = 0, spent_before: int = 0):
        self.budget, self.spent_before = budget, spent_before
        self.epochs: dict[str, int] = {}

    def add(self, trial_id: str, result: dict) -> None:
        if "epoch" in result:
            self.epochs[trial_id] = max(self.epochs.get(trial_id, 0), int(result["epoch"]) + 1)

    @property
    def spent(self) -> int:
        return self.spent_before + sum(self.epochs.values())

    @property
    def reached(self) -> bool:
        return self.budget > 0 and self.spent >= self.budget


def make_stopper(limit: FailureLimit, budget: EpochBudget | None = None):
    """Stop every trial when the failure limit or the compute budget is reached."""
    from ray.tune import Stopper

    class StopOnFailuresOrBudget(Stopper):
        def __call__(self, trial_id, result):
            if budget is not None:
                budget.add(trial_id, result)
            return False

        def stop_all(self):
            return limit.reached or (budget is not None and budget.reached)

    return StopOnFailuresOrBudget()
