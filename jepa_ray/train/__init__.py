"""Training one trial: the step (`train_step` on a `TrainModule`), the loop of one worker
(`fit`), the optimizer and schedule, the collapse guard, checkpoints and where a trial keeps
them, and the one runner for the command line and the sweep (`run_trial`)."""

from jepa_ray.contract import EPOCH_METRICS, FINAL_METRICS, HEADLINE_METRICS
from jepa_ray.train.guard import TrialFailure, check_collapse, check_finite, collapse_reason
from jepa_ray.train.loop import Reporter, final_evaluation, fit
from jepa_ray.train.runner import LocalReporter, StoreReporter, run_trial, scaling_config, train_loop_per_worker
from jepa_ray.train.step import Runtime, StepStats, TrainModule, runtime, train_step
from jepa_ray.train.store import TrialStore, resumable_checkpoint

__all__ = [
    "EPOCH_METRICS",
    "FINAL_METRICS",
    "HEADLINE_METRICS",
    "LocalReporter",
    "Reporter",
    "Runtime",
    "StepStats",
    "StoreReporter",
    "TrainModule",
    "TrialFailure",
    "TrialStore",
    "check_collapse",
    "check_finite",
    "collapse_reason",
    "final_evaluation",
    "fit",
    "resumable_checkpoint",
    "run_trial",
    "runtime",
    "scaling_config",
    "train_loop_per_worker",
    "train_step",
]
