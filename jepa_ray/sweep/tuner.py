"""The sweep's Tune run: the trainable (a trial that trains, or a recorded row served), the
driver's callbacks (MLflow, progress), the stopper, the status table, and what a stopped run
leaves open, closed (its trials in the ledger, Optuna and MLflow; the writer flushed)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from jepa_ray import config as config_lib
from jepa_ray import contract as C
from jepa_ray import tracking
from jepa_ray.errors import StorageFull
from jepa_ray.outcome import Ledger
from jepa_ray.sweep.failures import (
    EpochBudget,
    FailureLimit,
    StopOnFailuresOrBudget,
    TrackingFailed,
    full_disk,
    sigterm_as_interrupt,
    stop_reason,
)
from jepa_ray.sweep.planning import SweepPlan
from jepa_ray.sweep.progress import STOP_COLUMN, Progress
from jepa_ray.sweep.resume import ResumeState
from jepa_ray.sweep.schedulers import LedgerScheduler
from jepa_ray.sweep.search import JepaOptunaSearch
from jepa_ray.sweep.spaces import trial_config
from jepa_ray.sweep.trial import trial_dir, trial_main, trial_resources
from jepa_ray.tracking.writer import MlflowWriter

logger = logging.getLogger("jepa_ray.sweep")


@dataclass
class Started:
    """A started sweep: what its Tune run needs beside the plan."""

    exp_id: str
    parent_id: str
    searcher: JepaOptunaSearch
    scheduler: LedgerScheduler
    ledger: Ledger
    resume: ResumeState
    limit: FailureLimit
    budget: EpochBudget


def run_tuner(
    sweep: SweepPlan, run: Started, trials: int, concurrency: int, wrap_callbacks: Callable[[list], list] | None
) -> None:
    """Launch `trials` trials, `concurrency` at a time, under Tune and close what it leaves open: the trials it stopped
    with the sweep end in the ledger, Optuna and MLflow, and the writer is flushed and closed.
    Raises KeyboardInterrupt on SIGTERM, StorageFull when a disk it writes was full (a trial's
    checkpoint, Tune's state, the MLflow or Optuna store), TrackingFailed when MLflow stopped
    taking writes."""
    from ray import tune

    writer = MlflowWriter(sweep.opts.tracking_uri, patience_s=sweep.opts.tracking_patience, lock=str(sweep.writer_lock))
    mlflow_cb = _mlflow_callback(sweep, run, writer)
    callbacks = [mlflow_cb, _progress_callback(sweep, run, writer)]
    base = sweep.base
    tuner = tune.Tuner(
        tune.with_resources(_trainable(sweep, run.resume), trial_resources(base)),
        tune_config=tune.TuneConfig(
            search_alg=run.searcher,
            num_samples=trials,
            max_concurrent_trials=concurrency,
            # An in-process trial's actor is reused by the next trial: a fresh one costs a worker
            # process, importing torch/timm and the trainer (on a small CPU, more than a digits
            # trial trains). A multi-worker trial's actor only drives a TorchTrainer: nothing to keep.
            reuse_actors=base.system.workers == 1,
            scheduler=run.scheduler,
        ),
        run_config=tune.RunConfig(
            name=f"{sweep.name}-tune-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=sweep.storage,
            callbacks=wrap_callbacks(callbacks) if wrap_callbacks else callbacks,
            stop=StopOnFailuresOrBudget(run.limit, run.budget, run.ledger),
            failure_config=tune.FailureConfig(max_failures=base.system.max_failures if base.system.workers == 1 else 0),
            progress_reporter=_reporter(sweep) if sweep.opts.verbose else None,
            verbose=1 if sweep.opts.verbose else 0,
        ),
    )
    full: StorageFull | None = None
    try:
        on_term = lambda: run.ledger.close_reason("stopped before its end: the sweep got SIGTERM")  # noqa: E731
        with sigterm_as_interrupt(on_term) as signalled:
            tuner.fit()
    except Exception as err:
        full = full_disk(err, sweep)  # under Tune's own state, or an Optuna proposal (Tune raises it)
        if writer.error is None and full is None:  # a callback's WriterFailed, wrapped by Tune: said below
            raise
    finally:
        full = _close_stopped_trials(sweep, run, mlflow_cb, writer, full)
    if signalled:  # Tune may have taken the interrupt as a stop: the sweep still ends interrupted
        raise KeyboardInterrupt("SIGTERM")
    if full is not None:
        raise full
    if writer.error is not None:
        raise TrackingFailed(
            f"{writer.error}; the sweep stopped. Every trial keeps its checkpoints in its store: once MLflow "
            "answers again, --resume records what MLflow missed and trains what did not finish"
        )


def _trainable(sweep: SweepPlan, resume: ResumeState):
    """The Tune function trial: a recorded row served, or `trial_main` training the config."""
    from ray import tune

    if sweep.replay is not None:
        return sweep.replay.trainable()
    return tune.with_parameters(
        trial_main,
        base=config_lib.to_dict(sweep.base),
        storage=sweep.storage,
        sweep=sweep.name,
        resume_map=resume.resume_map,
        fault=sweep.fault,
    )


def _mlflow_callback(sweep: SweepPlan, run: Started, writer: MlflowWriter):
    """The callback that mirrors every trial into MLflow through `writer`."""
    if sweep.replay is not None:
        resolve_trial, where = sweep.replay.trial_config, None
    else:
        resolve_trial = lambda spec: trial_config(sweep.base, spec)  # noqa: E731
        where = lambda spec: trial_dir(sweep.storage, sweep.name, spec.number or 0)  # noqa: E731
    return tracking.MlflowSweepCallback(
        sweep.opts.tracking_uri,
        run.exp_id,
        run.parent_id,
        resolve_trial,
        run.resume.reuse_runs,
        trial_dir=where,
        ledger=run.ledger,
        writer=writer,
    )


def _progress_callback(sweep: SweepPlan, run: Started, writer: MlflowWriter) -> Progress:
    """The progress lines and the sweep's hypervolume curve, counting on from a resumed sweep."""
    return Progress(
        run.parent_id,
        sweep.objectives,
        run.ledger,
        run.budget,
        points_before=run.resume.final_points(sweep.objectives),
        total_epochs=sweep.opts.max_trial_epochs or sweep.opts.num_samples * sweep.base.optim.epochs,
        total_trials=sweep.opts.num_samples,
        writer=writer,
    )


def _reporter(sweep: SweepPlan):
    """Tune's status table (--verbose): the objectives, the target density and why a trial stopped."""
    from ray import tune

    columns = {C.EPOCH: "epoch", C.TRAIN_LOSS: "loss"}
    columns.update({o.name: o.name for o in sweep.objectives})
    columns.update({C.TARGET_L0_DENSITY: "target_l0", STOP_COLUMN: "stop"})
    return tune.CLIReporter(metric_columns=columns, parameter_columns=[C.SPEC_NUMBER], max_report_frequency=15)


def _close_stopped_trials(
    sweep: SweepPlan, run: Started, mlflow_cb, writer: MlflowWriter, full: StorageFull | None
) -> StorageFull | None:
    """Trials Tune stopped with the sweep (its budget, its failure limit, Ctrl-C, SIGTERM, a full
    disk) end without a report: the ledger closes them, and Optuna and MLflow hear it from there;
    then the writer is flushed and closed. Returns the full disk the sweep met, if any (`full`,
    a trial's, the Optuna study's or the MLflow writer's)."""
    full = full or run.ledger.storage_full or StorageFull.find(writer.error)
    why = stop_reason(run.limit, run.budget, full, tracking=writer.error)
    closed = run.ledger.close(why, also=run.searcher.unended())
    for trial_id in closed:
        run.searcher.on_trial_complete(trial_id)
        mlflow_cb.write_end(trial_id, run.ledger.get(trial_id))
    if closed:
        logger.info("%d trials ended unfinished: %s", len(closed), run.ledger.get(closed[0]).reason)
    writer.flush()
    if writer.error is None:
        tracking.fail_running_trials(sweep.opts.tracking_uri, run.exp_id, run.parent_id, why)
    writer.close()
    return full or run.ledger.storage_full or StorageFull.find(writer.error)
