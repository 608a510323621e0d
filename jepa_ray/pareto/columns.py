"""The columns of a trials frame (one row per trial run) and the defaults of the readers."""

from __future__ import annotations

from jepa_ray.contract import CHECKPOINT as CHECKPOINT_TAG
from jepa_ray.contract import PARENT as PARENT_TAG
from jepa_ray.contract import TRIAL_ID as TRIAL_ID_TAG

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "rectified-lpjepa"
KEY_PARAMS = ("lambd", "num_slices", "p", "mu", "proj_dims", "target", "sigma", "backbone")

METRIC_PREFIX, PARAM_PREFIX = "metrics.", "params."
BASE_COLUMNS = ("run_id", "trial_id", "sweep_run_id", "checkpoint")
ORIGIN_COLUMNS = ("experiment", "sweep_name")
"""Where a point comes from (added after sweep_run_id by front.add_origin)."""
TAG_COLUMNS = {TRIAL_ID_TAG: "trial_id", PARENT_TAG: "sweep_run_id", CHECKPOINT_TAG: "checkpoint"}

# SQL stores cannot hold infinities; MLflow writes +-inf as +-DBL_MAX (sanitize_metric_value).
SQL_INF = 1.7976931348623157e308
