"""The names every side agrees on, as data: metric keys, MLflow tags, failure kinds and what
counts as a trial's final result. The trainer reports them, the sweep driver and MLflow writer
read them, the Pareto export filters on them (docs/design.md, "MLflow layout")."""

from __future__ import annotations

import enum

TRAINING_REVISION = 1
"""What a trial trains to, as a number: bumped on purpose by a change that alters a trial's
results for the same config and seed (not by refactors). Recorded learning curves carry it, and
a table recorded at another revision is not mixed with new rows unless asked
(jepa_ray.curves)."""

# Per-epoch metrics of a trial (step = epoch) and its final metrics (docs/design.md).
EPOCH_METRICS = (
    "train/loss",
    "train/invariance",
    "train/regularizer",
    "train/l0_density",
    "online/linear_acc",
    "online/linear_acc_z",
    "throughput/img_per_s",
)
FINAL_METRICS = (
    "linear_acc",
    "l0_density",
    "target_l0_density",
    "linear_acc_z",
    "knn_acc",
    "l0_density_backbone",
    "rank_me",
)
EPOCH_PROBE_METRIC = "train/loss"
"""A metric every epoch result carries: its MLflow history tells which epochs were logged."""
DEFAULT_OBJECTIVES = "linear_acc:max,l0_density:min"
DATA_SIZES = ("data/train_images", "data/test_images")
"""Split sizes every epoch result carries: the MLflow dataset input, not metrics."""

# MLflow tags.
ROLE, SWEEP_NAME, TRIAL_ID, CHECKPOINT, FAILURE = (
    "jepa_ray.role",
    "jepa_ray.sweep_name",
    "jepa_ray.trial_id",
    "jepa_ray.checkpoint",
    "jepa_ray.failure",
)
OPTUNA_TRIAL, PARAMS_KEY, LAST_CHECKPOINT = "jepa_ray.optuna_trial", "jepa_ray.params_key", "jepa_ray.last_checkpoint"
TRIAL_DIR = "jepa_ray.trial_dir"
"""The trial's checkpoint store: where an interrupted trial resumes from."""
FAILURE_KIND = "jepa_ray.failure_kind"
STOPPED = "jepa_ray.stopped"
"""Why a scheduler stopped the trial at a rung (its run ends KILLED, its curves kept)."""
PARENT = "mlflow.parentRunId"
EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
"""MLflow 3 shows an experiment as training runs only with this tag (untagged ones open as GenAI)."""
DESCRIPTION = "mlflow.note.content"
SOURCE_NAME, SOURCE_TYPE, SOURCE_COMMIT = "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit"
ROLE_SWEEP, ROLE_TRIAL = "sweep", "trial"

# Keys of the results a trial reports to Tune besides its metrics.
CHECKPOINT_URI = "checkpoint_uri"
RESULT_FAILURE = "failure"
RESULT_FAILURE_KIND = "failure_kind"


class FailureKind(str, enum.Enum):
    """Why a trial ended without its final result."""

    FAILED = "failed"
    """It raised, ran out of memory, reached a non-finite loss or its workers kept dying."""
    COLLAPSED = "collapsed"
    """The collapse guard stopped it: its hyperparameters are bad, not the run."""
    STOPPED = "stopped"
    """A scheduler stopped it early at a rung (its per-epoch curves are kept)."""


def is_final(result: dict) -> bool:
    """True for a trial's last result (its final metrics), not a per-epoch one or a failure."""
    return "linear_acc" in result and not result.get(RESULT_FAILURE)


def failure_kind(result: dict | None) -> FailureKind | None:
    """The kind of failure a reported result says, or None for a result that is no failure."""
    if not result or not result.get(RESULT_FAILURE):
        return None
    return FailureKind(result.get(RESULT_FAILURE_KIND) or FailureKind.FAILED.value)
