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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jepa_ray import adapter
from jepa_ray import config as config_lib
from jepa_ray import contract as C
from jepa_ray.cluster import is_local_path, sqlite_path
from jepa_ray.config import TrialConfig
from jepa_ray.errors import UsageError
from jepa_ray.outcome import Ledger
from jepa_ray.sweep.describe import print_front
from jepa_ray.sweep.failures import (
    EpochBudget,
    FailureLimit,
    TrackingFailed,
    make_stopper,
    sigterm_as_interrupt,
    stop_reason,
)
from jepa_ray.sweep.options import SMOKE_REPLACES, SweepOptions, validate_options
from jepa_ray.sweep.progress import STOP_COLUMN, Progress
from jepa_ray.sweep.records import (
    make_storage_dir,
    name_objectives,
    optuna_storage_url,
    recreate_run,
    start_parent,
)
from jepa_ray.sweep.resume import ResumeState, epoch_histories, prepare_resume, recorded_base_config
from jepa_ray.sweep.scheduler import parse_signals
from jepa_ray.sweep.schedulers import LedgerScheduler, scheduler_from_flags
from jepa_ray.sweep.search import make_sampler, make_searcher, study_of
from jepa_ray.sweep.spaces import DefineByRun, load_space, trial_config, validate_space
from jepa_ray.sweep.trial import trial_dir, trial_main, trial_resources
from jepa_ray.tracking.writer import MlflowWriter

logger = logging.getLogger("jepa_ray.sweep")


@dataclass
class SweepPlan:
    """A sweep checked and ready to run: what `execute` needs, nothing started."""

    opts: SweepOptions
    objectives: list
    base: TrialConfig
    scheduler: Any
    space: Any
    """A define-by-run callable for OptunaSearch (picklable)."""
    starting_points: list[dict]
    sampler_name: str
    sampler: Any
    grid: dict | None
    seed: int
    storage: str
    storage_url: str
    name: str
    exp_id: str | None
    """None: the experiment does not exist yet (execute creates it)."""
    parent: Any = None
    """The parent run of the sweep to resume (None: a new sweep)."""
    fault: Any = None
    replay: Any = None
    """A jepa_ray.replay.tables.Replay when the trials replay a curve table."""
    instrument: Any = None
    """callbacks -> callbacks: what a benchmark wraps around the driver's Tune callbacks (to time
    them on Tune's event loop); None in a sweep."""


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
    from jepa_ray import cluster, pareto, tracking
    from jepa_ray.data import check_data
    from jepa_ray.train import faults

    validate_options(opts)
    adapter.check_versions()
    try:
        adapter.check_private_api()
    except RuntimeError as err:
        raise UsageError(str(err)) from None
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
    cluster.check_tracking_uri(opts.tracking_uri, multi_node=False)
    fault = faults.from_env()
    replay = None
    if opts.replay:
        from jepa_ray.replay.tables import Replay

        replay = Replay.open(opts.replay, opts.sets, speed=opts.replay_speed)
        base = replay.base
        module, starting_points, grid, default_sampler = None, [], replay.grid(), "tpe"
        if opts.sampler == "grid" and grid is None:
            raise UsageError(
                f"--sampler grid: --replay {opts.replay} holds a space-filling design, not a factorial "
                "grid; allowed there: tpe, tpe-rungs, nsga2, gp, random"
            )
    else:
        base = base_config(opts)
        module = load_space(opts.space)
        validate_space(module, base, n=200 if not opts.smoke else 50, seed=opts.seed or 0)
        check_data(config_lib.resolve(base))
        starting_points = list(getattr(module, "STARTING_POINTS", []))
        grid, default_sampler = getattr(module, "GRID", None), getattr(module, "DEFAULT_SAMPLER", "tpe")
    scheduler = scheduler_from_flags(opts, base.optim.epochs)
    storage = opts.storage_path.removeprefix("file://")  # trials treat any local path alike
    if is_local_path(storage):
        storage = str(Path(storage).resolve())

    db = sqlite_path(opts.tracking_uri)
    fresh = db is not None and not db.exists()  # nothing recorded yet: opening it would create it
    exp_id = None if fresh else tracking.find_experiment(opts.tracking_uri, opts.experiment)
    parent = None
    if opts.resume:
        parent = tracking.find_sweep_run(opts.tracking_uri, exp_id, opts.name) if exp_id else None
        if parent is None:
            which = f"sweep '{opts.name}'" if opts.name else "sweep"
            raise UsageError(
                f"--resume: no {which} in experiment '{opts.experiment}' "
                f"at {opts.tracking_uri}; start one without --resume"
            )
        name = parent.data.tags[C.SWEEP_NAME]
        if not replay:
            recorded = recorded_base_config(parent, base)
            if recorded != base:
                base = recorded
                validate_space(module, base, n=50, seed=opts.seed or 0)
        seed = int(parent.data.tags.get(C.SWEEP_SAMPLER_SEED, opts.seed or 0))
    else:
        name = opts.name or f"{opts.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
        if exp_id and tracking.find_sweep_run(opts.tracking_uri, exp_id, name) is not None:
            raise UsageError(f"--name {name!r}: a sweep of that name exists; use --resume or another name")
        seed = opts.seed if opts.seed is not None else secrets.randbelow(2**31)
    sampler_name = opts.sampler or default_sampler
    return SweepPlan(
        opts=opts,
        objectives=objectives,
        base=base,
        scheduler=scheduler,
        space=replay.space(seed) if replay else DefineByRun(module.__name__, seed),
        starting_points=starting_points,
        sampler_name=sampler_name,
        sampler=make_sampler(sampler_name, seed, grid),
        grid=grid,
        seed=seed,
        storage=storage,
        # A resumed sweep opens the study it recorded (a --resume without --optuna-storage would
        # otherwise open an empty one beside the tracking store and train everything again).
        storage_url=opts.optuna_storage
        or (parent.data.tags.get(C.SWEEP_OPTUNA_STORAGE) if parent is not None else None)
        or optuna_storage_url(opts),
        name=name,
        exp_id=exp_id,
        parent=parent,
        fault=fault,
        replay=replay,
    )


