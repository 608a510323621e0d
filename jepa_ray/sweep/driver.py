"""The sweep driver, in two steps: `plan(opts)` checks everything a sweep needs and starts nothing
(a bad input is one UsageError before Ray, MLflow or Optuna are touched); `execute(plan)` runs it:
Ray Tune + Optuna (multi-objective, define-by-run spaces from `search_spaces/`) over trials that
each train one JEPA encoder (or replay a recorded one), every trial mirrored into MLflow by the
driver, each trial's end classified once by the outcome ledger, resumable from the Optuna study
and MLflow.

Every trial runs through `jepa_ray.train.run_trial`, as the command line does: one worker trains
inside its Tune trial process; several workers train under a TorchTrainer whose controller
forwards rank 0's reports to the trial. Both keep their checkpoints in the trial's store under
`--storage-path` and resume from it.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jepa_ray import adapter, cluster, databases, pareto, placement, tracking
from jepa_ray import config as config_lib
from jepa_ray import contract as C
from jepa_ray.cluster import is_local_path, sqlite_path
from jepa_ray.config import TrialConfig
from jepa_ray.data import check_data
from jepa_ray.errors import StorageFull, UsageError
from jepa_ray.outcome import Ledger, Outcome
from jepa_ray.pareto.objectives import Objective
from jepa_ray.sweep.describe import print_front
from jepa_ray.sweep.failures import EpochBudget, FailureLimit, full_disk
from jepa_ray.sweep.options import SMOKE_REPLACES, SweepOptions, validate_options
from jepa_ray.sweep.planning import SweepPlan
from jepa_ray.sweep.records import (
    make_storage_dir,
    name_objectives,
    optuna_storage_url,
    recreate_run,
    start_parent,
)
from jepa_ray.sweep.resume import ResumeState, epoch_histories, prepare_resume, recorded_base_config, sweep_recorded
from jepa_ray.sweep.rungs import parse_signals
from jepa_ray.sweep.schedulers import LedgerScheduler, scheduler_from_flags
from jepa_ray.sweep.search import make_sampler, make_searcher, study_of
from jepa_ray.sweep.spaces import DefineByRun, load_space, validate_space
from jepa_ray.sweep.tuner import Started, run_tuner
from jepa_ray.tracking.writer_lock import check_not_running, wait_for_previous_writer
from jepa_ray.train import faults

if TYPE_CHECKING:  # an annotation: the table loads only for --replay
    from jepa_ray.replay.tables import Replay

logger = logging.getLogger("jepa_ray.sweep")


def base_config(opts: SweepOptions) -> TrialConfig:
    """Preset + fixed overrides + the CLI shortcuts, validated (a bad value exits 2) and left
    unresolved: each trial's suggestions override it before it is resolved."""
    shortcuts = dict(
        dataset=opts.dataset,
        data_dir=opts.data_dir,
        backbone=opts.backbone,
        epochs=opts.epochs,
        workers=opts.workers_per_trial,
        gpus_per_worker=opts.gpus_per_worker,
        cpus_per_worker=opts.cpus_per_worker,
    )
    if opts.smoke:  # one epoch unless --epochs says otherwise
        shortcuts.update(epochs=opts.epochs or 1, warmup_epochs=0.0)
    name = "smoke" if opts.smoke and opts.preset in SMOKE_REPLACES else opts.preset
    return config_lib.build(name, opts.sets, shortcuts, resolved=False)


