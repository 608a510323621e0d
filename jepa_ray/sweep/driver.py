"""The sweep driver: Ray Tune + Optuna (multi-objective, define-by-run spaces from
`search_spaces/`) over trials that each train one JEPA encoder; every trial mirrored into
MLflow by the driver; resumable from the Optuna study and MLflow.

Every trial runs through `jepa_ray.train.run_trial`, as the command line does: one worker trains
inside its Tune trial process (no TorchTrainer: starting a Ray Train controller and worker group
costs ~15 s per trial, more than a digits trial trains); several workers train under a
TorchTrainer whose controller forwards rank 0's reports to the trial (TuneReportCallback). Both
keep their checkpoints in the trial's store under `--storage-path` and resume from it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jepa_ray import config as config_lib
from jepa_ray.cluster import is_local_path, sqlite_path
from jepa_ray.config import TrialConfig
from jepa_ray.errors import UsageError
from jepa_ray.sweep.failures import EpochBudget, FailureLimit, make_failure_callback, make_stopper
from jepa_ray.sweep.options import SMOKE_REPLACES, SweepOptions, validate_options
from jepa_ray.sweep.progress import STOP_COLUMN, make_progress_callback
from jepa_ray.sweep.resume import ResumeState, epoch_histories, prepare_resume, recorded_base_config
from jepa_ray.sweep.scheduler import make_scheduler
from jepa_ray.sweep.search import make_sampler, make_searcher, study_of
from jepa_ray.sweep.spaces import DefineByRun, load_space, trial_config, validate_space
from jepa_ray.sweep.trial import trial_dir, trial_main, trial_resources

logger = logging.getLogger("jepa_ray.sweep")


def optuna_storage_url(opts: SweepOptions) -> str:
    """The study's RDB storage: optuna.db beside a sqlite MLflow store (so optuna-dashboard
    opens it next to `mlflow ui`), else ~/.jepa_ray/optuna.db."""
    if opts.optuna_storage:
        return opts.optuna_storage
    path = sqlite_path(opts.tracking_uri)
    if path is not None:
        return f"sqlite:///{path.resolve().with_name('optuna.db')}"
    # A tracking server (cluster head): a stable path, not the working directory, which is a
    # temporary copy inside a Ray job.
    home = Path("~/.jepa_ray").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'optuna.db'}"


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
    if opts.smoke:
        shortcuts.update(epochs=1, warmup_epochs=0.0)
    name = "smoke" if opts.smoke and opts.preset in SMOKE_REPLACES else opts.preset
    return config_lib.build(name, opts.sets, shortcuts, resolved=False)


def run_sweep(opts: SweepOptions) -> dict[str, Any]:
    """Run (or resume) a sweep; returns a summary. Raises UsageError on bad input before any
    trial starts."""
    import optuna

    from jepa_ray import cluster, pareto, placement, tracking
    from jepa_ray.train import faults

    validate_options(opts)
    try:
        objectives = pareto.parse_objectives(opts.objectives)
    except ValueError as err:  # the message already names --objectives and what is allowed
        raise UsageError(str(err)) from err
    cluster.check_tracking_uri(opts.tracking_uri, multi_node=False)  # cheap: fail fast
    fault = faults.from_env()
    base = base_config(opts)
    scheduler = make_scheduler(opts, base.optim.epochs)  # checked before Ray starts
    module = load_space(opts.space)
    validate_space(module, base, n=200 if not opts.smoke else 50, seed=opts.seed)
    grid = getattr(module, "GRID", None)
    sampler_name = opts.sampler or getattr(module, "DEFAULT_SAMPLER", "tpe")
    sampler = make_sampler(sampler_name, opts.seed, grid)
    num_samples = opts.num_samples
    storage = opts.storage_path.removeprefix("file://")  # trials treat any local path alike
    if is_local_path(storage):
        storage = str(Path(storage).resolve())

    # The sweep to resume (or the new sweep's name) is checked before Ray starts, so that a
    # bad --resume or --name exits 2 in seconds rather than after a cluster start.
    exp_id = tracking.experiment_id(opts.tracking_uri, opts.experiment)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = optuna_storage_url(opts)
    if opts.resume:
        parent = tracking.find_sweep_run(opts.tracking_uri, exp_id, opts.name)
        if parent is None:
            which = f"sweep '{opts.name}'" if opts.name else "sweep"
            raise UsageError(
                f"--resume: no {which} in experiment '{opts.experiment}' "
                f"at {opts.tracking_uri}; start one without --resume"
            )
        sweep_name = parent.data.tags[tracking.SWEEP_NAME]
        parent_id = parent.info.run_id
        recorded = recorded_base_config(parent, base)
        if recorded != base:
            base = recorded
            validate_space(module, base, n=50, seed=opts.seed)
    else:
        sweep_name = opts.name or f"{opts.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
        if tracking.find_sweep_run(opts.tracking_uri, exp_id, sweep_name) is not None:
            raise UsageError(f"--name {sweep_name!r}: a sweep of that name exists; use --resume or another name")
        parent_id = None

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    cluster.connect(opts.address, num_cpus=os.cpu_count())
    # An autoscaling cluster may be only its head now: count the nodes it can grow to.
    nodes = cluster.max_node_count()
    cluster.check_storage_path(storage, nodes)
    capacity = placement.capacity()
    demand = placement.trial_demand(base, in_tune=True)
    placement.check_trial_fits(demand, capacity)
    concurrency = opts.max_concurrent or max(1, placement.copies_that_fit(demand, capacity))
    if parent_id is not None:
        tracking.client(opts.tracking_uri).update_run(parent_id, status="RUNNING")

    searcher = make_searcher(DefineByRun(module.__name__, opts.seed), objectives, sampler, sweep_name, storage_url)
    study = study_of(searcher)
    if parent_id is None:
        parent_id = tracking.start_sweep_run(
            opts.tracking_uri,
            exp_id,
            sweep_name,
            tags={
                "jepa_ray.git_commit": tracking.git_commit(Path(__file__).resolve().parent),
                "jepa_ray.sampler": sampler_name,
                "jepa_ray.sampler_seed": str(opts.seed),
                "jepa_ray.space": opts.space,
                "jepa_ray.optuna_storage": storage_url,
                "jepa_ray.storage_path": storage,
                "jepa_ray.objectives": opts.objectives,
                tracking.DESCRIPTION: sweep_description(opts, objectives, sampler_name),
                **tracking.source_tags(),
            },
            params={
                "space": opts.space,
                "sampler": sampler_name,
                "seed": opts.seed,
                "num_samples": num_samples,
                **{f"base.{k}": v for k, v in config_lib.flatten(base).items()},
            },
        )
        name_objectives(study, objectives)
        for point in getattr(module, "STARTING_POINTS", [])[:num_samples]:
            study.enqueue_trial(point)
        resume = ResumeState()
    else:
        resume = prepare_resume(study, opts.tracking_uri, exp_id, parent_id)
    if scheduler is not None:
        searcher.stopped = scheduler.stopped
        if opts.resume:
            scheduler.restore_from_histories(
                epoch_histories(opts.tracking_uri, exp_id, parent_id, [s.metric for s in scheduler.signals])
            )
    tracking.client(opts.tracking_uri).set_tag(parent_id, "jepa_ray.max_concurrent", str(concurrency))
    remaining = max(0, num_samples - resume.finished)

    limit = FailureLimit(opts.max_failed_trials)
    summary: dict[str, Any] = {
        "sweep": sweep_name,
        "parent_run_id": parent_id,
        "experiment": opts.experiment,
        "experiment_id": exp_id,
        "tracking_uri": opts.tracking_uri,
        "optuna_storage": storage_url,
        "already_finished": resume.finished,
        "launched": remaining,
        "max_concurrent": concurrency,
    }
    if remaining > 0:
        ctx = SweepContext(
            opts,
            base,
            storage,
            sweep_name,
            exp_id,
            parent_id,
            searcher,
            scheduler,
            objectives,
            resume,
            limit,
            EpochBudget(opts.max_trial_epochs, resume.trial_epochs),
            fault,
        )
        _run_tuner(ctx, remaining, concurrency)
        # Trials Tune stopped (the failure limit, Ctrl-C) end without a report: close them.
        why = (
            f"stopped before its end: the sweep stopped after {limit.failed} failed trials"
            if limit.reached
            else f"stopped before its end: the sweep's budget of {opts.max_trial_epochs} trial-epochs was spent"
            if ctx.budget.reached
            else "stopped before its end: the sweep ended first"
        )
        searcher.fail_unfinished(why)
        tracking.fail_running_trials(opts.tracking_uri, exp_id, parent_id, why)
        summary["launched"] = searcher.suggested
    c = tracking.client(opts.tracking_uri)
    status = "FAILED" if limit.reached else "FINISHED"
    if limit.reached:
        c.set_tag(parent_id, tracking.FAILURE, f"stopped after {limit.failed} failed trials; last: {limit.reasons[-1]}")
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
        summary["front"] = _print_front(opts, objectives, parent_id)
    return summary


@dataclass
class SweepContext:
    """What one run of a sweep's tuner needs."""

    opts: SweepOptions
    base: TrialConfig
    storage: str
    name: str
    exp_id: str
    parent_id: str
    searcher: Any
    scheduler: Any
    objectives: list
    resume: ResumeState
    limit: FailureLimit
    budget: EpochBudget
    fault: Any


