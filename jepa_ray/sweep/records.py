"""The sweep's records in MLflow and Optuna: where the study lives, the parent run a new sweep
starts, the run of a trial that MLflow never heard of (recreated on --resume), the objectives'
names in the study."""

from __future__ import annotations

from pathlib import Path

from jepa_ray import config as config_lib
from jepa_ray import contract as C
from jepa_ray import tracking
from jepa_ray.cluster import sqlite_path
from jepa_ray.sweep.describe import sweep_description
from jepa_ray.sweep.options import SweepOptions
from jepa_ray.sweep.planning import SweepPlan
from jepa_ray.sweep.spaces import trial_config
from jepa_ray.sweep.trial import trial_dir
from jepa_ray.trial_spec import TrialSpec


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
    return f"sqlite:///{Path('~/.jepa_ray').expanduser() / 'optuna.db'}"


def start_parent(sweep: SweepPlan, exp_id: str) -> str:
    opts = sweep.opts
    tags = {
        C.SWEEP_COMMIT: tracking.git_commit(Path(__file__).resolve().parent),
        C.SWEEP_SAMPLER: sweep.sampler_name,
        C.SWEEP_SAMPLER_SEED: str(sweep.seed),
        C.SWEEP_SPACE: opts.space if sweep.replay is None else f"replay:{opts.replay}",
        C.SWEEP_OPTUNA_STORAGE: sweep.storage_url,
        C.SWEEP_STORAGE_PATH: sweep.storage,
        C.SWEEP_OBJECTIVES: opts.objectives,
        C.DESCRIPTION: sweep_description(opts, sweep.objectives, sweep.sampler_name),
        **tracking.source_tags(),
    }
    if sweep.replay is not None:
        tags[C.SWEEP_REPLAY] = str(Path(opts.replay).resolve())
    return tracking.start_sweep_run(
        opts.tracking_uri,
        exp_id,
        sweep.name,
        tags=tags,
        params={
            "space": tags[C.SWEEP_SPACE],
            "sampler": sweep.sampler_name,
            "seed": sweep.seed,
            "num_samples": opts.num_samples,
            **{f"base.{k}": v for k, v in config_lib.flatten(sweep.base).items()},
        },
    )


def recreate_run(sweep: SweepPlan, exp_id: str, parent_id: str):
    """optuna trial -> the MLflow run the driver would have made for it (RUNNING, its params and
    tags), for a trial Optuna knows and MLflow never heard of."""
    from optuna.trial import FixedTrial

    c = tracking.client(sweep.opts.tracking_uri)

    def recreate(t):
        fixed = FixedTrial(t.params, t.number)
        if C.ATTR_FIRST_TRIAL in t.user_attrs:
            fixed.set_user_attr(C.ATTR_FIRST_TRIAL, t.user_attrs[C.ATTR_FIRST_TRIAL])
        spec = TrialSpec.from_config(sweep.space(fixed))
        cfg = sweep.replay.trial_config(spec) if sweep.replay is not None else trial_config(sweep.base, spec)
        tags = {
            C.ROLE: C.ROLE_TRIAL,
            C.PARENT: parent_id,
            C.PARAMS_KEY: spec.params_key,
            C.TRIAL_KEY: spec.trial_key,
            C.OPTUNA_TRIAL: str(t.number),
            **tracking.source_tags(),
        }
        if sweep.replay is None:
            tags[C.TRIAL_DIR] = trial_dir(sweep.storage, sweep.name, t.number)
        run_id = c.create_run(exp_id, run_name=f"trial-{t.number}", tags=tags).info.run_id
        tracking.log_params(c, run_id, config_lib.flatten(cfg))
        return c.get_run(run_id)

    return recreate


def make_storage_dir(url: str) -> None:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def name_objectives(study, objectives) -> None:
    """Name the study's objectives, so optuna-dashboard shows `linear_acc` rather than
    'Objective 0' (an experimental Optuna call: its warning is not for the user)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names([o.name for o in objectives])
