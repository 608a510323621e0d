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

# Metric names. The trainer and the evaluation produce them (importing these names), the sweep
# driver, MLflow writer, scheduler and Pareto export read them (docs/design.md, "MLflow layout").
EPOCH = "epoch"
"""Every result of a trial carries the 0-based epoch it closes."""
TRAIN_LOSS, TRAIN_INVARIANCE, TRAIN_REGULARIZER = "train/loss", "train/invariance", "train/regularizer"
TRAIN_L0_DENSITY, TRAIN_RANK_ME, TRAIN_LR = "train/l0_density", "train/rank_me", "train/lr"
ONLINE_TRAIN_ACC, ONLINE_TRAIN_ACC_Z = "online/train_acc", "online/train_acc_z"
ONLINE_LINEAR_ACC, ONLINE_LINEAR_ACC_Z = "online/linear_acc", "online/linear_acc_z"
IMG_PER_S, EPOCH_S, EPOCH_WALL_S = "throughput/img_per_s", "time/epoch_s", "time/epoch_wall_s"
EPOCH_METRICS = (
    TRAIN_LOSS,
    TRAIN_INVARIANCE,
    TRAIN_REGULARIZER,
    TRAIN_L0_DENSITY,
    ONLINE_TRAIN_ACC,
    ONLINE_TRAIN_ACC_Z,
    ONLINE_LINEAR_ACC,
    ONLINE_LINEAR_ACC_Z,
    TRAIN_RANK_ME,
    TRAIN_LR,
    IMG_PER_S,
    EPOCH_S,
    EPOCH_WALL_S,
)
"""Every per-epoch metric a trial reports (step = epoch), besides EPOCH and DATA_SIZES."""
DATA_SIZES = ("data/train_images", "data/test_images")
"""Split sizes every epoch result carries: the MLflow dataset input, not metrics."""
EPOCH_PROBE_METRIC = TRAIN_LOSS
"""A metric every epoch result carries: its MLflow history tells which epochs were logged."""

LINEAR_ACC, LINEAR_ACC_Z, KNN_ACC = "linear_acc", "linear_acc_z", "knn_acc"
L0_DENSITY, TARGET_L0_DENSITY, L0_DENSITY_BACKBONE = "l0_density", "target_l0_density", "l0_density_backbone"
RANK_ME, L1_SPARSITY = "rank_me", "l1_sparsity"
DEAD_FRACTION, ALWAYS_ACTIVE_FRACTION = "dead_fraction", "always_active_fraction"
PROBE_BEST_LR, PROBE_BEST_WD = "probe_best_lr", "probe_best_wd"
EVAL_S, EVAL_S_PER_10K = "time/eval_s", "time/eval_s_per_10k"
HEADLINE_METRICS = (LINEAR_ACC, L0_DENSITY, TARGET_L0_DENSITY, LINEAR_ACC_Z, KNN_ACC, L0_DENSITY_BACKBONE, RANK_ME)
"""The final metrics a table of trials shows (the Pareto export's columns, `jepa-train`'s summary)."""
FINAL_METRICS = (
    *HEADLINE_METRICS,
    L1_SPARSITY,
    DEAD_FRACTION,
    ALWAYS_ACTIVE_FRACTION,
    PROBE_BEST_LR,
    PROBE_BEST_WD,
    EVAL_S,
    EVAL_S_PER_10K,
)
"""Every final metric a trial produces (its final result also repeats the last epoch's)."""
DEFAULT_OBJECTIVES = "linear_acc:max,l0_density:min"

METRIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    **{m: (0.0, 1.0) for m in (LINEAR_ACC, LINEAR_ACC_Z, KNN_ACC, ONLINE_LINEAR_ACC, ONLINE_LINEAR_ACC_Z)},
    **{m: (0.0, 1.0) for m in (ONLINE_TRAIN_ACC, ONLINE_TRAIN_ACC_Z)},
    **{m: (0.0, 1.0) for m in (L0_DENSITY, TARGET_L0_DENSITY, L0_DENSITY_BACKBONE, TRAIN_L0_DENSITY)},
    **{m: (0.0, 1.0) for m in (DEAD_FRACTION, ALWAYS_ACTIVE_FRACTION)},
}
"""Metrics with a known range, (lowest, highest): accuracies, densities and fractions. Others
(rank_me, losses, times) have a data-dependent reference (see reference_point)."""


def reference_point(name: str, direction: str, values=()) -> float:
    """The hypervolume reference of one objective, one rule for the sweep's curve and the
    export alike: the end of the metric's known range on its bad side (0 for an accuracy to
    maximize, 1 for a density to minimize), else the worst of `values` (0 without values)."""
    low, high = METRIC_RANGES.get(name, (None, None))
    bound = low if direction == "max" else high
    if bound is not None:
        return float(bound)
    finite = [float(v) for v in values if v == v and abs(float(v)) != float("inf")]
    if not finite:
        return 0.0
    return min(finite) if direction == "max" else max(finite)