def plan(opts: SweepOptions) -> SweepPlan:
    """Check everything and start nothing: UsageError (one line) on any bad input."""
    validate_options(opts)
    adapter.check_versions()
    try:
        adapter.check_private_api()
    except RuntimeError as err:
        raise UsageError(str(err)) from None
    objectives = _objectives(opts)
    cluster.check_tracking_uri(opts.tracking_uri, multi_node=False)
    if opts.optuna_storage:
        databases.check_optuna_storage(opts.optuna_storage)
    fault = faults.from_env()
    space = _trials_space(opts)
    scheduler = scheduler_from_flags(opts, space.base.optim.epochs)
    storage = opts.storage_path.removeprefix("file://")  # trials treat any local path alike
    if is_local_path(storage):
        storage = str(Path(storage).resolve())
    who = _identity(opts, space)
    sampler_name = opts.sampler or space.default_sampler
    # A resumed sweep opens the study it recorded (a --resume without --optuna-storage would
    # otherwise open an empty one beside the tracking store and train everything again).
    recorded = who.parent.data.tags.get(C.SWEEP_OPTUNA_STORAGE) if who.parent is not None else None
    storage_url = opts.optuna_storage or recorded or optuna_storage_url(opts)
    if storage_url != opts.optuna_storage:
        what = "the Optuna storage the sweep recorded (override: --optuna-storage)" if recorded else "--optuna-storage"
        databases.check_optuna_storage(storage_url, what)
    sweep = SweepPlan(
        opts=opts,
        objectives=objectives,
        base=who.base,
        scheduler=scheduler,
        space=space.replay.space(who.seed) if space.replay else DefineByRun(space.module.__name__, who.seed),
        starting_points=space.starting_points,
        sampler_name=sampler_name,
        sampler=make_sampler(sampler_name, who.seed, space.grid),
        grid=space.grid,
        seed=who.seed,
        storage=storage,
        storage_url=storage_url,
        name=who.name,
        exp_id=who.exp_id,
        parent=who.parent,
        fault=fault,
        replay=space.replay,
    )
    if sweep.parent is not None:
        check_not_running(sweep.writer_lock, sweep.name)
    return sweep


def _objectives(opts: SweepOptions) -> list[Objective]:
    """--objectives parsed, each a final metric a trial reports."""
    try:
        objectives = pareto.parse_objectives(opts.objectives)
    except ValueError as err:  # the message already names --objectives and what is allowed
        raise UsageError(str(err)) from err
    unknown = [o.name for o in objectives if o.name not in C.FINAL_METRICS]
    if unknown:  # a typo would fail every trial ("not a finite number") until the failure limit
        raise UsageError(
            f"--objectives {opts.objectives!r}: {unknown[0]!r} is not a final metric a trial reports; "
            f"allowed: {', '.join(C.FINAL_METRICS)}"
        )
    return objectives


@dataclass(frozen=True)
class _Space:
    """What the trials search and train from: a search space module, or a replayed table."""

    base: TrialConfig
    module: Any = None
    starting_points: list[dict[str, Any]] = field(default_factory=list)
    grid: dict[str, list] | None = None
    default_sampler: str = "tpe"
    replay: Replay | None = None


def _trials_space(opts: SweepOptions) -> _Space:
    """The replayed table's space (--replay), else the search space's, checked against the
    trainer's config and the data."""
    if opts.replay:
        from jepa_ray.replay.tables import Replay  # optional: --replay only

        replay = Replay.open(opts.replay, opts.sets, speed=opts.replay_speed)
        grid = replay.grid()
        if opts.sampler == "grid" and grid is None:
            raise UsageError(
                f"--sampler grid: --replay {opts.replay} holds a space-filling design, not a factorial "
                "grid; allowed there: tpe, tpe-rungs, nsga2, gp, random"
            )
        return _Space(replay.base, grid=grid, replay=replay)
    base = base_config(opts)
    module = load_space(opts.space)
    validate_space(module, base, n=200 if not opts.smoke else 50, seed=opts.seed or 0)
    check_data(config_lib.resolve(base))
    return _Space(
        base,
        module,
        list(getattr(module, "STARTING_POINTS", [])),
        getattr(module, "GRID", None),
        getattr(module, "DEFAULT_SAMPLER", "tpe"),
    )


@dataclass(frozen=True)
class _Identity:
    """Which sweep this is: its name and seed, its experiment, and its parent run on --resume
    (whose recorded base config the trials keep)."""

    name: str
    seed: int
    exp_id: str | None
    parent: Any
    base: TrialConfig


