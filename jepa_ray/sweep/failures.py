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

    def record(self, why: str, kind: FailureKind = FailureKind.FAILED) -> None:
        if kind in (FailureKind.COLLAPSED, FailureKind.STOPPED):
            self.collapsed += kind is FailureKind.COLLAPSED
            return
        self.failed += 1
        self.reasons.append(why)

    @property
    def reached(self) -> bool:
        return self.limit > 0 and self.failed >= self.limit


def make_failure_callback(limit: FailureLimit):
    from ray.tune import Callback

    from jepa_ray.tracking import trial_error_text

    class FailureCounter(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            kind = failure_kind(result)
            if kind is not None:
                limit.record(one_line(result[RESULT_FAILURE]), kind)
            elif is_final(result):
                limit.finished += 1

        def on_trial_error(self, iteration, trials, trial, **info):
            limit.record(one_line(trial_error_text(trial)))

    return FailureCounter()


def make_stopper(limit: FailureLimit):
    from ray.tune import Stopper

    class StopOnFailures(Stopper):
        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return limit.reached

    return StopOnFailures()