# MLflow tags.
ROLE, SWEEP_NAME, TRIAL_ID, CHECKPOINT, FAILURE = (
    "jepa_ray.role",
    "jepa_ray.sweep_name",
    "jepa_ray.trial_id",
    "jepa_ray.checkpoint",
    "jepa_ray.failure",
)
OPTUNA_TRIAL, PARAMS_KEY, LAST_CHECKPOINT = "jepa_ray.optuna_trial", "jepa_ray.params_key", "jepa_ray.last_checkpoint"
TRIAL_KEY = "jepa_ray.trial_key"
"""The trial's identity across --resume (ATTR_FIRST_TRIAL): one per trial, even when two trials
propose the same parameters (a repeat trains with its own seed and is judged as its own trial)."""
TRIAL_DIR = "jepa_ray.trial_dir"
"""The trial's checkpoint store: where an interrupted trial resumes from."""
FAILURE_KIND = "jepa_ray.failure_kind"
FAILURE_TAGS = (FAILURE, FAILURE_KIND)
"""The tags of a failed trial's run: why, and which kind (FailureKind); --resume deletes both
from a run it trains again."""
STOPPED = "jepa_ray.stopped"
"""Why a scheduler stopped the trial at a rung (its run ends KILLED, its curves kept)."""
PARENT = "mlflow.parentRunId"
EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
"""MLflow 3 shows an experiment as training runs only with this tag (untagged ones open as GenAI)."""
DESCRIPTION = "mlflow.note.content"
SOURCE_NAME, SOURCE_TYPE, SOURCE_COMMIT = "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit"
ROLE_SWEEP, ROLE_TRIAL = "sweep", "trial"
# The sweep's parent run.
SWEEP_COMMIT, SWEEP_SAMPLER, SWEEP_SAMPLER_SEED = "jepa_ray.git_commit", "jepa_ray.sampler", "jepa_ray.sampler_seed"
SWEEP_SPACE, SWEEP_OBJECTIVES = "jepa_ray.space", "jepa_ray.objectives"
SWEEP_OPTUNA_STORAGE, SWEEP_STORAGE_PATH = "jepa_ray.optuna_storage", "jepa_ray.storage_path"
SWEEP_MAX_CONCURRENT, SWEEP_REPLAY = "jepa_ray.max_concurrent", "jepa_ray.replay"
# A trial's run.
RESUMED, WALL_S = "jepa_ray.resumed", "jepa_ray.wall_s"
PRECISION = "jepa_ray.precision"
"""What a finished trial trained at, from its checkpoint's config (the `precision` param is what
was asked for: maybe auto)."""

# Optuna user attributes of a trial.
ATTR_TUNE_TRIAL, ATTR_FAILURE, ATTR_RUNG_STOP = "tune_trial_id", "failure", "rung_stop"
ATTR_STOPPED = "stopped"
"""Told FAIL because the sweep stopped before the trial's end (--resume runs it again)."""
ATTR_INTERRUPTED = "interrupted"
"""Left RUNNING by a driver that died (--resume marks it FAIL and runs it again)."""
ATTR_RESUMED_FROM = "resumed_from_trial"
ATTR_FIRST_TRIAL = "first_trial"
"""The number of the trial a re-queued trial continues (through any number of --resume): the
trial's identity, which its seed, its scheduler rungs and its checkpoint follow."""
ATTR_EPOCHS = "epochs"
"""Epochs the trial trained, told at its end (what --resume records of it if MLflow missed it)."""

# Keys of a Tune trial's config: a jepa_ray.trial_spec.TrialSpec as Tune carries it.
SPEC_OVERRIDES, SPEC_NUMBER, SPEC_TRIAL_KEY = "overrides", "optuna_trial", "trial_key"
SPEC_SEED, SPEC_PARAMS_KEY, SPEC_ROW = "seed", "params_key", "row"

# Keys of the results a trial reports to Tune besides its metrics.
CHECKPOINT_URI = "checkpoint_uri"
RESULT_FAILURE = "failure"
RESULT_FAILURE_KIND = "failure_kind"
FINAL_RESULT = "final_result"
"""True in a trial's last result, the one with its final metrics (the explicit marker)."""
RESULT_KEYS = frozenset({CHECKPOINT_URI, RESULT_FAILURE, RESULT_FAILURE_KIND, FINAL_RESULT})
"""Keys of a result that are not metrics."""


class FailureKind(str, enum.Enum):
    """Why a trial ended without its final result."""

    FAILED = "failed"
    """It raised, ran out of memory, reached a non-finite loss or its workers kept dying."""
    COLLAPSED = "collapsed"
    """The collapse guard stopped it: its hyperparameters are bad, not the run."""
    STOPPED = "stopped"
    """A scheduler stopped it early at a rung (its per-epoch curves are kept)."""
    UNFINISHED = "unfinished"
    """The sweep stopped it before its end (budget, failure limit, Ctrl-C, SIGTERM): --resume
    trains it again."""


def is_final(result: dict) -> bool:
    """True for a trial's last result (its final metrics), not a per-epoch one or a failure."""
    return bool(result.get(FINAL_RESULT)) and not result.get(RESULT_FAILURE)


def has_final_metrics(metrics: dict) -> bool:
    """True when a stored set of metrics (a checkpoint's, an MLflow run's) holds the final ones."""
    return LINEAR_ACC in metrics


def failure_kind(result: dict | None) -> FailureKind | None:
    """The kind of failure a reported result says, or None for a result that is no failure."""
    if not result or not result.get(RESULT_FAILURE):
        return None
    return FailureKind(result.get(RESULT_FAILURE_KIND) or FailureKind.FAILED.value)
