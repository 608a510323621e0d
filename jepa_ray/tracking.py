"""MLflow, written by the sweep driver only (DESIGN.md layout): one parent run per sweep, one
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
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from jepa_ray import config as config_lib
from jepa_ray.config import TrialConfig

logger = logging.getLogger(__name__)

ROLE, SWEEP_NAME, TRIAL_ID, CHECKPOINT, FAILURE = (
    "jepa_ray.role", "jepa_ray.sweep_name", "jepa_ray.trial_id", "jepa_ray.checkpoint", "jepa_ray.failure")
OPTUNA_TRIAL, PARAMS_KEY, LAST_CHECKPOINT = "jepa_ray.optuna_trial", "jepa_ray.params_key", "jepa_ray.last_checkpoint"
TRIAL_DIR = "jepa_ray.trial_dir"  # the trial's checkpoint store: where an interrupted trial resumes from
PARENT = "mlflow.parentRunId"
# DESIGN.md's final metrics of a trial run (the trainer reports them, pareto reads them).
FINAL_METRICS = ("linear_acc", "l0_density", "target_l0_density", "linear_acc_z", "knn_acc",
                 "l0_density_backbone", "rank_me")
# Bookkeeping Tune adds to every result: not trial metrics.
_TUNE_KEYS = frozenset({"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid",
                        "time_since_restore", "iterations_since_restore", "done", "epoch", "config"})
MAX_TAG = 5000
EPOCH_PROBE_METRIC = "train/loss"
"""A metric every epoch result carries: its MLflow history tells which epochs were logged."""


def is_final(result: dict) -> bool:
    """True for a trial's last result (its final metrics), not a per-epoch one or a failure."""
    return "linear_acc" in result and not result.get("failure")


