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

import argparse
import dataclasses
import hashlib
import importlib
import json
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from jepa_ray import config as config_lib
from jepa_ray.cluster import is_local_path
from jepa_ray.config import ConfigError, TrialConfig
from jepa_ray.pareto import DEFAULT_OBJECTIVES
from jepa_ray.tracking import EPOCH_PROBE_METRIC, is_final

logger = logging.getLogger("jepa_ray.sweep")

SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")
COLLAPSE_PREFIX = "collapse at epoch"  # how train.fit's collapse guard words its TrialFailure
SMOKE_REPLACES = ("digits", "digits-sweep")
"""Base presets that --smoke replaces with the tiny `smoke` preset (others keep theirs)."""


@dataclass
class SweepOptions:
    """Everything a sweep needs, from the command line of `sweeps/*.py`."""

    space: str = "rectified"
    """Search space: a module of search_spaces/ (or `package.module`) with `space(trial)`."""
    preset: str = "digits"
    """Base trial config that the space's suggestions override."""
    sets: list[str] = field(default_factory=list)
    """Fixed `key=value` overrides of the base config for every trial."""
    num_samples: int = 24
    """Trials in the sweep (in total, counting those a resumed sweep already finished)."""
    max_concurrent: int = 0
    """Trials at once (0: as many as the cluster's resources fit)."""
    dataset: str | None = None
    data_dir: str | None = None
    backbone: str | None = None
    epochs: int | None = None
    workers_per_trial: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    sampler: str | None = None
    """tpe | nsga2 | gp | random | grid (None: the space's DEFAULT_SAMPLER, else tpe)."""
    objectives: str = DEFAULT_OBJECTIVES
    experiment: str = "rectified-lpjepa"
    tracking_uri: str = "sqlite:///mlflow.db"
    optuna_storage: str | None = None
    """Optuna RDB storage URL (default: optuna.db beside a sqlite MLflow store)."""
    storage_path: str = "ray_results"
    """Ray storage for trial checkpoints and Tune state (s3://... or a shared path on a cluster)."""
    name: str | None = None
    """Sweep name (default: EXPERIMENT-YYYYmmdd-HHMMSS; with --resume, the newest sweep)."""
    seed: int = 0
    resume: bool = False
    smoke: bool = False
    address: str | None = None
    max_failed_trials: int = 5
    """Stop the sweep after this many failed trials (0: never)."""
    print_front: bool = True


# --------------------------------------------------------------------------------------------
# Search spaces


def load_space(name: str):
    """The module of a search space: `search_spaces.NAME`, or a dotted module path."""
    module_name = name if "." in name else f"search_spaces.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        available = sorted(p.stem for p in Path(__file__).resolve().parents[1].joinpath("search_spaces").glob("*.py")
                           if not p.stem.startswith("_"))
        raise ConfigError(f"unknown search space '{name}' ({err}); allowed: {', '.join(available)} "
                          "or a dotted module path with a space(trial) function") from err
    if not callable(getattr(module, "space", None)):
        raise ConfigError(f"search space '{name}': module {module_name} has no space(trial) function")
    return module


def params_key(params: dict[str, Any]) -> str:
    """A short stable id of a trial's sampled parameters (identifies a re-run trial)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class DefineByRun:
    """A space wrapped for OptunaSearch (picklable: Tune saves the searcher): the trial config
    carries the config overrides, the Optuna trial number, the per-trial seed and the params
    key."""

    def __init__(self, space: str, sweep_seed: int):
        self.space, self.sweep_seed = space, sweep_seed

    def __call__(self, trial) -> dict[str, Any]:
        overrides = dict(load_space(self.space).space(trial) or {})
        return {"overrides": overrides, "optuna_trial": trial.number,
                "seed": self.sweep_seed + trial.number, "params_key": params_key(trial.params)}


def trial_config(base: TrialConfig, trial: dict[str, Any]) -> TrialConfig:
    """The resolved config of one trial: base config + the space's overrides + its seed."""
    overrides = dict(trial.get("overrides", {}))
    if "seed" in trial:
        overrides["seed"] = trial["seed"]
    return config_lib.resolve(config_lib.apply_overrides(base, overrides))


