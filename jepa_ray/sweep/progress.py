"""What the driver says while a sweep runs: one log line per trial that ends (its objectives,
target vs measured l0, wall time, or why it stopped), and the sweep's hypervolume after each
finished or stopped trial, logged to the parent run as a curve over compute spent
(`sweep/hypervolume` at step = trial-epochs so far; `sweep/trial_epochs` at step = trials ended)."""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from jepa_ray.contract import RESULT_FAILURE, failure_kind, is_final
from jepa_ray.errors import one_line

logger = logging.getLogger("jepa_ray.sweep")
STOP_COLUMN = "stop"
"""The key of a trial's last result that Tune's progress table shows as why it ended."""


def stop_reason(trial_id: str, result: dict, stopped: dict[str, str]) -> str:
    """Why a trial ended, in a few words: 'finished', 'collapsed', 'failed', or its rung."""
    if trial_id in stopped:
        return stopped[trial_id].split(":")[0]
    kind = failure_kind(result)
    if kind is not None:
        return kind.value
    return "finished" if is_final(result) else "ended early"


def make_progress_callback(
    tracking_uri: str,
    parent_id: str,
    objectives,
    stopped: dict[str, str],
    reference: dict[str, float] | None = None,
    epochs_before: int = 0,
    points_before: list[tuple[float, ...]] | None = None,
):
    """A Tune callback (driver process) for the lines and the hypervolume curve. `reference`:
    the fixed reference point (default: 0 for a maximized metric, 1 for a minimized one, the
    Pareto export's default for accuracies and densities); a resumed sweep passes the
    trial-epochs and final points it already had."""
    from ray.tune import Callback

    from jepa_ray import tracking
    from jepa_ray.pareto import hypervolume

    ref = tuple((reference or {}).get(o.name, 0.0 if o.direction == "max" else 1.0) for o in objectives)
    directions = [o.direction for o in objectives]

    class Progress(Callback):
        def __init__(self):
            self.epochs: dict[str, int] = {}  # tune trial id -> epochs it trained
            self.points: list[tuple[float, ...]] = list(points_before or [])
            self.ended = 0
            self.started: dict[str, float] = {}
            self.c = tracking.client(tracking_uri)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started.setdefault(trial.trial_id, time.time())

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "epoch" in result:
                self.epochs[trial.trial_id] = max(self.epochs.get(trial.trial_id, 0), int(result["epoch"]) + 1)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._ended(trial, trial.last_result or {})

        def on_trial_error(self, iteration, trials, trial, **info):
            self._ended(trial, {RESULT_FAILURE: tracking.trial_error_text(trial)})

        def _ended(self, trial, result: dict) -> None:
            self.ended += 1
            number = trial.config.get("optuna_trial", trial.trial_id)
            took = time.time() - self.started.get(trial.trial_id, time.time())
            kind = failure_kind(result)
            if trial.last_result is not None:  # the progress table's "stop" column reads it
                trial.last_result[STOP_COLUMN] = stop_reason(trial.trial_id, result, stopped)
            if trial.trial_id in stopped:
                logger.info("trial %s stopped at %s (%.0f s)", number, stopped[trial.trial_id], took)
            elif kind is not None:
                logger.info("trial %s %s: %s (%.0f s)", number, kind.value, one_line(result[RESULT_FAILURE]), took)
            elif is_final(result):
                values = tuple(result.get(o.name, math.nan) for o in objectives)
                shown = ", ".join(f"{o.name} {v:.4g}" for o, v in zip(objectives, values))
                logger.info(
                    "trial %s finished: %s; l0 %.3f for a target of %.3f (%.0f s)",
                    number,
                    shown,
                    result.get("l0_density", math.nan),
                    result.get("target_l0_density", math.nan),
                    took,
                )
                if all(math.isfinite(v) for v in values):
                    self.points.append(values)
            spent = epochs_before + sum(self.epochs.values())
            hv = hypervolume(np.array(self.points), directions, ref) if self.points else 0.0
            tracking.log_metrics(self.c, parent_id, {"sweep/hypervolume": hv}, step=spent)
            tracking.log_metrics(self.c, parent_id, {"sweep/trial_epochs": spent}, step=self.ended)

    return Progress()
