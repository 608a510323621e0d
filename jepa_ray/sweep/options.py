"""What a sweep is asked to do: `SweepOptions` (one field per command-line flag, with its doc),
its checks, and the command-line parser built from it."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from jepa_ray import config as config_lib
from jepa_ray.contract import DEFAULT_OBJECTIVES
from jepa_ray.errors import UsageError

SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")
SCHEDULERS = ("fifo", "moasha")
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
    max_trial_epochs: int = 0
    """Stop the sweep once its trials trained this many epochs in all (a compute budget; 0: none)."""
    scheduler: str = "fifo"
    """fifo (every trial runs to its end) or moasha (multi-objective successive halving)."""
    scheduler_eta: float = 3.0
    """moasha: a trial continues at a rung when in the top 1/eta of the trials that reached it."""
    scheduler_min_epochs: int = 0
    """moasha: the first rung, in epochs (0: a ninth of the epochs, at least 1); then x eta."""
    scheduler_signals: str = "online/linear_acc:max,train/l0_density:min"
    """moasha: the per-epoch metrics a rung ranks on, metric:max|min (they predict the objectives)."""
    print_front: bool = True


def validate_options(opts: SweepOptions) -> None:
    def bad(flag: str, value, allowed: str):
        raise UsageError(f"{flag} {value!r} is not allowed; allowed: {allowed}")

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
    if opts.max_trial_epochs < 0:
        bad("--max-trial-epochs", opts.max_trial_epochs, ">= 0 (0: no budget)")
    if opts.scheduler not in SCHEDULERS:
        bad("--scheduler", opts.scheduler, ", ".join(SCHEDULERS))
    if opts.data_dir and not os.path.isdir(opts.data_dir):
        bad("--data-dir", opts.data_dir, "an existing directory")
    if not opts.experiment.strip():
        bad("--experiment", opts.experiment, "a non-empty name")


class ArgumentError(Exception):
    """A command line argparse rejects (main prints it as one line and exits 2)."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # exit 2 with one line, like every other bad input
        raise ArgumentError(message)


def parser(defaults: SweepOptions) -> argparse.ArgumentParser:
    p = OneLineParser(description="Ray Tune + Optuna sweep of JEPA trials, recorded in MLflow.")
    a = p.add_argument
    a("--space", default=defaults.space, help="search space module in search_spaces/ (default: %(default)s)")
    a("--preset", default=defaults.preset, help=f"base config ({', '.join(config_lib.PRESETS)})")
    a(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fixed config override for every trial",
    )
    a("--num-samples", type=int, default=defaults.num_samples, help="trials in total (default: %(default)s)")
    a(
        "--max-concurrent",
        type=int,
        default=defaults.max_concurrent,
        help="trials at once (default: what the cluster fits)",
    )
    a("--dataset", help="digits | cifar10 | cifar100 | imagefolder | parquet")
    a("--data-dir", help="dataset directory")
    a("--backbone", help="timm model name")
    a("--epochs", type=int, help="epochs per trial")
    a(
        "--workers-per-trial",
        type=int,
        default=defaults.workers_per_trial,
        help="DDP workers per trial (>1: a TorchTrainer per trial)",
    )
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
    a(
        "--max-failed-trials",
        type=int,
        default=defaults.max_failed_trials,
        help="stop after this many failed trials (0: never)",
    )
    a(
        "--max-trial-epochs",
        type=int,
        default=defaults.max_trial_epochs,
        help="compute budget: stop once the trials trained this many epochs in all (0: none)",
    )
    a("--scheduler", default=defaults.scheduler, help=f"{' | '.join(SCHEDULERS)} (default: %(default)s)")
    a("--scheduler-eta", type=float, default=defaults.scheduler_eta, help="moasha: keep the top 1/eta at a rung")
    a(
        "--scheduler-min-epochs",
        type=int,
        default=defaults.scheduler_min_epochs,
        help="moasha: first rung in epochs (0: a ninth of the epochs)",
    )
    a("--scheduler-signals", default=defaults.scheduler_signals, help="moasha: metric:max|min,... ranked at a rung")
    return p