def validate_space(module, base: TrialConfig, n: int = 200, seed: int = 0) -> int:
    """Run the space's STARTING_POINTS, then n random trials, through the space (no Ray) and
    check that every one gives a config the trainer accepts and that every starting point
    names only parameters the space suggests, with values inside their ranges. Returns the
    number of distinct trials seen; raises ConfigError."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    name = module.__name__.rsplit(".", 1)[-1]
    points = list(getattr(module, "STARTING_POINTS", []))
    for point in points:
        study.enqueue_trial(point)
    fn = DefineByRun(module.__name__, 0)
    seen = set()
    for i in range(len(points) + n):
        where = f"starting point {points[i]}: " if i < len(points) else ""
        trial = study.ask()
        try:
            with warnings.catch_warnings():  # an out-of-range starting point gets our one-line error
                warnings.filterwarnings("ignore", message="Fixed parameter", category=UserWarning)
                out = fn(trial)
            trial_config(base, out)
        except (ValueError, TypeError) as err:  # ConfigError; optuna: inverted ranges, bad choices
            raise ConfigError(f"search space '{name}': {where}{err}") from err
        if i < len(points):
            _check_starting_point(name, points[i], trial)
        seen.add(out["params_key"])
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return len(seen)


def _check_starting_point(space: str, point: dict, trial) -> None:
    """A starting point Optuna would silently ignore (a parameter the space does not suggest on
    that path) or take although it lies outside the space (Optuna only warns) is an error."""
    unused = sorted(set(point) - set(trial.params))
    if unused:
        raise ConfigError(f"search space '{space}': starting point {point} names parameters the space "
                          f"does not suggest: {', '.join(unused)}")
    for key, value in point.items():
        dist = trial.distributions[key]
        choices = getattr(dist, "choices", None)
        inside = value in choices if choices is not None else dist.low <= value <= dist.high
        if not inside:
            allowed = ", ".join(map(str, choices)) if choices is not None else f"[{dist.low}, {dist.high}]"
            raise ConfigError(f"search space '{space}': starting point {point}: {key}={value!r} is outside "
                              f"the space; allowed: {allowed}")


# --------------------------------------------------------------------------------------------
# The trial (runs in a Tune trial actor)


def trial_dir(storage: str, sweep: str, number: int) -> str:
    """Where trial `number` of a sweep keeps its checkpoints (a jepa_ray.checkpoint.TrialStore)."""
    return f"{storage.rstrip('/')}/{sweep}/trials/{number:05d}"


def trial_main(trial: dict[str, Any], *, base: dict, storage: str, sweep: str,
               resume_map: dict[str, str], fault=None) -> None:
    """A Tune function trial: train one config with `run_trial` and report per-epoch then final
    metrics. One worker trains in this actor and reports through tune.report; several train
    under a TorchTrainer whose controller forwards rank 0's reports to this trial
    (TuneReportCallback: a report reaches Tune only once Ray Train registered it)."""
    from ray import tune

    from jepa_ray.train import TrialFailure, run_trial

    cfg = trial_config(config_lib.from_dict(base), trial)
    callbacks = []
    if cfg.system.workers > 1:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks = [TuneReportCallback()]
    try:
        run_trial(cfg, trial_dir(storage, sweep, trial.get("optuna_trial", 0)),
                  resume_from=resume_map.get(trial.get("params_key", "")), report=tune.report, fault=fault,
                  ray_callbacks=callbacks)
    except (TrialFailure, ConfigError) as err:
        tune.report({"failure": str(err)})


# --------------------------------------------------------------------------------------------
# Optuna


def make_sampler(name: str, seed: int, grid: dict | None = None):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        if not grid:
            raise ConfigError("--sampler grid needs a space with a GRID dict (e.g. --space grid)")
        return optuna.samplers.GridSampler(grid, seed=seed)
    raise ConfigError(f"--sampler {name!r} is not allowed; allowed: {', '.join(SAMPLERS)}")


def optuna_storage_url(opts: SweepOptions) -> str:
    """The study's RDB storage: optuna.db beside a sqlite MLflow store (so optuna-dashboard
    opens it next to `mlflow ui`), else ~/.jepa_ray/optuna.db."""
    if opts.optuna_storage:
        return opts.optuna_storage
    uri = opts.tracking_uri
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):].split("?", 1)[0]).resolve()
        return f"sqlite:///{path.with_name('optuna.db')}"
    # A tracking server (cluster head): a stable path, not the working directory, which is a
    # temporary copy inside a Ray job.
    home = Path("~/.jepa_ray").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'optuna.db'}"


class JepaOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna FAIL for a trial that failed, PRUNED for one the collapse
    guard stopped, and records the Tune trial id on the Optuna trial.

    PRUNED rather than FAIL because samplers learn from pruned trials and not from failed
    ones: TPE ranks them below every complete trial, so it stops proposing the small-lambda
    corner where z collapses instead of sampling it again and again."""

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
        return params

    @property
    def suggested(self) -> int:
        """Trials suggested (started) in this run of the sweep."""
        return len(self._ot_trials)

    def fail_unfinished(self, why: str) -> int:
        """Tell FAIL (marked `stopped`, so that --resume runs them again) for the suggested
        trials whose end Tune never reported: those it stopped when the sweep stopped."""
        count = 0
        for trial_id, ot_trial in self._ot_trials.items():
            if trial_id in self._completed_trials:
                continue
            ot_trial.set_user_attr("stopped", True)
            ot_trial.set_user_attr("failure", why)
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            self._completed_trials.add(trial_id)
            count += 1
        return count

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            failed = error or not result or result.get("failure") or any(
                not _finite(result.get(m)) for m in self.metric)
            if failed:
                ot_trial = self._ot_trials[trial_id]
                why = str(result.get("failure") or "") if result else ""
                if why:
                    ot_trial.set_user_attr("failure", why[:1000])
                collapsed = not error and why.startswith(COLLAPSE_PREFIX)
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED if collapsed else TrialState.FAIL)
                self._completed_trials.add(trial_id)
                return
        super().on_trial_complete(trial_id, result, error)



