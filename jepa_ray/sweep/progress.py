"""What the driver says while a sweep runs: one log line per trial that ends (its objectives,
target vs measured l0, wall time, or why it did not finish, as the outcome ledger says), and the
sweep's hypervolume after each ended trial, logged to the parent run as a curve over compute
spent (`sweep/hypervolume` at step = trial-epochs so far, reference point by
contract.reference_point as in the Pareto export; `sweep/trial_epochs` at step = trials
ended)."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from ray.tune import Callback

from jepa_ray.contract import L0_DENSITY, TARGET_L0_DENSITY, reference_point
from jepa_ray.outcome import Ledger, Outcome, TrialEnd, trial_error_text
from jepa_ray.pareto import hypervolume
from jepa_ray.sweep.failures import EpochBudget
from jepa_ray.tracking.writer import MlflowWriter, RunRef
from jepa_ray.trial_spec import TrialSpec

logger = logging.getLogger("jepa_ray.sweep")
SUMMARY_EVERY_S = 60.0
STOP_COLUMN = "stop"
"""The key of a trial's last result that Tune's progress table shows as why it ended."""


def sweep_hypervolume(points: list[tuple[float, ...]], objectives) -> float:
    """The hypervolume of the finished trials' objective values, at contract.reference_point."""
    if not points:
        return 0.0
    values = np.array(points, dtype=float)
    ref = [reference_point(o.name, o.direction, values[:, j]) for j, o in enumerate(objectives)]
    return hypervolume(values, [o.direction for o in objectives], ref)


def describe_end(number, end: TrialEnd, objectives, took: float) -> str:
    """The progress log's line for a trial that ended."""
    if end.outcome is Outcome.FINISHED:
        shown = ", ".join(f"{o.name} {end.result.get(o.name, math.nan):.4g}" for o in objectives)
        return (
            f"trial {number} finished: {shown}; l0 {end.result.get(L0_DENSITY, math.nan):.3f} for a target of "
            f"{end.result.get(TARGET_L0_DENSITY, math.nan):.3f} ({took:.0f} s)"
        )
    if end.outcome is Outcome.STOPPED:
        return f"trial {number} stopped at {end.reason} ({took:.0f} s)"
    return f"trial {number} {end.outcome.value}: {end.reason} ({took:.0f} s)"


class Progress(Callback):
    """A Tune callback (driver process) for the lines and the hypervolume curve; a resumed sweep
    passes the final points it already had, and `epochs` counts the trial-epochs (those before
    included: the sweep's one count, also its budget's). Every `every_s` seconds (and at each
    trial's end) a one-line summary: trials running / finished / stopped / failed, trial-epochs
    spent of `total_epochs` (the budget, else every trial to its end), the hypervolume so far and
    an ETA."""

    def __init__(
        self,
        parent_id: str,
        objectives,
        ledger: Ledger,
        epochs: EpochBudget,
        *,
        points_before: list[tuple[float, ...]] | None = None,
        total_epochs: int = 0,
        total_trials: int = 0,
        every_s: float = SUMMARY_EVERY_S,
        writer: MlflowWriter,
    ):
        self.parent, self.objectives, self.ledger, self.epochs = RunRef(parent_id), objectives, ledger, epochs
        self.total_epochs, self.total_trials, self.every_s, self.writer = total_epochs, total_trials, every_s, writer
        self.points: list[tuple[float, ...]] = list(points_before or [])
        self.ended = 0
        self.started: dict[str, float] = {}
        self.t0 = time.time()
        self.last_summary = self.t0
        self.running = 0

    def on_step_end(self, iteration, trials, **info):
        self.writer.check()  # a writer that stopped on a failing store stops the sweep promptly
        self.running = sum(t.status == "RUNNING" for t in trials)
        if time.time() - self.last_summary >= self.every_s:
            logger.info(self.summary())

    def summary(self) -> str:
        """running / finished / stopped / failed, trial-epochs of the budget, hypervolume, ETA."""
        self.last_summary = time.time()
        spent, budget = self.epochs.spent, self.total_epochs
        done_now = spent - self.epochs.spent_before
        elapsed = time.time() - self.t0
        eta = ""
        if budget and done_now and spent < budget:
            eta = f", about {(budget - spent) * elapsed / done_now / 60:.0f} min left"
        counts = ", ".join(
            f"{self.ledger.count(o)} {o.value}" for o in Outcome if self.ledger.count(o) or o is Outcome.FINISHED
        )
        of_trials = f" of {self.total_trials}" if self.total_trials else ""
        of_budget = f" of {budget}" if budget else ""
        return (
            f"[{len(self.ledger.ends)}{of_trials} trials ended: {counts}; {self.running} running; "
            f"{spent}{of_budget} trial-epochs; hypervolume {self.hypervolume:.4f}{eta}]"
        )

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, time.time())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.epochs.add(trial.trial_id, result)  # the stopper may have counted it already: idempotent

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, self.ledger.end(trial.trial_id, trial.last_result))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, self.ledger.end(trial.trial_id, trial.last_result, error=trial_error_text(trial)))

    def _ended(self, trial, end: TrialEnd) -> None:
        self.ended += 1
        number = TrialSpec.from_config(trial.config).number
        number = trial.trial_id if number is None else number
        took = time.time() - self.started.pop(trial.trial_id, time.time())
        if trial.last_result is not None:  # the progress table's "stop" column reads it
            trial.last_result[STOP_COLUMN] = end.label
        logger.info(describe_end(number, end, self.objectives, took))
        if end.outcome is Outcome.FINISHED:
            self.points.append(tuple(float(end.result[o.name]) for o in self.objectives))
        spent = self.epochs.spent
        self.writer.log_metrics(self.parent, {"sweep/hypervolume": self.hypervolume}, step=spent)
        self.writer.log_metrics(self.parent, {"sweep/trial_epochs": spent}, step=self.ended)
        if time.time() - self.last_summary >= self.every_s / 4:
            logger.info(self.summary())

    @property
    def hypervolume(self) -> float:
        return sweep_hypervolume(self.points, self.objectives)