def execute(p: SweepPlan) -> dict[str, Any]:
    """Run (or resume) a planned sweep; returns a summary."""
    import optuna

    from jepa_ray import cluster, placement, tracking

    opts = p.opts
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    adapter.set_ray_switches()
    logger.info("sweep %s: sampler %s, seed %d%s", p.name, p.sampler_name, p.seed, " (resumed)" if p.parent else "")
    cluster.connect(opts.address, num_cpus=os.cpu_count())
    # An autoscaling cluster may be only its head now: count the nodes it can grow to.
    cluster.check_storage_path(p.storage, cluster.max_node_count())
    capacity = placement.capacity()
    demand = placement.trial_demand(p.base, in_tune=True)
    placement.check_trial_fits(demand, capacity)
    concurrency = opts.max_concurrent or max(1, placement.copies_that_fit(demand, capacity))

    exp_id = p.exp_id or tracking.experiment_id(opts.tracking_uri, opts.experiment)
    c = tracking.client(opts.tracking_uri)
    ledger = Ledger(tuple(o.name for o in p.objectives))
    make_storage_dir(p.storage_url)
    searcher = make_searcher(p.space, p.objectives, p.sampler, p.name, p.storage_url, ledger)
    if p.sampler_name == "tpe-rungs":
        searcher.rung_signals = tuple(s.metric for s in parse_signals(opts.scheduler_signals))
    study = study_of(searcher)
    if p.parent is None:
        parent_id = start_parent(p, exp_id)
        name_objectives(study, p.objectives)
        for point in p.starting_points[: opts.num_samples]:
            study.enqueue_trial(point)
        resume = ResumeState()
    else:
        parent_id = p.parent.info.run_id
        c.update_run(parent_id, status="RUNNING")
        recover = p.replay.record_run if p.replay is not None else None
        resume = prepare_resume(
            study, opts.tracking_uri, exp_id, parent_id, recover=recover, recreate=recreate_run(p, exp_id, parent_id)
        )
        # The sampler goes on from where the study is, not from its first draws again (a seeded
        # sampler restarted would propose the configurations the sweep already tried).
        study.sampler = make_sampler(p.sampler_name, p.seed + len(study.trials), p.grid)
    scheduler = LedgerScheduler(p.scheduler, ledger)
    if opts.resume and scheduler.signal_metrics:
        scheduler.restore_from_histories(
            epoch_histories(opts.tracking_uri, exp_id, parent_id, scheduler.signal_metrics)
        )
    c.set_tag(parent_id, C.SWEEP_MAX_CONCURRENT, str(concurrency))
    remaining = max(0, opts.num_samples - resume.finished)
    limit = FailureLimit(opts.max_failed_trials, ledger)
    budget = EpochBudget(opts.max_trial_epochs, resume.trial_epochs)
    summary: dict[str, Any] = {
        "sweep": p.name,
        "seed": p.seed,
        "parent_run_id": parent_id,
        "experiment": opts.experiment,
        "experiment_id": exp_id,
        "tracking_uri": opts.tracking_uri,
        "optuna_storage": p.storage_url,
        "already_finished": resume.finished,
        "launched": remaining,
        "max_concurrent": concurrency,
    }
    if remaining > 0:
        _run_tuner(p, exp_id, parent_id, searcher, scheduler, ledger, resume, limit, budget, remaining, concurrency)
        summary["launched"] = searcher.suggested
    status = "FAILED" if limit.reached else "FINISHED"
    if limit.reached:
        c.set_tag(parent_id, C.FAILURE, f"stopped after {limit.failed} failed trials; last: {limit.reasons[-1]}")
    c.set_terminated(parent_id, status)
    summary.update(
        failed=limit.failed,
        failure_reasons=limit.reasons,
        stopped_on_failures=limit.reached,
        collapsed=limit.collapsed,
        stopped_at_rung=limit.stopped,
        finished=limit.finished,
    )
    if opts.print_front:
        summary["front"] = print_front(opts, p.objectives, parent_id)
    return summary