def make_searcher(space_fn, objectives, sampler, study_name: str, storage_url: str) -> JepaOptunaSearch:
    import optuna

    storage = optuna.storages.RDBStorage(storage_url, engine_kwargs={"connect_args": {"timeout": 30}}
                                         if storage_url.startswith("sqlite") else {})
    return JepaOptunaSearch(space=space_fn, metric=[o.name for o in objectives],
                            mode=[o.direction for o in objectives], sampler=sampler,
                            study_name=study_name, storage=storage)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# --------------------------------------------------------------------------------------------
# Resume


@dataclass
class ResumeState:
    finished: int = 0
    reuse_runs: dict[str, str] = field(default_factory=dict)  # params key -> MLflow run id
    resume_map: dict[str, str] = field(default_factory=dict)  # params key -> checkpoint URI


def prepare_resume(study, tracking_uri: str, exp_id: str, parent_run_id: str) -> ResumeState:
    """Make an interrupted sweep resumable: trials that were running (or that a stopped sweep
    stopped) are marked FAIL (interrupted) in Optuna and enqueued again with the same
    parameters; their MLflow runs are reused (no duplicates) and resume from their last
    checkpoint."""
    from optuna.trial import TrialState

    from jepa_ray import tracking

    state = ResumeState()
    runs = tracking.trial_runs(tracking_uri, exp_id, parent_run_id)
    by_key = {r.data.tags.get(tracking.PARAMS_KEY): r for r in runs}
    c = tracking.client(tracking_uri)
    trials = study.get_trials(deepcopy=False)
    requeued = {t.user_attrs.get("resumed_from_trial") for t in trials}
    for t in trials:
        key = params_key(t.params)
        run = by_key.get(key)
        stopped = t.state == TrialState.FAIL and t.user_attrs.get("stopped") and t.number not in requeued
        if t.state == TrialState.RUNNING or stopped:
            if t.state == TrialState.RUNNING:
                study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"resumed_from_trial": t.number}, skip_if_exists=False)
            if run is not None:
                state.reuse_runs[key] = run.info.run_id
                where = run.data.tags.get(tracking.TRIAL_DIR) or run.data.tags.get(tracking.LAST_CHECKPOINT)
                if where:
                    state.resume_map[key] = where
                    _log_missing_epochs(c, run.info.run_id, where)
        elif t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                t.state == TrialState.FAIL and not t.user_attrs.get("interrupted") and not t.user_attrs.get("stopped")):
            state.finished += 1
            if run is not None and run.info.status == "RUNNING":
                # Optuna heard of the end but the driver died before MLflow did.
                finished = t.state == TrialState.COMPLETE and "linear_acc" in run.data.metrics
                if not finished:
                    c.set_tag(run.info.run_id, tracking.FAILURE, "interrupted before the trial's end was recorded")
                c.set_terminated(run.info.run_id, "FINISHED" if finished else "FAILED")
    return state


