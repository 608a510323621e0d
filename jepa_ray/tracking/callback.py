"""MLflow, written by the sweep driver only (docs/design.md layout): one parent run per sweep, one
nested child per trial with the flattened resolved config as params, per-epoch metrics at
step = epoch, the final metrics, the checkpoint tag and the artifacts.

Trials never open the tracking store: they report to the driver through Ray Tune, and the
`MlflowSweepCallback` (a Tune callback, so it runs in the driver process) writes everything.
That keeps a sqlite store safe with many concurrent trials and means workers on other nodes
never need the sqlite file or the tracking server.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from ray.tune import Callback

from jepa_ray import config as config_lib
from jepa_ray.contract import (
    CHECKPOINT,
    CHECKPOINT_URI,
    DATA_SIZES,
    EPOCH,
    FAILURE,
    FAILURE_KIND,
    LAST_CHECKPOINT,
    OPTUNA_TRIAL,
    PARAMS_KEY,
    PARENT,
    RESULT_KEYS,
    ROLE,
    ROLE_TRIAL,
    STOPPED,
    TARGET_L0_DENSITY,
    TRIAL_DIR,
    TRIAL_ID,
    TRIAL_KEY,
    WALL_S,
    FailureKind,
    failure_kind,
)
from jepa_ray.outcome import Ledger, Outcome, TrialEnd, trial_error_text
from jepa_ray.tracking import ops
from jepa_ray.tracking.epochs import EpochLog, ReusedRun
from jepa_ray.tracking.store import source_tags
from jepa_ray.tracking.writer import MlflowWriter, RunRef
from jepa_ray.train import checkpoint as ckpt_lib
from jepa_ray.trial_spec import TrialSpec

if TYPE_CHECKING:
    from jepa_ray.config import TrialConfig

logger = logging.getLogger(__name__)

# Bookkeeping Tune adds to every result: not trial metrics.
_TUNE_KEYS = frozenset(
    {
        "training_iteration",
        "time_this_iter_s",
        "time_total_s",
        "timestamp",
        "pid",
        "time_since_restore",
        "iterations_since_restore",
        "done",
        "config",
        "trial_id",
        EPOCH,
        *RESULT_KEYS,
    }
)


class MlflowSweepCallback(Callback):
    """Tune callback that mirrors every trial into MLflow. It decides what to write on Tune's
    event loop and leaves the writing to `writer` (jepa_ray.tracking.writer)."""

    def __init__(
        self,
        tracking_uri: str,
        exp_id: str,
        parent_run_id: str,
        resolve_trial: Callable[[TrialSpec], TrialConfig],
        reuse_runs: dict[str, list[ReusedRun]] | None = None,
        trial_dir: Callable[[TrialSpec], str] | None = None,
        ledger: Ledger | None = None,
        *,
        writer: MlflowWriter,
    ):
        self.tracking_uri, self.exp_id, self.parent = tracking_uri, exp_id, parent_run_id
        self.ledger = ledger if ledger is not None else Ledger()  # how each trial ended
        self.resolve_trial, self.trial_dir = resolve_trial, trial_dir
        self.reuse_runs = {k: list(v) for k, v in (reuse_runs or {}).items()}  # trial key -> runs to reuse
        self.runs: dict[str, RunRef] = {}  # tune trial id -> its mlflow run
        self.logs: dict[str, EpochLog] = {}  # tune trial id -> its epochs not yet written
        self.started: dict[str, float] = {}
        self.with_dataset: set[str] = set()  # tune trial ids whose run has its dataset input
        self.source = source_tags()
        self.w = writer  # the driver's one writer process (none started here)

    # Tune callback hooks -------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info):
        self.w.check()
        if trial.trial_id in self.runs:
            return
        spec = TrialSpec.from_config(trial.config)
        cfg = self.resolve_trial(spec)
        key = spec.trial_key
        tags = {
            ROLE: ROLE_TRIAL,
            PARENT: self.parent,
            TRIAL_ID: trial.trial_id,
            PARAMS_KEY: spec.params_key,
            TRIAL_KEY: key,
            OPTUNA_TRIAL: "" if spec.number is None else str(spec.number),
            **self.source,
        }
        if self.trial_dir is not None:
            tags[TRIAL_DIR] = self.trial_dir(spec)
        reused = self.reuse_runs.get(key, []).pop(0) if self.reuse_runs.get(key) else None
        committed = -1
        if reused:
            ref, committed = RunRef(reused.run_id), reused.committed
            kept = {k: v for k, v in tags.items() if k != TRIAL_DIR}  # keep pointing at the store it resumes from
            self.w.send(ops.Reopen(ref, reused.failure_tags, kept))
        else:
            ref = self.w.create_run(
                RunRef(), self.exp_id, f"trial-{trial.trial_id if spec.number is None else spec.number}", tags
            )
            self.w.send(ops.LogParams(ref, config_lib.flatten(cfg)))
            self.w.send(ops.LogConfig(ref, config_lib.to_dict(cfg)))
        self.runs[trial.trial_id] = ref
        self.logs[trial.trial_id] = EpochLog(committed)
        self.started[trial.trial_id] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.w.check()
        ref = self.runs.get(trial.trial_id)
        if ref is None or failure_kind(result) is not None or EPOCH not in result:
            return
        if trial.trial_id not in self.with_dataset and all(k in result for k in DATA_SIZES):
            self.with_dataset.add(trial.trial_id)
            data = self.resolve_trial(TrialSpec.from_config(trial.config)).data
            self.w.send(ops.DatasetInput(ref, data, *(result[k] for k in DATA_SIZES)))
        log = self.logs[trial.trial_id]
        # The final result carries the last epoch's metrics and the final metrics together.
        epoch = int(result[EPOCH])
        log.add(epoch, {k: v for k, v in result.items() if k not in _TUNE_KEYS})
        uri = result.get(CHECKPOINT_URI)
        if uri:
            self.w.send(ops.SetTags(ref, {LAST_CHECKPOINT: uri}))
            self._write_epochs(ref, log.commit(epoch, lambda: ckpt_lib.read_history(uri)))

    def _write_epochs(self, ref: RunRef, epochs: list[tuple[int, dict]]) -> None:
        for epoch, metrics in epochs:
            self.w.log_metrics(ref, {k: v for k, v in metrics.items() if k not in DATA_SIZES}, step=epoch)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.write_end(trial.trial_id, self.ledger.end(trial.trial_id, trial.last_result))
        self.w.check()

    def on_trial_error(self, iteration, trials, trial, **info):
        end = self.ledger.end(trial.trial_id, trial.last_result, error=trial_error_text(trial))
        self.write_end(trial.trial_id, end)
        self.w.check()

    def write_end(self, trial_id: str, end: TrialEnd) -> None:
        """The run of a trial that ended, as the ledger classified its end: FINISHED with its
        checkpoint and artifacts, KILLED with why a scheduler stopped it, or FAILED with why."""
        ref = self.runs.pop(trial_id, None)
        if ref is None:
            return
        self._write_epochs(ref, self.logs.pop(trial_id).flush())
        started = self.started.pop(trial_id, time.time())
        self.with_dataset.discard(trial_id)
        tags: dict[str, str] = {}
        uri = None
        if end.outcome is Outcome.FINISHED:
            uri = end.result.get(CHECKPOINT_URI)
            if uri:
                tags[CHECKPOINT] = uri
            tags[WALL_S] = f"{time.time() - started:.1f}"
        elif end.outcome is Outcome.STOPPED:
            tags.update({STOPPED: end.reason, FAILURE_KIND: FailureKind.STOPPED.value})
        else:
            tags.update({FAILURE: end.reason, FAILURE_KIND: end.failure_kind.value})
        self.w.send(ops.Finish(ref, tags, uri, end.result.get(TARGET_L0_DENSITY), end.mlflow_status))

    def run_id(self, trial_id: str) -> str | None:
        """The MLflow run of a running trial, once the writer created it."""
        ref = self.runs.get(trial_id)
        return ref.run_id if ref is not None else None
