"""Sweeps: Ray Tune + Optuna over trials that each train one JEPA encoder, every trial mirrored
into MLflow by the driver, resumable. `main` is the command line of sweeps/*.py, `jepa-sweep` and
`python -m jepa_ray.sweep`."""

from jepa_ray.contract import DEFAULT_OBJECTIVES
from jepa_ray.sweep.cli import LEJEPA, RECTIFIED, main
from jepa_ray.sweep.driver import base_config, mlflow_ui_command, optuna_storage_url, run_sweep
from jepa_ray.sweep.failures import FailureLimit, make_failure_callback, make_stopper
from jepa_ray.sweep.options import SAMPLERS, SMOKE_REPLACES, SweepOptions, parser, validate_options
from jepa_ray.sweep.resume import ResumeState, prepare_resume, recorded_base_config
from jepa_ray.sweep.search import (
    CHECKED_VERSIONS,
    JepaOptunaSearch,
    check_private_api,
    make_sampler,
    make_searcher,
    study_of,
)
from jepa_ray.sweep.spaces import DefineByRun, load_space, params_key, trial_config, validate_space
from jepa_ray.sweep.trial import trial_dir, trial_main, trial_resources

__all__ = [
    "CHECKED_VERSIONS",
    "DEFAULT_OBJECTIVES",
    "DefineByRun",
    "FailureLimit",
    "JepaOptunaSearch",
    "LEJEPA",
    "RECTIFIED",
    "ResumeState",
    "SAMPLERS",
    "SMOKE_REPLACES",
    "SweepOptions",
    "base_config",
    "check_private_api",
    "load_space",
    "main",
    "make_failure_callback",
    "make_sampler",
    "make_searcher",
    "make_stopper",
    "mlflow_ui_command",
    "optuna_storage_url",
    "params_key",
    "parser",
    "prepare_resume",
    "recorded_base_config",
    "run_sweep",
    "study_of",
    "trial_config",
    "trial_dir",
    "trial_main",
    "trial_resources",
    "validate_options",
    "validate_space",
]