def _log_missing_epochs(c, run_id: str, where: str) -> None:
    """Log the epochs the interrupted trial's newest checkpoint holds but its MLflow run lacks.

    The driver logs an epoch once a checkpoint covers it (tracking.EpochLog); a driver killed
    between a trial's checkpoint and the driver's write leaves the checkpoint ahead of MLflow,
    and the resumed trial starts after it. Those epochs are in the checkpoint's history."""
    from jepa_ray import checkpoint as ckpt_lib
    from jepa_ray import tracking
    from jepa_ray.train import resumable_checkpoint

    try:
        checkpoint = resumable_checkpoint(where)
        history = ckpt_lib.read_history(checkpoint) if checkpoint else []
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        logger.warning("could not read the epoch history of %s: %s", where, err)
        return
    logged = {m.step for m in c.get_metric_history(run_id, EPOCH_PROBE_METRIC)}
    for metrics in history:
        if metrics["epoch"] not in logged:
            tracking.log_metrics(c, run_id, {k: v for k, v in metrics.items() if k != "epoch"}, step=metrics["epoch"])


# --------------------------------------------------------------------------------------------
# Failure limit


class FailureLimit:
    """Counts failed trials (errors and reported failures) and stops the sweep at a limit.
    Trials the collapse guard stopped are counted apart: they say the hyperparameters are bad,
    not that the sweep keeps failing."""

    def __init__(self, limit: int):
        self.limit, self.failed, self.reasons, self.collapsed, self.finished = limit, 0, [], 0, 0

    def record(self, why: str) -> None:
        if why.startswith(COLLAPSE_PREFIX):
            self.collapsed += 1
            return
        self.failed += 1
        self.reasons.append(why)

    @property
    def reached(self) -> bool:
        return self.limit > 0 and self.failed >= self.limit