def run_sweep(opts: SweepOptions) -> dict[str, Any]:
    """Plan and execute a sweep (UsageError before anything starts on bad input)."""
    return execute(plan(opts))


def _run_tuner(p, exp_id, parent_id, searcher, scheduler, ledger, resume, limit, budget, remaining, concurrency):
    from ray import tune

    from jepa_ray import tracking

    opts, base = p.opts, p.base
    attempt = time.strftime("%Y%m%d-%H%M%S")
    if p.replay is not None:
        trainable = p.replay.trainable()
    else:
        trainable = tune.with_parameters(
            trial_main,
            base=config_lib.to_dict(base),
            storage=p.storage,
            sweep=p.name,
            resume_map=resume.resume_map,
            fault=p.fault,
        )
    trainable = tune.with_resources(trainable, trial_resources(base))
    resolve_trial = p.replay.trial_config if p.replay is not None else (lambda trial: trial_config(base, trial))
    writer = MlflowWriter(opts.tracking_uri, patience_s=opts.tracking_patience)
    mlflow_cb = tracking.make_callback(
        opts.tracking_uri,
        exp_id,
        parent_id,
        resolve_trial,
        resume.reuse_runs,
        trial_dir=None if p.replay else (lambda spec: trial_dir(p.storage, p.name, spec.number or 0)),
        ledger=ledger,
        writer=writer,
    )
    progress_cb = Progress(
        parent_id,
        p.objectives,
        ledger,
        budget,
        points_before=resume.final_points(p.objectives),
        total_epochs=opts.max_trial_epochs or opts.num_samples * base.optim.epochs,
        total_trials=opts.num_samples,
        writer=writer,
    )
    # An in-process trial's actor is reused by the next trial: a fresh one costs a worker
    # process, importing torch/timm and the trainer (~10 s on a small CPU, more than a digits
    # trial trains). A multi-worker trial's actor only drives a TorchTrainer: nothing to keep.
    reuse_actors = base.system.workers == 1
    reporter = None
    if opts.verbose:
        columns = {C.EPOCH: "epoch", C.TRAIN_LOSS: "loss"}
        columns.update({o.name: o.name for o in p.objectives})
        columns.update({C.TARGET_L0_DENSITY: "target_l0", STOP_COLUMN: "stop"})
        reporter = tune.CLIReporter(metric_columns=columns, parameter_columns=[C.SPEC_NUMBER], max_report_frequency=15)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=remaining,
            max_concurrent_trials=concurrency,
            reuse_actors=reuse_actors,
            scheduler=scheduler,
        ),
        run_config=tune.RunConfig(
            name=f"{p.name}-tune-{attempt}",
            storage_path=p.storage,
            callbacks=p.instrument([mlflow_cb, progress_cb]) if p.instrument else [mlflow_cb, progress_cb],
            stop=make_stopper(limit, budget, ledger),
            failure_config=tune.FailureConfig(max_failures=base.system.max_failures if base.system.workers == 1 else 0),
            progress_reporter=reporter,
            verbose=1 if opts.verbose else 0,
        ),
    )
    try:
        on_term = lambda: ledger.close_reason("stopped before its end: the sweep got SIGTERM")  # noqa: E731
        with sigterm_as_interrupt(on_term) as signalled:
            tuner.fit()
    except Exception:
        if writer.error is None:  # a callback's WriterFailed, wrapped by Tune: said below in one line
            raise
    finally:
        # Trials Tune stopped with the sweep (its budget, its failure limit, Ctrl-C, SIGTERM) end
        # without a report: the ledger closes them, and Optuna and MLflow hear it from there.
        closed = ledger.close(stop_reason(limit, budget), also=searcher.unended())
        for trial_id in closed:
            searcher.on_trial_complete(trial_id)
            mlflow_cb.write_end(trial_id, ledger.get(trial_id))
        if closed:
            logger.info("%d trials ended unfinished: %s", len(closed), ledger.get(closed[0]).reason)
        writer.flush()
        if writer.error is None:
            tracking.fail_running_trials(opts.tracking_uri, exp_id, parent_id, stop_reason(limit, budget))
        writer.close()
    if signalled:  # Tune may have taken the interrupt as a stop: the sweep still ends interrupted
        raise KeyboardInterrupt("SIGTERM")
    if writer.error is not None:
        raise TrackingFailed(
            f"{writer.error}; the sweep stopped. Every trial keeps its checkpoints in its store: once MLflow "
            "answers again, --resume records what MLflow missed and trains what did not finish"
        )