def _identity(opts: SweepOptions, space: _Space) -> _Identity:
    """A new sweep's name and seed (a name taken is an error), or the resumed sweep's own."""
    db = sqlite_path(opts.tracking_uri)
    fresh = db is not None and not db.exists()  # nothing recorded yet: opening it would create it
    exp_id = None if fresh else tracking.find_experiment(opts.tracking_uri, opts.experiment)
    if not opts.resume:
        name = opts.name or f"{opts.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
        if exp_id and tracking.find_sweep_run(opts.tracking_uri, exp_id, name) is not None:
            raise UsageError(f"--name {name!r}: a sweep of that name exists; use --resume or another name")
        seed = opts.seed if opts.seed is not None else secrets.randbelow(2**31)
        return _Identity(name, seed, exp_id, None, space.base)
    parent = tracking.find_sweep_run(opts.tracking_uri, exp_id, opts.name) if exp_id else None
    if parent is None:
        which = f"sweep '{opts.name}'" if opts.name else "sweep"
        raise UsageError(
            f"--resume: no {which} in experiment '{opts.experiment}' at {opts.tracking_uri}; start one without --resume"
        )
    base = space.base
    if not space.replay:
        recorded = recorded_base_config(parent, base)
        if recorded != base:
            base = recorded
            validate_space(space.module, base, n=50, seed=opts.seed or 0)
    seed = int(parent.data.tags.get(C.SWEEP_SAMPLER_SEED, opts.seed or 0))
    return _Identity(parent.data.tags[C.SWEEP_NAME], seed, exp_id, parent, base)


def execute(sweep: SweepPlan, *, wrap_callbacks: Callable[[list], list] | None = None) -> dict[str, Any]:
    """Run (or resume) a planned sweep; returns a summary. `wrap_callbacks`: the driver's Tune
    callbacks -> the callbacks Tune gets (a caller that observes them: the scale benchmark times
    them on Tune's event loop). A disk it writes found full (a trial's checkpoint, Tune's state,
    the MLflow or Optuna store) raises StorageFull naming the path: the sweep stopped as on
    Ctrl-C, and --resume goes on once space is freed ("rerun" alone while MLflow holds nothing
    of the sweep)."""
    try:
        return _execute(sweep, wrap_callbacks)
    except Exception as err:
        full = full_disk(err, sweep)
        if full is None:
            raise
        if full.resume and not sweep_recorded(sweep.opts.tracking_uri, sweep.opts.experiment, sweep.name):
            full = StorageFull(full.path, resume=False)
        if full is err:
            raise
        raise full from err