def make_failure_callback(limit: FailureLimit):
    from ray.tune import Callback

    from jepa_ray.tracking import one_line, trial_error_text

    class FailureCounter(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            if result.get("failure"):
                limit.record(one_line(result["failure"]))
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


# --------------------------------------------------------------------------------------------
# The driver


def base_config(opts: SweepOptions) -> TrialConfig:
    """Preset + fixed overrides + the CLI shortcuts (validated: a bad value exits 2)."""
    cfg = config_lib.preset("smoke" if opts.smoke and opts.preset in SMOKE_REPLACES else opts.preset)
    overrides = config_lib.parse_set_args(opts.sets)
    for key, value in (("dataset", opts.dataset), ("data_dir", opts.data_dir), ("backbone", opts.backbone),
                       ("epochs", opts.epochs)):
        if value is not None:
            overrides[key] = value
    overrides.update(workers=opts.workers_per_trial, gpus_per_worker=opts.gpus_per_worker,
                     cpus_per_worker=opts.cpus_per_worker)
    cfg = config_lib.apply_overrides(cfg, overrides)
    if opts.smoke:
        cfg.optim.epochs, cfg.optim.warmup_epochs = 1, 0.0
    config_lib.resolve(cfg)  # validates
    return cfg


def recorded_base_config(parent_run, given: TrialConfig) -> TrialConfig:
    """The base config a sweep started with (its parent run's `base.*` params): a resumed sweep
    trains its remaining trials like its first ones, whatever --preset/--set say now."""
    recorded = {k[len("base."):]: v for k, v in parent_run.data.params.items() if k.startswith("base.")}
    if not recorded:
        return given
    cfg = config_lib.apply_overrides(config_lib.TrialConfig(), recorded)
    kept, now = config_lib.flatten(cfg), config_lib.flatten(given)
    changed = sorted(k for k, v in now.items() if str(v) != str(kept[k]))
    if changed:
        logger.warning("--resume: keeping the sweep's recorded base config; ignoring the given %s",
                       ", ".join(f"{k}={now[k]}" for k in changed))
    return cfg


def validate_options(opts: SweepOptions) -> None:
    def bad(flag: str, value, allowed: str):
        raise ConfigError(f"{flag} {value!r} is not allowed; allowed: {allowed}")

    if opts.num_samples < 1:
        bad("--num-samples", opts.num_samples, ">= 1")
    if opts.max_concurrent < 0:
        bad("--max-concurrent", opts.max_concurrent, ">= 0 (0: from the cluster's resources)")
    if opts.workers_per_trial < 1:
        bad("--workers-per-trial", opts.workers_per_trial, ">= 1")
    if opts.gpus_per_worker < 0:
        bad("--gpus-per-worker", opts.gpus_per_worker, ">= 0")
    if opts.cpus_per_worker <= 0:
        bad("--cpus-per-worker", opts.cpus_per_worker, "> 0")
    if opts.sampler is not None and opts.sampler not in SAMPLERS:
        bad("--sampler", opts.sampler, ", ".join(SAMPLERS))
    if opts.max_failed_trials < 0:
        bad("--max-failed-trials", opts.max_failed_trials, ">= 0 (0: never stop)")
    if opts.data_dir and not os.path.isdir(opts.data_dir):
        bad("--data-dir", opts.data_dir, "an existing directory")
    if not opts.experiment.strip():
        bad("--experiment", opts.experiment, "a non-empty name")


def trial_resources(cfg: TrialConfig) -> dict[str, float]:
    """What Tune reserves for a trial: the worker itself when it trains in-process; next to
    nothing when a TorchTrainer reserves its workers separately (both must fit: see
    cluster.check_trial_fits)."""
    from jepa_ray.cluster import TRIAL_ACTOR_CPUS

    if cfg.system.workers == 1:
        res = {"CPU": cfg.system.cpus_per_worker}
        if cfg.system.gpus_per_worker:
            res["GPU"] = cfg.system.gpus_per_worker
        return res
    return {"CPU": TRIAL_ACTOR_CPUS}


def run_sweep(opts: SweepOptions) -> dict[str, Any]:
    """Run (or resume) a sweep; returns a summary. Raises ConfigError on bad input before any
    trial starts."""
    import optuna

    from jepa_ray import cluster, pareto, tracking

    validate_options(opts)
    try:
        objectives = pareto.parse_objectives(opts.objectives)
    except ValueError as err:  # the message already names --objectives and what is allowed
        raise ConfigError(str(err)) from err
    cluster.check_tracking_uri(opts.tracking_uri, multi_node=False)  # cheap: fail fast
    from jepa_ray import faults

    fault = faults.from_env()
    base = base_config(opts)
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
            raise ConfigError(f"--resume: no {which} in experiment '{opts.experiment}' "
                              f"at {opts.tracking_uri}; start one without --resume")
        sweep_name = parent.data.tags[tracking.SWEEP_NAME]
        parent_id = parent.info.run_id
        recorded = recorded_base_config(parent, base)
        if recorded != base:
            base = recorded
            validate_space(module, base, n=50, seed=opts.seed)
    else:
        sweep_name = opts.name or f"{opts.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
        if tracking.find_sweep_run(opts.tracking_uri, exp_id, sweep_name) is not None:
            raise ConfigError(f"--name {sweep_name!r}: a sweep of that name exists; use --resume or another name")
        parent_id = None

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    cluster.connect(opts.address, num_cpus=os.cpu_count())
    # An autoscaling cluster may be only its head now: count the nodes it can grow to.
    nodes = cluster.max_node_count()
    cluster.check_storage_path(storage, nodes)
    capacity = cluster.capacity()
    demand = cluster.trial_demand(base, in_tune=True)
    cluster.check_trial_fits(demand, capacity)
    concurrency = opts.max_concurrent or max(1, cluster.copies_that_fit(demand, capacity))
    if parent_id is not None:
        tracking.client(opts.tracking_uri).update_run(parent_id, status="RUNNING")

    searcher = make_searcher(DefineByRun(module.__name__, opts.seed), objectives, sampler,
                             sweep_name, storage_url)
    study = searcher._ot_study
    if parent_id is None:
        parent_id = tracking.start_sweep_run(
            opts.tracking_uri, exp_id, sweep_name,
            tags={"jepa_ray.git_commit": tracking.git_commit(Path(__file__).resolve().parent),
                  "jepa_ray.sampler": sampler_name, "jepa_ray.sampler_seed": str(opts.seed),
                  "jepa_ray.space": opts.space, "jepa_ray.optuna_storage": storage_url,
                  "jepa_ray.storage_path": storage, "jepa_ray.objectives": opts.objectives},
            params={"space": opts.space, "sampler": sampler_name, "seed": opts.seed, "num_samples": num_samples,
                    **{f"base.{k}": v for k, v in config_lib.flatten(base).items()}})
        for point in getattr(module, "STARTING_POINTS", [])[:num_samples]:
            study.enqueue_trial(point)
        resume = ResumeState()
    else:
        resume = prepare_resume(study, opts.tracking_uri, exp_id, parent_id)
    tracking.client(opts.tracking_uri).set_tag(parent_id, "jepa_ray.max_concurrent", str(concurrency))
    remaining = max(0, num_samples - resume.finished)

    limit = FailureLimit(opts.max_failed_trials)
    summary: dict[str, Any] = {"sweep": sweep_name, "parent_run_id": parent_id, "experiment": opts.experiment,
                               "tracking_uri": opts.tracking_uri, "optuna_storage": storage_url,
                               "already_finished": resume.finished, "launched": remaining,
                               "max_concurrent": concurrency}
    if remaining > 0:
        _run_tuner(opts, base, storage, sweep_name, searcher, remaining, concurrency, exp_id, parent_id,
                   resume, limit, fault)
        # Trials Tune stopped (the failure limit, Ctrl-C) end without a report: close them.
        why = (f"stopped before its end: the sweep stopped after {limit.failed} failed trials" if limit.reached
               else "stopped before its end: the sweep ended first")
        searcher.fail_unfinished(why)
        tracking.fail_running_trials(opts.tracking_uri, exp_id, parent_id, why)
        summary["launched"] = searcher.suggested
    c = tracking.client(opts.tracking_uri)
    status = "FAILED" if limit.reached else "FINISHED"
    if limit.reached:
        c.set_tag(parent_id, tracking.FAILURE, f"stopped after {limit.failed} failed trials; last: {limit.reasons[-1]}")
    c.set_terminated(parent_id, status)
    summary.update(failed=limit.failed, failure_reasons=limit.reasons, stopped_on_failures=limit.reached,
                   collapsed=limit.collapsed, finished=limit.finished)
    if opts.print_front:
        summary["front"] = _print_front(opts, objectives, parent_id)
    return summary


def _run_tuner(opts, base, storage, sweep_name, searcher, remaining, concurrency, exp_id, parent_id,
               resume: ResumeState, limit: FailureLimit, fault) -> None:
    from ray import tune

    from jepa_ray import tracking

    # The objectives are final metrics: per-epoch results and a failure report do not carry
    # them, and Tune's strict check (read by the controller, in this process) would end the
    # whole sweep at the first such result. The searcher only reads the final result.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    attempt = time.strftime("%Y%m%d-%H%M%S")
    base_dict = config_lib.to_dict(base)
    trainable = tune.with_parameters(trial_main, base=base_dict, storage=storage, sweep=sweep_name,
                                     resume_map=resume.resume_map, fault=fault)
    trainable = tune.with_resources(trainable, trial_resources(base))
    mlflow_cb = tracking.make_callback(opts.tracking_uri, exp_id, parent_id,
                                       lambda trial: trial_config(base, trial), resume.reuse_runs,
                                       trial_dir=lambda trial: trial_dir(storage, sweep_name, trial.get("optuna_trial", 0)))
    # An in-process trial's actor is reused by the next trial: a fresh one costs a worker
    # process, importing torch/timm and the trainer (~10 s on a small CPU, more than a digits
    # trial trains). A multi-worker trial's actor only drives a TorchTrainer: nothing to keep.
    reuse_actors = base.system.workers == 1
    reporter = tune.CLIReporter(metric_columns={"epoch": "epoch", "train/loss": "loss",
                                                "linear_acc": "linear_acc", "l0_density": "l0",
                                                "target_l0_density": "target_l0"},
                                parameter_columns=["optuna_trial"], max_report_frequency=15)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining,
                                    max_concurrent_trials=concurrency, reuse_actors=reuse_actors),
        run_config=tune.RunConfig(
            name=f"{sweep_name}-tune-{attempt}", storage_path=storage,
            callbacks=[mlflow_cb, make_failure_callback(limit)], stop=make_stopper(limit),
            failure_config=tune.FailureConfig(max_failures=base.system.max_failures if base.system.workers == 1 else 0),
            progress_reporter=reporter, verbose=1 if not opts.smoke else 0,
        ),
    )
    tuner.fit()


