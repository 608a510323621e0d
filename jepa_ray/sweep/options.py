"""What a sweep is asked to do: `SweepOptions` (one field per command-line flag, its docstring the
flag's help), its checks, and the command-line parser generated from it."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import os
import re
import types
import typing
from dataclasses import dataclass, field

from jepa_ray import config as config_lib
from jepa_ray.contract import DEFAULT_OBJECTIVES
from jepa_ray.errors import UsageError

SAMPLERS = ("tpe", "tpe-rungs", "nsga2", "gp", "random", "grid")
SMOKE_REPLACES = ("digits", "digits-sweep")
"""Base presets that --smoke replaces with the tiny `smoke` preset (others keep theirs)."""
NO_FLAG = {"flag": False}
"""Field metadata of options that are not command-line flags."""


@dataclass
class SweepOptions:
    """Everything a sweep needs, from the command line of `sweeps/*.py`."""

    space: str = "rectified"
    """Search space: a module of search_spaces/ (or package.module) with space(trial)."""
    preset: str = "digits"
    """Base trial config that the space's suggestions override."""
    sets: list[str] = field(default_factory=list)
    """Fixed config override for every trial, KEY=VALUE (repeat the flag; keys as in
    python -m jepa_ray.train --list-keys)."""
    num_samples: int = 24
    """Trials in the sweep (in total, counting those a resumed sweep already finished)."""
    max_concurrent: int = 0
    """Trials at once (0: as many as the cluster's resources fit)."""
    dataset: str | None = None
    """Dataset: digits, cifar10, cifar100, imagefolder, parquet (default: the preset's)."""
    data_dir: str | None = None
    """Dataset directory."""
    backbone: str | None = None
    """timm model name (default: the preset's)."""
    epochs: int | None = None
    """Epochs per trial (default: the preset's)."""
    workers_per_trial: int = 1
    """DDP workers per trial (>1: a TorchTrainer per trial)."""
    gpus_per_worker: float = 0.0
    """GPUs per worker (0: CPU)."""
    cpus_per_worker: float = 1.0
    """CPUs per worker."""
    sampler: str | None = None
    """tpe | tpe-rungs (TPE that learns from trials stopped at rungs too) | nsga2 | gp | random | grid
    (default: the space's DEFAULT_SAMPLER, else tpe)."""
    objectives: str = DEFAULT_OBJECTIVES
    """Final metrics to optimize, metric:max|min, comma separated."""
    experiment: str = "rectified-lpjepa"
    """MLflow experiment."""
    tracking_uri: str = field(default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    """MLflow tracking URI (sqlite:///PATH, http://HOST:PORT of a tracking server, or a database such
    as postgresql://USER@HOST:PORT/DATABASE; default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."""
    tracking_patience: float = 120.0
    """Seconds a failing MLflow write is tried again (backing off) before the sweep stops with one
    line; --resume then records what MLflow missed. A tracking server on a busy head can take
    longer than one request's timeout to answer. An Optuna study on a database server that stops
    answering (restarted) is tried again as long."""
    optuna_storage: str | None = None
    """Optuna RDB storage URL: sqlite:///PATH, or postgresql://USER@HOST:PORT/DATABASE (a database of
    its own; the password from PGPASSWORD or ~/.pgpass, never in the URL) (default: optuna.db
    beside the MLflow sqlite store, else ~/.jepa_ray/optuna.db)."""
    storage_path: str = "ray_results"
    """Ray storage for trial checkpoints and Tune state (a directory, s3://..., or a shared path on a cluster)."""
    name: str | None = None
    """Sweep name (default: EXPERIMENT-YYYYmmdd-HHMMSS; with --resume, the newest sweep)."""
    seed: int | None = None
    """Sampler seed; trial i trains with seed + i (default: a fresh one, printed and recorded,
    so each run searches anew)."""
    resume: bool = False
    """Continue the newest (or --name) sweep of the experiment."""
    smoke: bool = False
    """A tiny sweep for tests: 2 trials of 1 epoch, one at a time (--num-samples, --max-concurrent
    and --epochs still apply)."""
    address: str | None = None
    """Ray cluster HOST:PORT, 'auto' (one started on this machine) or 'local' (default: $RAY_ADDRESS,
    else a cluster started with ray start / ray up, else a local instance of this sweep's own)."""
    max_failed_trials: int = 5
    """Stop the sweep after this many failed trials (0: never)."""
    max_trial_epochs: int = 0
    """Compute budget: stop once the trials trained this many epochs in all (0: none)."""
    scheduler: str = "fifo"
    """fifo (every trial runs to its end), moasha (multi-objective successive halving), ladder
    (successive halving on accuracy inside density bands), topk (one rung; only the top k seen
    there go on), asha (Tune's, on the first signal), or package.module:factory."""
    scheduler_eta: float = 3.0
    """Schedulers with rungs: a trial continues at a rung when in the top 1/eta of the trials that reached it."""
    scheduler_min_epochs: int = 0
    """Schedulers with rungs: the first rung, in epochs (0: a ninth of the epochs, at least 1); then x eta."""
    scheduler_top_k: int = 4
    """--scheduler topk: a trial goes on past the rung when fewer than this many ranked ahead there."""
    scheduler_signals: str = "online/linear_acc:max,train/l0_density:min"
    """Schedulers: the per-epoch metrics a rung ranks on, metric:max|min (they predict the objectives)."""
    replay: str | None = None
    """A curve table (python -m jepa_ray.curves): replay its recorded trials instead of
    training (no GPU; the space becomes the table's configurations)."""
    replay_speed: float = 0.0
    """With --replay: sleep each recorded epoch's wall time divided by this (0: no sleeping)."""
    verbose: bool = False
    """Print Tune's status table and Ray's own messages too."""
    print_front: bool = field(default=True, metadata=NO_FLAG)


FLAG_NAMES = {"sets": "--set"}
"""Fields whose flag is not their name with dashes."""
SCHEDULER_FLAGS = ("scheduler", "scheduler_eta", "scheduler_min_epochs", "scheduler_top_k", "scheduler_signals")
"""The scheduler's options: one argparse group, declared here once and reused by the sweep, the
what-if (`python -m jepa_ray.replay`) and the search benchmark."""


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
    if not opts.tracking_patience > 0:
        bad("--tracking-patience", opts.tracking_patience, "> 0 seconds")
    if opts.max_trial_epochs < 0:
        bad("--max-trial-epochs", opts.max_trial_epochs, ">= 0 (0: no budget)")
    if opts.data_dir and not os.path.isdir(opts.data_dir):
        bad("--data-dir", opts.data_dir, "an existing directory")
    if not opts.experiment.strip():
        bad("--experiment", opts.experiment, "a non-empty name")
    if opts.seed is not None and not 0 <= opts.seed < 2**31:
        bad("--seed", opts.seed, "0 .. 2^31 - 1")
    if opts.replay_speed < 0:
        bad("--replay-speed", opts.replay_speed, ">= 0 (0: no sleeping)")
    if opts.replay_speed and not opts.replay:
        bad("--replay-speed", opts.replay_speed, "only with --replay TABLE")


class ArgumentError(Exception):
    """A command line argparse rejects (main prints it as one line and exits 2)."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # exit 2 with one line, like every other bad input
        raise ArgumentError(_with_hint(message, self))


def _with_hint(message: str, p: argparse.ArgumentParser) -> str:
    """argparse's message, with 'did you mean --x?' for a misspelt flag and the --set form for a
    trial config key given as a flag."""
    match = re.match(r"unrecognized arguments: (\S+)", message)
    if not match:
        return message
    given = match.group(1).split("=", 1)[0]
    key = given.lstrip("-").replace("-", "_")
    if key in config_lib.LEAVES:
        return f"{given} is not a sweep option; trial config keys go through --set {key}=VALUE"
    flags = [s for a in p._actions for s in a.option_strings if s.startswith("--")]
    close = difflib.get_close_matches(given, flags, n=1, cutoff=0.6)
    if close:
        return f"unrecognized argument {given}; did you mean {close[0]}?"
    return message


def _flag(f: dataclasses.Field) -> str:
    return FLAG_NAMES.get(f.name, "--" + f.name.replace("_", "-"))


def _value_type(hint) -> type:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def parser(defaults: SweepOptions, prog: str | None = None) -> argparse.ArgumentParser:
    """The command line of a sweep, one flag per SweepOptions field (help: the field's doc)."""
    p = OneLineParser(
        prog=prog,
        description=f"Ray Tune + Optuna sweep of JEPA trials, recorded in MLflow (default space {defaults.space}, "
        f"preset {defaults.preset}, experiment {defaults.experiment}).",
        allow_abbrev=False,
    )
    for f in dataclasses.fields(SweepOptions):
        if f.metadata.get("flag", True) and f.name not in SCHEDULER_FLAGS:
            _add_flag(p, f, getattr(defaults, f.name))
    add_scheduler_flags(p, **{name: getattr(defaults, name) for name in SCHEDULER_FLAGS})
    return p


def add_scheduler_flags(p: argparse.ArgumentParser, names: tuple[str, ...] = SCHEDULER_FLAGS, **defaults) -> None:
    """The scheduler flags `names` (SweepOptions' fields, their docs the help) as one group of
    `p`; `defaults` overrides SweepOptions' defaults (the what-if asks about moasha)."""
    group = p.add_argument_group("scheduler")
    for f in dataclasses.fields(SweepOptions):
        if f.name in names:
            _add_flag(group, f, defaults.get(f.name, f.default))


@functools.cache
def _docs_and_types() -> tuple[dict[str, str], dict[str, type]]:
    hints = typing.get_type_hints(SweepOptions)
    return config_lib.dataclass_field_docs(SweepOptions), {name: _value_type(h) for name, h in hints.items()}


def _add_flag(p, f: dataclasses.Field, default) -> None:
    """One field's flag (its help: the field's docstring)."""
    docs, types_of = _docs_and_types()
    help_text = docs.get(f.name, "").replace("%", "%%")
    typ = types_of[f.name]
    if typ is bool:
        p.add_argument(_flag(f), dest=f.name, action="store_true", help=help_text)
    elif typing.get_origin(typ) is list:
        p.add_argument(_flag(f), dest=f.name, action="append", default=[], metavar="KEY=VALUE", help=help_text)
    else:
        shown = f" (default: {default})" if default not in (None, "") else ""
        p.add_argument(_flag(f), dest=f.name, type=typ, default=default, help=help_text + shown)