def _run_tuner(ctx: SweepContext, remaining: int, concurrency: int) -> None:
    opts, base, storage, sweep_name, searcher = ctx.opts, ctx.base, ctx.storage, ctx.name, ctx.searcher
    exp_id, parent_id, resume = ctx.exp_id, ctx.parent_id, ctx.resume
    from ray import tune

    from jepa_ray import tracking

    # The objectives are final metrics: per-epoch results and a failure report do not carry
    # them, and Tune's strict check (read by the controller, in this process) would end the
    # whole sweep at the first such result. The searcher only reads the final result.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    attempt = time.strftime("%Y%m%d-%H%M%S")
    base_dict = config_lib.to_dict(base)
    trainable = tune.with_parameters(
        trial_main, base=base_dict, storage=storage, sweep=sweep_name, resume_map=resume.resume_map, fault=ctx.fault
    )
    trainable = tune.with_resources(trainable, trial_resources(base))
    mlflow_cb = tracking.make_callback(
        opts.tracking_uri,
        exp_id,
        parent_id,
        lambda trial: trial_config(base, trial),
        resume.reuse_runs,
        trial_dir=lambda trial: trial_dir(storage, sweep_name, trial.get("optuna_trial", 0)),
        stopped=searcher.stopped,
    )
    progress_cb = make_progress_callback(
        opts.tracking_uri,
        parent_id,
        ctx.objectives,
        searcher.stopped,
        epochs_before=resume.trial_epochs,
        points_before=resume.final_points(ctx.objectives),
    )
    # An in-process trial's actor is reused by the next trial: a fresh one costs a worker
    # process, importing torch/timm and the trainer (~10 s on a small CPU, more than a digits
    # trial trains). A multi-worker trial's actor only drives a TorchTrainer: nothing to keep.
    reuse_actors = base.system.workers == 1
    columns = {"epoch": "epoch", "train/loss": "loss"}
    columns.update({o.name: o.name for o in ctx.objectives})
    columns.update({"target_l0_density": "target_l0", STOP_COLUMN: "stop"})
    reporter = tune.CLIReporter(metric_columns=columns, parameter_columns=["optuna_trial"], max_report_frequency=15)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=remaining,
            max_concurrent_trials=concurrency,
            reuse_actors=reuse_actors,
            scheduler=ctx.scheduler,
        ),
        run_config=tune.RunConfig(
            name=f"{sweep_name}-tune-{attempt}",
            storage_path=storage,
            callbacks=[mlflow_cb, make_failure_callback(ctx.limit, searcher.stopped), progress_cb],
            stop=make_stopper(ctx.limit, ctx.budget),
            failure_config=tune.FailureConfig(max_failures=base.system.max_failures if base.system.workers == 1 else 0),
            progress_reporter=reporter,
            verbose=1 if not opts.smoke else 0,
        ),
    )
    tuner.fit()