def _print_front(opts: SweepOptions, objectives, parent_id: str):
    """The front of this sweep, printed as a table and logged to the sweep's parent run
    (the same code as `python -m jepa_ray.pareto`)."""
    from jepa_ray import pareto

    try:
        result = pareto.extract(opts.tracking_uri, opts.experiment, sweep_run_ids=[parent_id],
                                objectives=objectives)
    except (ConfigError, ValueError, LookupError) as err:
        print(f"no Pareto front: {err}")
        return None
    print()
    print(pareto.format_table(result))
    try:
        pareto.log_to_parent(result, opts.tracking_uri, parent_id)
    except Exception as err:  # the table was printed; the artifact is a convenience
        logger.warning("could not log the front to the sweep run: %s", err)
    return result


def mlflow_ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith("http"):
        return f"open {tracking_uri} (or: ray attach cluster.yaml -p 5000)"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


# --------------------------------------------------------------------------------------------
# Command line (sweeps/rectified.py and sweeps/lejepa.py are thin wrappers around main)


def parser(defaults: SweepOptions) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Ray Tune + Optuna sweep of JEPA trials, recorded in MLflow.")
    a = p.add_argument
    a("--space", default=defaults.space, help="search space module in search_spaces/ (default: %(default)s)")
    a("--preset", default=defaults.preset, help=f"base config ({', '.join(config_lib.PRESETS)})")
    a("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="fixed config override for every trial")
    a("--num-samples", type=int, default=defaults.num_samples, help="trials in total (default: %(default)s)")
    a("--max-concurrent", type=int, default=defaults.max_concurrent, help="trials at once (default: what the cluster fits)")
    a("--dataset", help="digits | cifar10 | cifar100 | imagefolder | parquet")
    a("--data-dir", help="dataset directory")
    a("--backbone", help="timm model name")
    a("--epochs", type=int, help="epochs per trial")
    a("--workers-per-trial", type=int, default=defaults.workers_per_trial, help="DDP workers per trial (>1: a TorchTrainer per trial)")
    a("--gpus-per-worker", type=float, default=defaults.gpus_per_worker, help="GPUs per worker (0: CPU)")
    a("--cpus-per-worker", type=float, default=defaults.cpus_per_worker, help="CPUs per worker")
    a("--sampler", default=defaults.sampler, help=f"{' | '.join(SAMPLERS)} (default: the space's, else tpe)")
    a("--objectives", default=defaults.objectives, help="metric:max|min,... (default: %(default)s)")
    a("--experiment", default=defaults.experiment, help="MLflow experiment (default: %(default)s)")
    a("--tracking-uri", default=defaults.tracking_uri, help="MLflow tracking URI (default: %(default)s)")
    a("--optuna-storage", help="Optuna RDB URL (default: optuna.db beside the MLflow sqlite store)")
    a("--storage-path", default=defaults.storage_path, help="Ray storage: a directory, s3://... (default: %(default)s)")
    a("--name", help="sweep name (default: EXPERIMENT-TIMESTAMP; with --resume: the newest sweep)")
    a("--seed", type=int, default=defaults.seed, help="sampler seed; trial i trains with seed + i")
    a("--resume", action="store_true", help="continue the newest (or --name) sweep of the experiment")
    a("--smoke", action="store_true", help="a tiny sweep for tests: 2 trials of 1 epoch")
    a("--address", help="Ray cluster (default: connect if one runs, else start a local one)")
    a("--max-failed-trials", type=int, default=defaults.max_failed_trials, help="stop after this many failed trials (0: never)")
    return p


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit 2 with one line, like every other bad input
        raise _ArgumentError(message)


def main(argv: list[str] | None = None, **defaults: Any) -> int:
    """Entry point of the sweep scripts; `defaults` set the space, preset and experiment."""
    base_defaults = SweepOptions(**defaults)
    p = parser(base_defaults)
    p.__class__ = _Parser
    try:
        args = p.parse_args(argv)
    except _ArgumentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    opts = dataclasses.replace(base_defaults, **vars(args))
    if opts.smoke and "--num-samples" not in (argv or sys.argv):
        opts.num_samples = 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ray_was_running = _ray_initialized()
    try:
        summary = run_sweep(opts)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if not ray_was_running:  # leave the caller's Ray session (a notebook, a test) alone
            _shutdown_ray()
    print()
    print(f"sweep {summary['sweep']}: {summary['launched']} trials launched, "
          f"{summary['already_finished']} already finished, {summary['failed']} failed, "
          f"{summary['collapsed']} stopped by the collapse guard, {summary['finished']} finished")
    if summary["stopped_on_failures"]:
        print(f"stopped after {summary['failed']} failed trials (--max-failed-trials); reasons:")
        for why in summary["failure_reasons"]:
            print(f"  - {why}")
    print(f"MLflow: {mlflow_ui_command(opts.tracking_uri)}")
    print(f"Optuna: optuna-dashboard {summary['optuna_storage']}")
    if summary["launched"] and not summary["finished"]:
        print("no trial of this run finished", file=sys.stderr)
        return 1
    return 1 if summary["stopped_on_failures"] else 0


def _ray_initialized() -> bool:
    import ray

    return ray.is_initialized()


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:
        pass