class EpochLog:
    """The per-epoch metrics of one trial, released for writing exactly once per epoch.

    An epoch is released once a checkpoint covers it (a result carrying `checkpoint_uri`, or the
    trial's end). A restarted trial resumes from its newest checkpoint and reports the epochs
    after it again; until a checkpoint covers them they wait here, and a repeated epoch
    replaces the earlier report and those after it (the later values belong to the training
    that produced the final weights). An epoch a checkpoint covers but whose report never
    arrived (a worker killed after its checkpoint, before its report was collected) is read
    from that checkpoint's history."""

    def __init__(self, committed: int = -1):
        self.committed = committed
        self.pending: dict[int, dict] = {}

    def add(self, epoch: int, metrics: dict) -> None:
        if epoch <= self.committed:
            return  # already written: a restart never resumes before a written epoch's checkpoint
        for later in [e for e in self.pending if e >= epoch]:
            del self.pending[later]
        self.pending[epoch] = metrics

    def commit(self, upto: int, history: Callable[[], list[dict]] | None = None) -> list[tuple[int, dict]]:
        """Release every epoch up to `upto` (covered by a checkpoint whose history `history`
        reads, to fill epochs whose report was lost)."""
        missing = [e for e in range(self.committed + 1, upto + 1) if e not in self.pending]
        if missing and history is not None:
            try:
                recorded = {int(m["epoch"]): m for m in history()}
            except Exception as err:  # the gap stays a gap; the rest is still written
                logger.warning("could not read the history of a checkpoint to fill epochs %s: %s", missing, err)
                recorded = {}
            for e in missing:
                if e in recorded:
                    self.pending[e] = {k: v for k, v in recorded[e].items() if k != "epoch"}
        out = sorted((e, m) for e, m in self.pending.items() if e <= upto)
        for e, _ in out:
            del self.pending[e]
        self.committed = max(self.committed, upto)
        return out

    def flush(self) -> list[tuple[int, dict]]:
        """Release what is left (the trial ended: nothing will be reported again)."""
        return self.commit(max(self.pending, default=self.committed))


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(tracking_uri: str, name: str) -> str:
    """The id of the experiment `name`, created when missing (restored when deleted)."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return c.create_experiment(name)
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def git_commit(path: str | os.PathLike = ".") -> str:
    """The commit of the checkout that runs the sweep ('unknown' outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def find_sweep_run(tracking_uri: str, exp_id: str, sweep_name: str | None = None):
    """The parent run of a sweep by name, or the newest sweep of the experiment (None if none)."""
    query = f"tags.`{ROLE}` = 'sweep'"
    if sweep_name:
        query += f" and tags.`{SWEEP_NAME}` = '{sweep_name}'"
    runs = client(tracking_uri).search_runs([exp_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def start_sweep_run(tracking_uri: str, exp_id: str, sweep_name: str, tags: dict[str, str],
                    params: dict[str, Any]) -> str:
    c = client(tracking_uri)
    run = c.create_run(exp_id, run_name=sweep_name, tags={ROLE: "sweep", SWEEP_NAME: sweep_name, **tags})
    log_params(c, run.info.run_id, params)
    return run.info.run_id


def trial_runs(tracking_uri: str, exp_id: str, parent_run_id: str) -> list:
    """Every child run of a sweep (all statuses)."""
    c = client(tracking_uri)
    runs, token = [], None
    while True:
        page = c.search_runs([exp_id], f"tags.`{PARENT}` = '{parent_run_id}'", max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def fail_running_trials(tracking_uri: str, exp_id: str, parent_run_id: str, why: str) -> int:
    """End the sweep's child runs still RUNNING (trials stopped without a report) as FAILED
    with the reason; returns how many."""
    c = client(tracking_uri)
    running = [r for r in trial_runs(tracking_uri, exp_id, parent_run_id) if r.info.status == "RUNNING"]
    for run in running:
        c.set_tag(run.info.run_id, FAILURE, one_line(why))
        c.set_terminated(run.info.run_id, "FAILED")
    return len(running)


def log_params(c, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, _param_text(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])


def _param_text(value: Any) -> str:
    return ("None" if value is None else str(value))[:6000]


def log_metrics(c, run_id: str, metrics: dict[str, Any], step: int) -> None:
    """Numeric, finite metrics only (MLflow rejects NaN in some stores; strings are not metrics)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i:i + 500])


def one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "unknown failure")[:MAX_TAG]


def activation_plot(rates, path: Path, title: str) -> Path:
    """Bar plot of each z dimension's activation rate (fraction of test samples where it is
    non-zero), sorted: shows dead, always-on and selective units at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rates = np.sort(np.asarray(rates, dtype=float))[::-1]
    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    ax.bar(np.arange(rates.size), rates, width=1.0, color="#1f77b4")
    ax.set_xlabel("z dimension (sorted)")
    ax.set_ylabel("activation rate")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


class MlflowSweepCallback:
    """Tune callback that mirrors every trial into MLflow (built lazily as a ray.tune.Callback
    subclass by `make_callback` so this module imports without Ray)."""

    def __init__(self, tracking_uri: str, exp_id: str, parent_run_id: str,
                 resolve_trial: Callable[[dict], TrialConfig], reuse_runs: dict[str, str] | None = None,
                 trial_dir: Callable[[dict], str] | None = None):
        self.tracking_uri, self.exp_id, self.parent = tracking_uri, exp_id, parent_run_id
        self.resolve_trial, self.trial_dir = resolve_trial, trial_dir
        self.reuse_runs = dict(reuse_runs or {})  # params key -> run id of an interrupted trial
        self.runs: dict[str, str] = {}  # tune trial id -> mlflow run id
        self.logs: dict[str, EpochLog] = {}  # tune trial id -> its epochs not yet written
        self.started: dict[str, float] = {}
        self.c = client(tracking_uri)

    # Tune callback hooks -------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.runs:
            return
        cfg = self.resolve_trial(trial.config)
        key = trial.config.get("params_key", "")
        tags = {ROLE: "trial", PARENT: self.parent, TRIAL_ID: trial.trial_id, PARAMS_KEY: key,
                OPTUNA_TRIAL: str(trial.config.get("optuna_trial", ""))}
        if self.trial_dir is not None:
            tags[TRIAL_DIR] = self.trial_dir(trial.config)
        reused = self.reuse_runs.pop(key, None)
        committed = -1
        if reused:
            run_id = reused
            if FAILURE in self.c.get_run(run_id).data.tags:  # a trial the stopped sweep failed
                self.c.delete_tag(run_id, FAILURE)
            self.c.update_run(run_id, status="RUNNING")
            self.c.set_tag(run_id, "jepa_ray.resumed", "true")
            for k, v in tags.items():
                if k != TRIAL_DIR:  # keep pointing at the store the trial resumes from
                    self.c.set_tag(run_id, k, v)
            committed = max((m.step for m in self.c.get_metric_history(run_id, EPOCH_PROBE_METRIC)), default=-1)
        else:
            run = self.c.create_run(self.exp_id, run_name=f"trial-{trial.config.get('optuna_trial', trial.trial_id)}",
                                    tags=tags)
            run_id = run.info.run_id
            log_params(self.c, run_id, config_lib.flatten(cfg))
            self._log_config(run_id, cfg)
        self.runs[trial.trial_id] = run_id
        self.logs[trial.trial_id] = EpochLog(committed)
        self.started[trial.trial_id] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or result.get("failure") or "epoch" not in result:
            return
        log = self.logs[trial.trial_id]
        # The final result carries the last epoch's metrics and the final metrics together.
        epoch = int(result["epoch"])
        log.add(epoch, {k: v for k, v in result.items() if k not in _TUNE_KEYS})
        uri = result.get("checkpoint_uri")
        if uri:
            from jepa_ray import checkpoint as ckpt_lib

            self.c.set_tag(run_id, LAST_CHECKPOINT, uri)
            self._write_epochs(run_id, log.commit(epoch, lambda: ckpt_lib.read_history(uri)))

    def _write_epochs(self, run_id: str, epochs: list[tuple[int, dict]]) -> None:
        for epoch, metrics in epochs:
            log_metrics(self.c, run_id, metrics, step=epoch)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        self._write_epochs(run_id, self.logs[trial.trial_id].flush())
        result = trial.last_result or {}
        failure = result.get("failure")
        if failure:
            self._fail(run_id, failure)
            return
        if not is_final(result):
            self._fail(run_id, "the trial ended without final metrics")
            return
        uri = result.get("checkpoint_uri")
        if uri:
            self.c.set_tag(run_id, CHECKPOINT, uri)
            self._log_checkpoint_artifacts(run_id, uri)
        self.c.set_tag(run_id, "jepa_ray.wall_s", f"{time.time() - self.started.get(trial.trial_id, time.time()):.1f}")
        self.c.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        self._write_epochs(run_id, self.logs[trial.trial_id].flush())
        self._fail(run_id, trial_error_text(trial))

    # ---------------------------------------------------------------------------------------

    def _fail(self, run_id: str, why: str) -> None:
        self.c.set_tag(run_id, FAILURE, one_line(why))
        self.c.set_terminated(run_id, "FAILED")

    def _log_config(self, run_id: str, cfg: TrialConfig) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"
            config_lib.save_json(cfg, path)
            self.c.log_artifact(run_id, str(path))

    def _log_checkpoint_artifacts(self, run_id: str, uri: str) -> None:
        """The activation-rate plot (from the checkpoint's metrics) and the checkpoint's
        metrics.json; the weights stay in Ray storage, referenced by the checkpoint tag."""
        from jepa_ray import checkpoint as ckpt_lib

        try:
            local = ckpt_lib.local_path(uri)
            self.c.log_artifact(run_id, str(local / ckpt_lib.METRICS_FILE), "checkpoint")
            rates_file = local / ckpt_lib.ACTIVATION_FILE
            if rates_file.is_file():
                rates = json.loads(rates_file.read_text())
                with tempfile.TemporaryDirectory() as tmp:
                    png = activation_plot(rates, Path(tmp) / "activation_rates.png",
                                          "activation rate of each z dimension (test split)")
                    self.c.log_artifact(run_id, str(png))
        except Exception as err:  # artifacts are a convenience: never fail the sweep for them
            logger.warning("could not log artifacts of %s for run %s: %s", uri, run_id, err)


def trial_error_text(trial) -> str:
    for attr in ("error_message", "error_msg"):
        msg = getattr(trial, attr, None)
        if msg:
            return str(msg)
    path = getattr(trial, "error_file", None)
    if path and os.path.isfile(path):
        return Path(path).read_text()
    return "the trial raised an error"


def make_callback(*args, **kwargs):
    """An MlflowSweepCallback that is also a ray.tune.Callback."""
    from ray.tune import Callback

    cls = type("MlflowTuneCallback", (MlflowSweepCallback, Callback), {})
    return cls(*args, **kwargs)