def _execute(sweep: SweepPlan, wrap_callbacks: Callable[[list], list] | None) -> dict[str, Any]:
    import optuna

    opts = sweep.opts
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    adapter.set_ray_switches()
    resumed = " (resumed)" if sweep.parent else ""
    logger.info("sweep %s: sampler %s, seed %d%s", sweep.name, sweep.sampler_name, sweep.seed, resumed)
    concurrency = _connect(sweep)
    exp_id = sweep.exp_id or tracking.experiment_id(opts.tracking_uri, opts.experiment)
    mlflow_client = tracking.client(opts.tracking_uri)
    ledger = Ledger(tuple(o.name for o in sweep.objectives))
    make_storage_dir(sweep.storage_url)
    searcher = make_searcher(
        sweep.space, sweep.objectives, sweep.sampler, sweep.name, sweep.storage_url, ledger, opts.tracking_patience
    )
    if sweep.sampler_name == "tpe-rungs":
        searcher.rung_signals = tuple(s.metric for s in parse_signals(opts.scheduler_signals))
    parent_id, resume = _open_records(sweep, study_of(searcher), exp_id)
    scheduler = LedgerScheduler(sweep.scheduler, ledger)
    if opts.resume and scheduler.signal_metrics:
        scheduler.restore_from_histories(
            epoch_histories(opts.tracking_uri, exp_id, parent_id, scheduler.signal_metrics)
        )
    mlflow_client.set_tag(parent_id, C.SWEEP_MAX_CONCURRENT, str(concurrency))
    remaining = max(0, opts.num_samples - resume.finished)
    limit = FailureLimit(opts.max_failed_trials, ledger)
    budget = EpochBudget(opts.max_trial_epochs, resume.trial_epochs)
    summary: dict[str, Any] = {
        "sweep": sweep.name,
        "seed": sweep.seed,
        "parent_run_id": parent_id,
        "experiment": opts.experiment,
        "experiment_id": exp_id,
        "tracking_uri": opts.tracking_uri,
        "optuna_storage": sweep.storage_url,
        "already_finished": resume.finished,
        "launched": remaining,
        "max_concurrent": concurrency,
    }
    if remaining > 0:
        started = Started(exp_id, parent_id, searcher, scheduler, ledger, resume, limit, budget)
        run_tuner(sweep, started, remaining, concurrency, wrap_callbacks)
        summary["launched"] = searcher.suggested
    status = "FAILED" if limit.reached else "FINISHED"
    if limit.reached:
        why = f"stopped after {limit.failed} failed trials; last: {limit.reasons[-1]}"
        mlflow_client.set_tag(parent_id, C.FAILURE, why)
    mlflow_client.set_terminated(parent_id, status)
    summary.update(
        failed=limit.failed,
        failure_reasons=limit.reasons,
        stopped_on_failures=limit.reached,
        collapsed=ledger.count(Outcome.COLLAPSED),
        stopped_at_rung=ledger.count(Outcome.STOPPED),
        finished=ledger.count(Outcome.FINISHED),
    )
    if opts.print_front:
        summary["front"] = print_front(opts, sweep.objectives, parent_id)
    return summary


def _connect(sweep: SweepPlan) -> int:
    """Join (or start) Ray, check that a trial fits it and its storage is shared; the trials
    that run at once (--max-concurrent, else as many as fit)."""
    cluster.connect(sweep.opts.address, num_cpus=os.cpu_count())
    # An autoscaling cluster may be only its head now: count the nodes it can grow to.
    cluster.check_storage_path(sweep.storage, cluster.max_node_count())
    capacity = placement.capacity()
    demand = placement.trial_demand(sweep.base, in_tune=True)
    placement.check_trial_fits(demand, capacity)
    return sweep.opts.max_concurrent or max(1, placement.copies_that_fit(demand, capacity))


def _open_records(sweep: SweepPlan, study, exp_id: str) -> tuple[str, ResumeState]:
    """A new sweep's parent run and its study's first trials; or, on --resume, the parent run
    reopened and what the interrupted sweep recorded (its trials' ends, runs and checkpoints)."""
    opts = sweep.opts
    if sweep.parent is None:
        parent_id = start_parent(sweep, exp_id)
        name_objectives(study, sweep.objectives)
        for point in sweep.starting_points[: opts.num_samples]:
            study.enqueue_trial(point)
        return parent_id, ResumeState()
    parent_id = sweep.parent.info.run_id
    # A killed driver's writer may still be writing what it had queued: read MLflow after it.
    wait_for_previous_writer(sweep.writer_lock, sweep.name, opts.tracking_patience, logger.warning)
    tracking.client(opts.tracking_uri).update_run(parent_id, status="RUNNING")
    recover = sweep.replay.record_run if sweep.replay is not None else None
    resume = prepare_resume(
        study, opts.tracking_uri, exp_id, parent_id, recover=recover, recreate=recreate_run(sweep, exp_id, parent_id)
    )
    # The sampler goes on from where the study is, not from its first draws again (a seeded
    # sampler restarted would propose the configurations the sweep already tried).
    study.sampler = make_sampler(sweep.sampler_name, sweep.seed + len(study.trials), sweep.grid)
    return parent_id, resume


def run_sweep(opts: SweepOptions) -> dict[str, Any]:
    """Plan and execute a sweep (UsageError before anything starts on bad input)."""
    return execute(plan(opts))
