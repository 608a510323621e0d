"""Sweeps: Ray Tune + Optuna over trials that each train one JEPA encoder (or replay a recorded
one), every trial mirrored into MLflow by the driver, each trial's end classified once by the
outcome ledger, resumable. `main` is the command line of sweeps/*.py, `jepa-sweep` and
`python -m jepa_ray.sweep`; `plan` + `execute` (or `run_sweep`) the library's."""

from jepa_ray.contract import DEFAULT_OBJECTIVES
from jepa_ray.sweep.cli import LEJEPA, RECTIFIED, main
from jepa_ray.sweep.driver import SweepPlan, base_config, execute, plan, run_sweep
from jepa_ray.sweep.failures import FailureLimit
from jepa_ray.sweep.options import SAMPLERS, SweepOptions
from jepa_ray.sweep.resume import prepare_resume, recorded_base_config
from jepa_ray.sweep.schedulers import SCHEDULERS, LedgerScheduler, register_scheduler
from jepa_ray.sweep.search import make_sampler, make_searcher
from jepa_ray.sweep.spaces import DefineByRun, load_space, trial_config, validate_space
from jepa_ray.trial_spec import TrialSpec, params_key

__all__ = [
    "DEFAULT_OBJECTIVES",
    "DefineByRun",
    "FailureLimit",
    "LEJEPA",
    "LedgerScheduler",
    "RECTIFIED",
    "SAMPLERS",
    "SCHEDULERS",
    "SweepOptions",
    "SweepPlan",
    "TrialSpec",
    "base_config",
    "execute",
    "load_space",
    "main",
    "make_sampler",
    "make_searcher",
    "params_key",
    "plan",
    "prepare_resume",
    "recorded_base_config",
    "register_scheduler",
    "run_sweep",
    "trial_config",
    "validate_space",
]
