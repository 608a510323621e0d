"""Training one trial: the step (`train_step` on a `TrainModule`), the loop of one worker
(`fit`), the optimizer and schedule, the collapse guard, checkpoints and where a trial keeps
them, and the one runner for the command line and the sweep (`run_trial`).

The names load on first use (jepa_ray.lazy): `jepa_ray.train.checkpoint`, which the sweep driver
and the Pareto export read checkpoint files with, does not pull in the model, timm and torch."""

from jepa_ray import lazy
from jepa_ray.contract import EPOCH_METRICS, FINAL_METRICS, HEADLINE_METRICS

__getattr__, _names = lazy.exports(
    __name__,
    {
        "jepa_ray.train.guard": ("TrialFailure", "check_collapse", "check_finite", "collapse_reason"),
        "jepa_ray.train.loop": ("Reporter", "final_evaluation", "fit"),
        "jepa_ray.train.runner": (
            "LocalReporter",
            "StoreReporter",
            "run_trial",
            "scaling_config",
            "train_loop_per_worker",
        ),
        "jepa_ray.train.step": ("Runtime", "StepStats", "TrainModule", "runtime", "train_step"),
        "jepa_ray.train.store": ("TrialStore", "resumable_checkpoint"),
    },
)
__all__ = ["EPOCH_METRICS", "FINAL_METRICS", "HEADLINE_METRICS", *_names]