def _print_front(opts: SweepOptions, objectives, parent_id: str):
    """The front of this sweep, printed as a table and logged to the sweep's parent run
    (the same code as `python -m jepa_ray.pareto`)."""
    from jepa_ray import pareto

    try:
        result = pareto.extract(opts.tracking_uri, opts.experiment, sweep_run_ids=[parent_id], objectives=objectives)
    except (ValueError, LookupError) as err:  # UsageError included
        print(f"no Pareto front: {err}")
        return None
    print()
    print(pareto.format_table(result))
    try:
        pareto.log_to_parent(result, opts.tracking_uri, parent_id)
    except Exception as err:  # the table was printed; the artifact is a convenience
        logger.warning("could not log the front to the sweep run: %s", err)
    return result


def name_objectives(study, objectives) -> None:
    """Name the study's objectives, so optuna-dashboard shows `linear_acc` rather than
    'Objective 0' (an experimental Optuna call: its warning is not for the user)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names([o.name for o in objectives])


def sweep_description(opts: SweepOptions, objectives, sampler: str) -> str:
    """The parent run's description (MLflow's run page shows it): how to read the sweep."""
    goals = ", ".join(f"{o.name} ({'higher' if o.direction == 'max' else 'lower'} is better)" for o in objectives)
    reference = ", ".join(f"{o.name} = {0.0 if o.direction == 'max' else 1.0:g}" for o in objectives)
    scheduler = (
        f"the {opts.scheduler} scheduler stops dominated trials at rungs (their runs end KILLED, "
        "tag `jepa_ray.stopped` says where)"
        if opts.scheduler != "fifo"
        else "every trial runs to its last epoch unless the collapse guard stops it"
    )
    return (
        f"Sweep of the `{opts.space}` space with the {sampler} sampler; objectives {goals}. "
        f"Each nested run is one trial: its params are the resolved config, its per-epoch metrics "
        f"are at step = epoch, its final metrics are the objectives; {scheduler}.\n\n"
        f"This run's metric `sweep/hypervolume` is the hypervolume of the finished trials (reference "
        f"point {reference}) at step = trial-epochs spent. The Pareto front is in this run's artifacts "
        f"(`pareto/`: table, plot, calibration of measured against target l0); export its checkpoints "
        f"with `python -m jepa_ray.pareto --experiment {opts.experiment} --out DIR`."
    )


def mlflow_ui_command(tracking_uri: str, exp_id: str | None = None) -> str:
    """How to look at the sweep in MLflow. With the experiment, the link to its runs: MLflow
    3.17 opens an experiment on its GenAI overview unless the browser's view switch says
    otherwise (whatever the experiment's tags), and `workflowType=machine_learning` says so."""
    runs = f"#/experiments/{exp_id}/runs?workflowType=machine_learning" if exp_id else ""
    if tracking_uri.startswith("http"):
        return f"open {tracking_uri.rstrip('/')}/{runs} (or: ray attach cluster.yaml -p 5000)"
    command = f"mlflow ui --backend-store-uri {tracking_uri}"
    return f"{command}, then open http://127.0.0.1:5000/{runs}" if runs else command
