"""MLflow, written by the sweep driver only (docs/design.md, "MLflow layout"): one parent run per
sweep, one nested child per trial with the flattened resolved config as params, per-epoch
metrics at step = epoch (each epoch exactly once), the final metrics, the checkpoint tag and the
artifacts. Trials never open the tracking store: they report to the driver through Ray Tune, so
a sqlite store stays safe with many concurrent trials and no worker needs to reach MLflow.

`MlflowSweepCallback` loads on first use (jepa_ray.lazy): it is a Ray Tune callback, and the
Pareto export and the what-if read MLflow through this package without Ray Tune."""

from jepa_ray import lazy
from jepa_ray.contract import (
    CHECKPOINT,
    DESCRIPTION,
    EPOCH_PROBE_METRIC,
    FAILURE,
    FAILURE_KIND,
    FINAL_METRICS,
    LAST_CHECKPOINT,
    OPTUNA_TRIAL,
    PARAMS_KEY,
    PARENT,
    ROLE,
    SWEEP_NAME,
    TRIAL_DIR,
    TRIAL_ID,
    TRIAL_KEY,
    is_final,
)
from jepa_ray.errors import one_line
from jepa_ray.outcome import trial_error_text
from jepa_ray.tracking.epochs import EpochLog
from jepa_ray.tracking.plots import activation_plot
from jepa_ray.tracking.store import (
    client,
    experiment_id,
    fail_running_trials,
    find_experiment,
    find_sweep_run,
    git_commit,
    log_dataset_input,
    log_metrics,
    log_params,
    mark_training_experiment,
    search_all_runs,
    source_tags,
    start_sweep_run,
    trial_runs,
)

__getattr__, _names = lazy.exports(__name__, {"jepa_ray.tracking.callback": ("MlflowSweepCallback",)})

__all__ = [
    "CHECKPOINT",
    "DESCRIPTION",
    "EPOCH_PROBE_METRIC",
    "EpochLog",
    "FAILURE",
    "FAILURE_KIND",
    "FINAL_METRICS",
    "LAST_CHECKPOINT",
    "OPTUNA_TRIAL",
    "PARAMS_KEY",
    "PARENT",
    "ROLE",
    "SWEEP_NAME",
    "TRIAL_DIR",
    "TRIAL_KEY",
    "TRIAL_ID",
    "activation_plot",
    "client",
    "experiment_id",
    "fail_running_trials",
    "find_experiment",
    "find_sweep_run",
    "git_commit",
    "is_final",
    "log_dataset_input",
    "log_metrics",
    "log_params",
    "mark_training_experiment",
    "one_line",
    "search_all_runs",
    "source_tags",
    "start_sweep_run",
    "trial_error_text",
    "trial_runs",
    *_names,
]
