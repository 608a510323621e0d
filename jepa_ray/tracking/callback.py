"""MLflow, written by the sweep driver only (docs/design.md layout): one parent run per sweep, one
nested child per trial with the flattened resolved config as params, per-epoch metrics at
step = epoch, the final metrics, the checkpoint tag and the artifacts.

Trials never open the tracking store: they report to the driver through Ray Tune, and the
`MlflowSweepCallback` (a Tune callback, so it runs in the driver process) writes everything.
That keeps a sqlite store safe with many concurrent trials and means workers on other nodes
never need the sqlite file or the tracking server.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from jepa_ray import config as config_lib
from jepa_ray.contract import (
    CHECKPOINT,
    CHECKPOINT_URI,
    DATA_SIZES,
    EPOCH,
    EPOCH_PROBE_METRIC,
    FAILURE,
    FAILURE_KIND,
    LAST_CHECKPOINT,
    OPTUNA_TRIAL,
    PARAMS_KEY,
    PARENT,
    RESULT_KEYS,
    RESUMED,
    ROLE,
    ROLE_TRIAL,
    STOPPED,
    TARGET_L0_DENSITY,
    TRIAL_DIR,
    TRIAL_ID,
    WALL_S,
    FailureKind,
    failure_kind,
)
from jepa_ray.outcome import Ledger, Outcome, TrialEnd, trial_error_text
from jepa_ray.tracking.epochs import EpochLog
from jepa_ray.tracking.plots import activation_plot
from jepa_ray.tracking.store import client, log_dataset_input, log_metrics, log_params, source_tags
from jepa_ray.train import checkpoint as ckpt_lib

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


class MlflowSweepCallback:
    """Tune callback that mirrors every trial into MLflow (built lazily as a ray.tune.Callback
    subclass by `make_callback` so this module imports without Ray)."""

    def __init__(
        self,
        tracking_uri: str,
        exp_id: str,
        parent_run_id: str,
        resolve_trial: Callable[[dict], TrialConfig],
        reuse_runs: dict[str, str] | None = None,
        trial_dir: Callable[[dict], str] | None = None,
        ledger: Ledger | None = None,
    ):
        self.tracking_uri, self.exp_id, self.parent = tracking_uri, exp_id, parent_run_id
        self.ledger = ledger if ledger is not None else Ledger()  # how each trial ended
        self.resolve_trial, self.trial_dir = resolve_trial, trial_dir
        self.reuse_runs = dict(reuse_runs or {})  # params key -> run id of an interrupted trial
        self.runs: dict[str, str] = {}  # tune trial id -> mlflow run id
        self.logs: dict[str, EpochLog] = {}  # tune trial id -> its epochs not yet written
        self.started: dict[str, float] = {}
        self.with_dataset: set[str] = set()  # tune trial ids whose run has its dataset input
        self.source = source_tags()
        self.c = client(tracking_uri)

    # Tune callback hooks -------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.runs:
            return
        cfg = self.resolve_trial(trial.config)
        key = trial.config.get("params_key", "")
        tags = {
            ROLE: ROLE_TRIAL,
            PARENT: self.parent,
            TRIAL_ID: trial.trial_id,
            PARAMS_KEY: key,
            OPTUNA_TRIAL: str(trial.config.get("optuna_trial", "")),
            **self.source,
        }
        if self.trial_dir is not None:
            tags[TRIAL_DIR] = self.trial_dir(trial.config)
        reused = self.reuse_runs.pop(key, None)
        committed = -1
        if reused:
            run_id = reused
            if FAILURE in self.c.get_run(run_id).data.tags:  # a trial the stopped sweep failed
                self.c.delete_tag(run_id, FAILURE)
            self.c.update_run(run_id, status="RUNNING")
            self.c.set_tag(run_id, RESUMED, "true")
            for k, v in tags.items():
                if k != TRIAL_DIR:  # keep pointing at the store the trial resumes from
                    self.c.set_tag(run_id, k, v)
            committed = max((m.step for m in self.c.get_metric_history(run_id, EPOCH_PROBE_METRIC)), default=-1)
        else:
            run = self.c.create_run(
                self.exp_id, run_name=f"trial-{trial.config.get('optuna_trial', trial.trial_id)}", tags=tags
            )
            run_id = run.info.run_id
            log_params(self.c, run_id, config_lib.flatten(cfg))
            self._log_config(run_id, cfg)
        self.runs[trial.trial_id] = run_id
        self.logs[trial.trial_id] = EpochLog(committed)
        self.started[trial.trial_id] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or failure_kind(result) is not None or EPOCH not in result:
            return
        if trial.trial_id not in self.with_dataset and all(k in result for k in DATA_SIZES):
            self.with_dataset.add(trial.trial_id)
            log_dataset_input(self.c, run_id, self.resolve_trial(trial.config).data, *(result[k] for k in DATA_SIZES))
        log = self.logs[trial.trial_id]
        # The final result carries the last epoch's metrics and the final metrics together.
        epoch = int(result[EPOCH])
        log.add(epoch, {k: v for k, v in result.items() if k not in _TUNE_KEYS})
        uri = result.get(CHECKPOINT_URI)
        if uri:
            self.c.set_tag(run_id, LAST_CHECKPOINT, uri)
            self._write_epochs(run_id, log.commit(epoch, lambda: ckpt_lib.read_history(uri)))

    def _write_epochs(self, run_id: str, epochs: list[tuple[int, dict]]) -> None:
        for epoch, metrics in epochs:
            log_metrics(self.c, run_id, {k: v for k, v in metrics.items() if k not in DATA_SIZES}, step=epoch)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.write_end(trial.trial_id, self.ledger.end(trial.trial_id, trial.last_result))

    def on_trial_error(self, iteration, trials, trial, **info):
        end = self.ledger.end(trial.trial_id, trial.last_result, error=trial_error_text(trial))
        self.write_end(trial.trial_id, end)

    def write_end(self, trial_id: str, end: TrialEnd) -> None:
        """The run of a trial that ended, as the ledger classified its end: FINISHED with its
        checkpoint and artifacts, KILLED with why a scheduler stopped it, or FAILED with why."""
        run_id = self.runs.get(trial_id)
        if run_id is None:
            return
        self._write_epochs(run_id, self.logs[trial_id].flush())
        if end.outcome is Outcome.FINISHED:
            uri = end.result.get(CHECKPOINT_URI)
            if uri:
                self.c.set_tag(run_id, CHECKPOINT, uri)
                self._log_checkpoint_artifacts(run_id, uri, end.result.get(TARGET_L0_DENSITY))
            self.c.set_tag(run_id, WALL_S, f"{time.time() - self.started.get(trial_id, time.time()):.1f}")
        elif end.outcome is Outcome.STOPPED:
            self.c.set_tag(run_id, STOPPED, end.reason)
            self.c.set_tag(run_id, FAILURE_KIND, FailureKind.STOPPED.value)
        else:
            self.c.set_tag(run_id, FAILURE, end.reason)
            self.c.set_tag(run_id, FAILURE_KIND, end.failure_kind.value)
        self.c.set_terminated(run_id, end.mlflow_status)

    # ---------------------------------------------------------------------------------------

    def _log_config(self, run_id: str, cfg: TrialConfig) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"
            config_lib.save_json(cfg, path)
            self.c.log_artifact(run_id, str(path))

    def _log_checkpoint_artifacts(self, run_id: str, uri: str, target_density: float | None) -> None:
        """The activation-rate plot (from the checkpoint's metrics) and the checkpoint's
        metrics.json; the weights stay in Ray storage, referenced by the checkpoint tag."""
        try:
            with tempfile.TemporaryDirectory() as tmp:
                copied = ckpt_lib.copy_files(uri, Path(tmp) / "checkpoint", (ckpt_lib.METRICS_FILE,))
                if copied:
                    self.c.log_artifact(run_id, str(Path(tmp) / "checkpoint" / ckpt_lib.METRICS_FILE), "checkpoint")
                rates = ckpt_lib.read_text(uri, ckpt_lib.ACTIVATION_FILE)
                if rates is not None:
                    png = activation_plot(
                        json.loads(rates),
                        Path(tmp) / "activation_rates.png",
                        "activation rate of each z dimension (test split)",
                        target_density=target_density,
                    )
                    self.c.log_artifact(run_id, str(png))
        except Exception as err:  # artifacts are a convenience: never fail the sweep for them
            logger.warning("could not log artifacts of %s for run %s: %s", uri, run_id, err)


def make_callback(*args, **kwargs):
    """An MlflowSweepCallback that is also a ray.tune.Callback."""
    from ray.tune import Callback

    cls = type("MlflowTuneCallback", (MlflowSweepCallback, Callback), {})
    return cls(*args, **kwargs)
