"""Pareto fronts of finished sweep trials, read from MLflow: the non-dominated trials for any
number of objectives (default: maximize `linear_acc`, minimize `l0_density`), their ranked
fronts, hypervolume and knee point, and an export of the Pareto-optimal checkpoints.

Reading follows the MLflow layout of DESIGN.md: FINISHED, active child runs tagged
`jepa_ray.role=trial` (optionally of given sweep parent runs), their final metrics (MLflow's
latest values), flattened-config params and the `jepa_ray.checkpoint` tag. For `sqlite://`
stores the tables are read directly with a few SQL queries (only the needed keys); any other
store goes through `MlflowClient.search_runs` with paging. Both give the same frame.

Command line:
`python -m jepa_ray.pareto --experiment NAME --out DIR [--tracking-uri URI] [--sweep RUN_ID]
[--objectives linear_acc:max,l0_density:min] [--filter EXPR] [--reference name=value,...]
[--register MODEL_NAME] [--overwrite]`.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as _dt
import json
import math
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jepa_ray import tracking
from jepa_ray.cluster import sqlite_path
from jepa_ray.tracking import CHECKPOINT as CHECKPOINT_TAG
from jepa_ray.tracking import FAILURE as FAILURE_TAG
from jepa_ray.tracking import FINAL_METRICS
from jepa_ray.tracking import PARENT as PARENT_TAG
from jepa_ray.tracking import ROLE as ROLE_TAG
from jepa_ray.tracking import TRIAL_ID as TRIAL_ID_TAG

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "rectified-lpjepa"
DEFAULT_OBJECTIVES = "linear_acc:max,l0_density:min"
KEY_PARAMS = ("lambd", "num_slices", "p", "mu", "proj_dims", "target", "sigma", "backbone")

ROLE_TRIAL = "trial"
METRIC_PREFIX, PARAM_PREFIX = "metrics.", "params."
BASE_COLUMNS = ("run_id", "trial_id", "sweep_run_id", "checkpoint")
_TAG_COLUMNS = {TRIAL_ID_TAG: "trial_id", PARENT_TAG: "sweep_run_id", CHECKPOINT_TAG: "checkpoint"}

# SQL stores cannot hold infinities; MLflow writes +-inf as +-DBL_MAX (sanitize_metric_value).
_SQL_INF = 1.7976931348623157e308
# The MLflow server rejects search pages above 50,000 runs; 10,000 keeps responses moderate.
SEARCH_PAGE_SIZE = 10_000
EXPORT_FILES = ("model.pt", "config.json", "metrics.json", "preprocessing.json")  # the first two are required


class ParetoError(ValueError):
    """A bad input (experiment, objective, filter, tracking URI, output directory); the message
    is one line naming the input and what is allowed."""


# --------------------------------------------------------------------------------------------
# Objectives, filters, reference points


@dataclass(frozen=True)
class Objective:
    """A final metric to maximize or minimize."""

    name: str
    direction: str = "max"

    def __post_init__(self) -> None:
        if self.direction not in ("max", "min"):
            raise ParetoError(f"objective '{self.name}': direction {self.direction!r} is not allowed; allowed: max, min")
        if not self.name:
            raise ParetoError("objective name is empty; expected a metric name such as linear_acc")

    @property
    def sign(self) -> float:
        """Factor that turns the objective into one to minimize."""
        return -1.0 if self.direction == "max" else 1.0

    @property
    def column(self) -> str:
        return METRIC_PREFIX + self.name

    def __str__(self) -> str:
        return f"{self.name}:{self.direction}"


def parse_objectives(text: str) -> list[Objective]:
    """`"linear_acc:max,l0_density:min"` -> objectives (direction defaults to max)."""
    objectives: list[Objective] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, direction = item.partition(":")
        name, direction = name.strip(), (direction.strip().lower() or "max")
        if not re.fullmatch(r"[A-Za-z0-9_./-]+", name) or direction not in ("max", "min"):
            raise ParetoError(f"--objectives {text!r}: bad item {item!r}; expected name:max or name:min, "
                              "comma separated (e.g. linear_acc:max,l0_density:min)")
        objectives.append(Objective(name, direction))
    if not objectives:
        raise ParetoError(f"--objectives {text!r}: no objective given; expected e.g. linear_acc:max,l0_density:min")
    names = [o.name for o in objectives]
    if len(set(names)) != len(names):
        raise ParetoError(f"--objectives {text!r}: an objective is listed twice")
    return objectives


_OPS = {">=": np.greater_equal, "<=": np.less_equal, ">": np.greater, "<": np.less,
        "==": np.equal, "!=": np.not_equal}
_FILTER_RE = re.compile(r"^\s*([A-Za-z_][\w./-]*)\s*(>=|<=|==|!=|>|<)\s*"
                        r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Filter:
    """A feasibility condition `name op number` on a final metric."""

    name: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value:g}"

    def mask(self, trials: pd.DataFrame) -> np.ndarray:
        """Rows that satisfy the condition (a missing value never does)."""
        column = METRIC_PREFIX + self.name
        if column not in trials.columns or trials[column].isna().all():
            raise ParetoError(f"--filter {self}: '{self.name}' is not a final metric of any trial run")
        values = trials[column].to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            return _OPS[self.op](values, self.value) & ~np.isnan(values)


def parse_filter(text: str) -> Filter:
    """`"linear_acc>=0.5"` -> Filter; name, one of >= <= > < == !=, and a number (no eval)."""
    match = _FILTER_RE.match(text or "")
    if not match:
        raise ParetoError(f"--filter {text!r}: expected NAME OP NUMBER with OP one of >=, <=, >, <, ==, != "
                          "(e.g. linear_acc>=0.5 or l0_density<=0.3)")
    return Filter(match[1], match[2], float(match[3]))


def parse_reference(text: str, objectives: Sequence[Objective]) -> dict[str, float]:
    """`"linear_acc=0,l0_density=1"` -> {name: value}; names must be objectives."""
    names = {o.name for o in objectives}
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, raw = item.partition("=")
        name = name.strip()
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not sep or name not in names or not math.isfinite(value):
            raise ParetoError(f"--reference {text!r}: bad item {item!r}; expected objective=number for "
                              f"objectives {', '.join(sorted(names))}")
        out[name] = value
    return out


def default_reference(objectives: Sequence[Objective], values: np.ndarray) -> tuple[float, ...]:
    """Per objective: 0 for a maximized accuracy, 1 for a minimized l0/density, else the worst
    value observed among `values` (n, k) (0 when there are none)."""
    ref = []
    for j, obj in enumerate(objectives):
        name = obj.name.lower()
        if obj.direction == "max" and "acc" in name:
            ref.append(0.0)
        elif obj.direction == "min" and ("l0" in name or "density" in name):
            ref.append(1.0)
        elif len(values):
            column = values[:, j]
            ref.append(float(column.min() if obj.direction == "max" else column.max()))
        else:
            ref.append(0.0)
    return tuple(ref)


# --------------------------------------------------------------------------------------------
# Dominance, ranks, hypervolume, knee (all on points turned into minimization)


def _directions(directions: Sequence[str | Objective], k: int) -> np.ndarray:
    dirs = [d.direction if isinstance(d, Objective) else d for d in directions]
    if len(dirs) != k:
        raise ValueError(f"directions: {len(dirs)} given for {k} objectives")
    bad = [d for d in dirs if d not in ("max", "min")]
    if bad:
        raise ValueError(f"directions: {bad[0]!r} is not allowed; allowed: max, min")
    return np.array([-1.0 if d == "max" else 1.0 for d in dirs])


def _as_minimization(values: np.ndarray, directions: Sequence[str | Objective]) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values: expected an (n, k) array, got shape {values.shape}")
    if np.isnan(values).any():
        raise ValueError("values: NaN is not allowed (drop infeasible points first)")
    return values * _directions(directions, values.shape[1])


def _non_dominated_min(m: np.ndarray) -> np.ndarray:
    """Mask of points no other point weakly dominates (<= everywhere, < somewhere)."""
    n, k = m.shape
    if n == 0:
        return np.zeros(0, dtype=bool)
    if k == 2:
        return _non_dominated_2d(m)
    # A dominator precedes its victim in lexicographic order, and every dominated point has a
    # non-dominated dominator (a strict partial order has maximal elements): comparing each
    # block of points with the front found so far and with the block itself is enough.
    order = np.lexsort(m.T[::-1])
    keep = np.zeros(n, dtype=bool)
    front = np.empty((0, k))
    for start in range(0, n, _BLOCK):
        idx = order[start:start + _BLOCK]
        block = m[idx]
        alive = ~_dominated_by(block, front) & ~_dominated_by(block, block)
        keep[idx[alive]] = True
        front = np.concatenate([front, block[alive]])
    return keep


_BLOCK = 64


def _dominated_by(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Mask of points weakly dominated by at least one of others."""
    if len(others) == 0:
        return np.zeros(len(points), dtype=bool)
    le = np.ones((len(points), len(others)), dtype=bool)
    lt = np.zeros_like(le)
    for j in range(points.shape[1]):
        a, b = others[None, :, j], points[:, None, j]
        le &= a <= b
        lt |= a < b
    return np.any(le & lt, axis=1)


def _non_dominated_2d(m: np.ndarray) -> np.ndarray:
    """O(n log n): after sorting by (x, y), p is dominated iff a point with smaller x has
    y <= p.y, or a point with the same x has a smaller y."""
    n = len(m)
    order = np.lexsort((m[:, 1], m[:, 0]))
    x, y = m[order, 0], m[order, 1]
    idx = np.arange(n)
    new_group = np.r_[True, x[1:] != x[:-1]]
    start = np.maximum.accumulate(np.where(new_group, idx, 0))
    prefix_min = np.minimum.accumulate(y)
    before = np.where(start > 0, prefix_min[np.maximum(start - 1, 0)], np.inf)
    dominated = (before <= y) | (y[start] < y)
    keep = np.empty(n, dtype=bool)
    keep[order] = ~dominated
    return keep


def non_dominated(values: np.ndarray, directions: Sequence[str | Objective]) -> np.ndarray:
    """Mask of the Pareto-optimal rows of values (n, k) under per-column directions
    ("max"/"min"); equal points do not dominate each other, so duplicates share the front."""
    return _non_dominated_min(_as_minimization(values, directions))


def nondominated_ranks(values: np.ndarray, directions: Sequence[str | Objective]) -> np.ndarray:
    """Front index of every row (1 = Pareto front, 2 = front once the first is removed, ...)."""
    m = _as_minimization(values, directions)
    if m.shape[1] == 2:
        return _ranks_2d(m)
    ranks = np.zeros(len(m), dtype=np.int64)
    remaining = np.arange(len(m))
    rank = 0
    while len(remaining):
        rank += 1
        keep = _non_dominated_min(m[remaining])
        ranks[remaining[keep]] = rank
        remaining = remaining[~keep]
    return ranks


def _ranks_2d(m: np.ndarray) -> np.ndarray:
    """O(n log n) non-dominated sorting in 2-D (points in (x, y) order; a front's last point
    dominates p iff its (y, x) key is lexicographically below p's, and these keys increase
    with the front index, so a bisection finds p's front)."""
    order = np.lexsort((m[:, 1], m[:, 0]))
    ranks = np.zeros(len(m), dtype=np.int64)
    keys: list[tuple[float, float]] = []
    for i in order:
        key = (float(m[i, 1]), float(m[i, 0]))
        front = bisect.bisect_left(keys, key)
        if front == len(keys):
            keys.append(key)
        else:
            keys[front] = key
        ranks[i] = front + 1
    return ranks


def hypervolume(values: np.ndarray, directions: Sequence[str | Objective],
                reference: Sequence[float]) -> float:
    """Exact volume of the objective space dominated by the points and bounded by the reference
    point. Points not strictly better than the reference in every objective add nothing.
    2-D: one sweep; k >= 3: slicing along the last objective (HSO), cost ~ n^(k-1), meant for
    fronts of tens to hundreds of points."""
    m = _as_minimization(values, directions)
    ref = np.asarray(reference, dtype=float) * _directions(directions, m.shape[1])
    if ref.shape != (m.shape[1],) or not np.isfinite(ref).all():
        raise ValueError(f"reference: expected {m.shape[1]} finite numbers, got {list(reference)}")
    return float(_hv_min(m, ref))


def _hv_min(m: np.ndarray, ref: np.ndarray) -> float:
    m = m[np.all(m < ref, axis=1)]
    if len(m) == 0:
        return 0.0
    m = m[_non_dominated_min(m)]
    k = m.shape[1]
    if k == 1:
        return float(ref[0] - m[:, 0].min())
    if k == 2:
        return _hv_2d(m, ref)
    m = m[np.argsort(m[:, -1], kind="stable")]
    upper = np.r_[m[1:, -1], ref[-1]]
    volume = 0.0
    for i in range(len(m)):
        depth = upper[i] - m[i, -1]
        if depth > 0:
            volume += depth * _hv_min(m[: i + 1, :-1], ref[:-1])
    return volume


def _hv_2d(m: np.ndarray, ref: np.ndarray) -> float:
    """Sum of the rectangles between consecutive front points (x ascending, y descending)."""
    m = m[np.argsort(m[:, 0], kind="stable")]
    widths = np.r_[m[1:, 0], ref[0]] - m[:, 0]
    return float(np.sum(widths * (ref[1] - m[:, 1])))


def knee_point(front_values: np.ndarray, directions: Sequence[str | Objective]) -> int:
    """Index of the knee of a front: each objective is scaled to [0, 1] over the front (0 =
    best), and the knee is the point with the smallest sum of scaled objectives, i.e. the one
    farthest on the ideal side of the hyperplane sum = 1; in 2-D this hyperplane is the line
    through the two extreme points, so this is the classic maximum-distance-to-chord knee.
    Ties go to the first point."""
    m = _as_minimization(front_values, directions)
    if len(m) == 0:
        raise ValueError("knee_point: the front is empty")
    lo, hi = m.min(axis=0), m.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return int(np.argmin(((m - lo) / span).sum(axis=1)))


# --------------------------------------------------------------------------------------------
# Reading trials from MLflow


def read_trials(tracking_uri: str, experiment: str, *, sweep_run_ids: Sequence[str] | None = None,
                metrics: Sequence[str] | None = None, params: bool = True, reader: str = "auto",
                page_size: int = SEARCH_PAGE_SIZE) -> pd.DataFrame:
    """The FINISHED, active trial runs (tag jepa_ray.role=trial) of an experiment, optionally
    only the children of the given sweep parent runs, one row each (sorted by run id):
    run_id, trial_id, sweep_run_id, checkpoint, `metrics.<name>` for the requested final
    metrics (default FINAL_METRICS; NaN where a run lacks one) and, if params, `params.<name>`
    for every param (numeric where every value is a number, else text). Params are most of a
    trial's data: extract() reads them only for the front (read_params).

    reader: "sql" reads a sqlite store's tables directly (only the needed rows), "mlflow" pages
    through MlflowClient.search_runs, "auto" takes "sql" for sqlite:// URIs of a known schema."""
    metrics = list(dict.fromkeys(metrics or FINAL_METRICS))
    sweeps = list(dict.fromkeys(sweep_run_ids or []))
    if _use_sql(tracking_uri, reader):
        long = _read_sql(tracking_uri, experiment, sweeps, metrics, params)
    else:
        long = _read_mlflow(tracking_uri, experiment, sweeps, metrics, params, page_size)
    return _assemble(*long, metrics=metrics)


def read_params(tracking_uri: str, run_ids: Sequence[str], *, reader: str = "auto") -> pd.DataFrame:
    """run_id and `params.<name>` (typed as in read_trials) of the given runs, sorted by run id."""
    run_ids = sorted(set(run_ids))
    if _use_sql(tracking_uri, reader):
        with _connect(sqlite_path(tracking_uri)) as con:
            rows = [row for start in range(0, len(run_ids), 500) for row in con.execute(
                f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({_marks(run_ids[start:start + 500])})",
                run_ids[start:start + 500])]
    else:
        client = tracking.client(tracking_uri)
        rows = [(rid, k, v) for rid in run_ids for k, v in client.get_run(rid).data.params.items()]
    index = pd.Index(run_ids, name="run_id")
    return _params_frame(rows, index).reset_index()


def _use_sql(tracking_uri: str, reader: str) -> bool:
    if reader not in ("auto", "sql", "mlflow"):
        raise ValueError(f"reader {reader!r} is not allowed; allowed: auto, sql, mlflow")
    return reader == "sql" or (reader == "auto" and _sql_readable(tracking_uri))


_SQL_COLUMNS = {
    "experiments": {"experiment_id", "name", "lifecycle_stage"},
    "runs": {"run_uuid", "experiment_id", "status", "lifecycle_stage"},
    "tags": {"key", "value", "run_uuid"},
    "latest_metrics": {"key", "value", "is_nan", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
}


def _sql_readable(tracking_uri: str) -> bool:
    """Whether the direct SQL reader applies: a sqlite file with MLflow's tables, and no
    workspace-scoped store (whose experiment names are only unique per workspace)."""
    path = sqlite_path(tracking_uri)
    if path is None or not path.is_file() or os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").lower() in ("1", "true"):
        return False
    try:
        with _connect(path) as con:
            return all(cols <= _table_columns(con, t) for t, cols in _SQL_COLUMNS.items())
    except sqlite3.Error:
        return False


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _table_columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in con.execute(f"PRAGMA table_info({table})")}


def _read_sql(tracking_uri: str, experiment: str, sweeps: list[str], metrics: list[str], with_params: bool):
    path = sqlite_path(tracking_uri)
    if path is None or not path.is_file():
        raise ParetoError(f"tracking URI {tracking_uri}: database file {path} does not exist")
    con = _connect(path)
    try:
        exp_id = _sql_experiment_id(con, experiment, tracking_uri)
        _sql_check_sweeps(con, exp_id, sweeps, experiment)
        sel, args = _sql_selection(exp_id, sweeps)
        run_ids = [r[0] for r in con.execute(f"{sel} SELECT run_id FROM sel", args)]
        tags = con.execute(
            f"{sel} SELECT t.run_uuid, t.key, t.value FROM tags t JOIN sel ON t.run_uuid = sel.run_id "
            f"WHERE t.key IN ({_marks(_TAG_COLUMNS)})", [*args, *_TAG_COLUMNS]).fetchall()
        metric_rows = con.execute(
            f"{sel} SELECT m.run_uuid, m.key, CASE WHEN m.is_nan THEN NULL ELSE m.value END "
            f"FROM latest_metrics m JOIN sel ON m.run_uuid = sel.run_id WHERE m.key IN ({_marks(metrics)})",
            [*args, *metrics]).fetchall()
        params = con.execute(
            f"{sel} SELECT p.run_uuid, p.key, p.value FROM params p JOIN sel ON p.run_uuid = sel.run_id",
            args).fetchall() if with_params else []
    finally:
        con.close()
    return run_ids, tags, [(r, k, math.nan if v is None else v) for r, k, v in metric_rows], params


def _marks(items) -> str:
    return ",".join("?" * len(items))


def _sql_experiment_id(con: sqlite3.Connection, experiment: str, tracking_uri: str) -> int:
    where, args = "name = ?", [experiment]
    if "workspace" in _table_columns(con, "experiments"):
        where += " AND workspace = 'default'"
    rows = con.execute(f"SELECT experiment_id, lifecycle_stage FROM experiments WHERE {where}", args).fetchall()
    if not rows:
        names = [r[0] for r in con.execute("SELECT name FROM experiments WHERE lifecycle_stage = 'active' "
                                           "ORDER BY name LIMIT 20")]
        raise ParetoError(_unknown_experiment(experiment, tracking_uri, names))
    if rows[0][1] != "active":
        raise ParetoError(f"experiment '{experiment}' at {tracking_uri} is deleted")
    return int(rows[0][0])


def _sql_check_sweeps(con: sqlite3.Connection, exp_id: int, sweeps: list[str], experiment: str) -> None:
    if not sweeps:
        return
    found = {r[0] for r in con.execute(
        f"SELECT run_uuid FROM runs WHERE experiment_id = ? AND run_uuid IN ({_marks(sweeps)})", [exp_id, *sweeps])}
    missing = [s for s in sweeps if s not in found]
    if missing:
        raise ParetoError(f"--sweep {missing[0]}: no such run in experiment '{experiment}'")


def _sql_selection(exp_id: int, sweeps: list[str]) -> tuple[str, list]:
    """A CTE `sel(run_id)` of the FINISHED active trial runs (of the sweeps, if any)."""
    parent = ""
    args: list[Any] = [ROLE_TAG, ROLE_TRIAL]
    if sweeps:
        parent = (f"JOIN tags par ON par.run_uuid = r.run_uuid AND par.key = ? "
                  f"AND par.value IN ({_marks(sweeps)})")
        args += [PARENT_TAG, *sweeps]
    args.append(exp_id)
    sql = ("WITH sel AS (SELECT r.run_uuid AS run_id FROM runs r "
           "JOIN tags role ON role.run_uuid = r.run_uuid AND role.key = ? AND role.value = ? "
           f"{parent} WHERE r.experiment_id = ? AND r.status = 'FINISHED' "
           "AND r.lifecycle_stage = 'active')")
    return sql, args


def _unknown_experiment(experiment: str, tracking_uri: str, names: list[str]) -> str:
    known = ", ".join(names) if names else "none"
    return f"unknown experiment '{experiment}' at {tracking_uri}; experiments there: {known}"


def _read_mlflow(tracking_uri: str, experiment: str, sweeps: list[str], metrics: list[str], with_params: bool,
                 page_size: int):
    from mlflow.entities import ViewType
    client = tracking.client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments(max_results=200))[:20]
        raise ParetoError(_unknown_experiment(experiment, tracking_uri, names))
    if exp.lifecycle_stage != "active":
        raise ParetoError(f"experiment '{experiment}' at {tracking_uri} is deleted")
    _mlflow_check_sweeps(client, exp.experiment_id, sweeps, experiment)
    base = f"attributes.status = 'FINISHED' AND tags.`{ROLE_TAG}` = '{ROLE_TRIAL}'"
    filters = [f"{base} AND tags.`{PARENT_TAG}` = '{s}'" for s in sweeps] or [base]
    run_ids, tags, metric_rows, params = [], [], [], []
    wanted = set(metrics)
    for filter_string in filters:
        token = None
        while True:
            page = client.search_runs([exp.experiment_id], filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                                      max_results=page_size, page_token=token)
            for run in page:
                rid = run.info.run_id
                run_ids.append(rid)
                tags += [(rid, k, v) for k, v in run.data.tags.items() if k in _TAG_COLUMNS]
                metric_rows += [(rid, k, v) for k, v in run.data.metrics.items() if k in wanted]
                if with_params:
                    params += [(rid, k, v) for k, v in run.data.params.items()]
            token = page.token
            if not token:
                break
    return run_ids, tags, metric_rows, params


def _mlflow_check_sweeps(client, exp_id: str, sweeps: list[str], experiment: str) -> None:
    from mlflow.exceptions import MlflowException

    for sweep in sweeps:
        try:
            run = client.get_run(sweep)
        except MlflowException:
            run = None
        if run is None or run.info.experiment_id != exp_id:
            raise ParetoError(f"--sweep {sweep}: no such run in experiment '{experiment}'")


def _assemble(run_ids: list[str], tags: list, metric_rows: list, params: list, *,
              metrics: list[str]) -> pd.DataFrame:
    """One frame from (run_id, key, value) rows; both readers end here so they agree."""
    index = pd.Index(sorted(set(run_ids)), name="run_id")
    frame = pd.DataFrame(index=index)
    tag_wide = _pivot(tags, index)
    for tag, column in _TAG_COLUMNS.items():
        frame[column] = _text(tag_wide[tag]) if tag in tag_wide else pd.Series(None, index=index, dtype=object)
    metric_wide = _pivot(metric_rows, index)
    for name in metrics:
        values = metric_wide[name].astype(float) if name in metric_wide else pd.Series(np.nan, index=index)
        frame[METRIC_PREFIX + name] = values.where(values.abs() < _SQL_INF, np.sign(values) * np.inf)
    frame = frame.join(_params_frame(params, index)).reset_index()
    return frame[[*BASE_COLUMNS, *[c for c in frame.columns if c not in BASE_COLUMNS]]]


def _params_frame(rows: list, index: pd.Index) -> pd.DataFrame:
    wide = _pivot(rows, index)
    return pd.DataFrame({PARAM_PREFIX + name: _typed_param(wide[name]) for name in sorted(wide.columns)}, index=index)


def _pivot(rows: list, index: pd.Index) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(index=index)
    long = pd.DataFrame(rows, columns=["run_id", "key", "value"])
    return long.pivot(index="run_id", columns="key", values="value").reindex(index)


def _text(column: pd.Series) -> pd.Series:
    column = column.astype(object)
    return column.where(column.notna(), None)


def _typed_param(column: pd.Series) -> pd.Series:
    """MLflow params are text; a column becomes numeric when every present value is a number."""
    present = column.notna()
    numbers = pd.to_numeric(column, errors="coerce")
    if numbers[present].notna().all() and present.any():
        return numbers
    return _text(column)


# --------------------------------------------------------------------------------------------
# The front


@dataclass
class ParetoResult:
    """A computed front: `trials` (every trial read, with `feasible` and `front_rank`), `front`
    (the rank-1 trials, best first on the first objective, with a `knee` flag), the objectives,
    the reference point (objective order), the front's hypervolume and the knee's run id."""

    trials: pd.DataFrame
    front: pd.DataFrame
    objectives: list[Objective]
    reference: tuple[float, ...]
    hypervolume: float
    knee_run_id: str | None
    experiment: str = ""
    sweep_run_ids: list[str] = field(default_factory=list)
    filters: list[Filter] = field(default_factory=list)
    created: str = ""

    def metadata(self) -> dict[str, str]:
        """The parquet schema metadata (JSON values)."""
        meta = {
            "objectives": [{"name": o.name, "direction": o.direction} for o in self.objectives],
            "reference": dict(zip([o.name for o in self.objectives], self.reference)),
            "hypervolume": self.hypervolume,
            "experiment": self.experiment,
            "sweep_run_ids": self.sweep_run_ids,
            "filters": [str(f) for f in self.filters],
            "knee_run_id": self.knee_run_id,
            "n_trials": int(len(self.trials)),
            "n_feasible": int(self.trials["feasible"].sum()),
            "created": self.created,
        }
        return {f"jepa_ray.{k}": json.dumps(v) for k, v in meta.items()}


def compute_front(trials: pd.DataFrame, objectives: Sequence[Objective] | str | None = None,
                  reference: Mapping[str, float] | Sequence[float] | None = None,
                  filters: Sequence[Filter | str] | None = None, *, experiment: str = "",
                  sweep_run_ids: Sequence[str] | None = None) -> ParetoResult:
    """Rank the feasible trials (finite objectives and every filter true) and extract the front,
    its hypervolume against `reference` (default: see default_reference) and its knee.
    trials: a read_trials frame (or any frame with run_id and `metrics.<name>` columns, such as
    mlflow.search_runs gives)."""
    objectives = _objective_list(objectives)
    filters = _filter_list(filters)
    if trials.empty:
        raise ParetoError("no finished trial runs to rank")
    _check_objectives(trials, objectives)
    values = trials[[o.column for o in objectives]].to_numpy(dtype=float)
    feasible = np.isfinite(values).all(axis=1)
    for f in filters:
        feasible &= f.mask(trials)
    if not feasible.any():
        extra = f" and filters {', '.join(map(str, filters))}" if filters else ""
        raise ParetoError(f"none of the {len(trials)} finished trial runs is feasible (finite objectives{extra})")
    directions = [o.direction for o in objectives]
    ranks = np.zeros(len(trials), dtype=np.int64)
    ranks[feasible] = nondominated_ranks(values[feasible], directions)
    ref = _reference(objectives, values[feasible], reference)
    trials = trials.copy()
    trials["feasible"] = feasible
    trials["front_rank"] = pd.Series(ranks, index=trials.index, dtype="Int64").mask(~feasible)
    front = _sorted_front(trials[ranks == 1], objectives)
    front_values = front[[o.column for o in objectives]].to_numpy(dtype=float)
    knee = knee_point(front_values, directions)
    front["knee"] = np.arange(len(front)) == knee
    return ParetoResult(
        trials=trials, front=front, objectives=list(objectives), reference=ref,
        hypervolume=hypervolume(front_values, directions, ref), knee_run_id=str(front["run_id"].iloc[knee]),
        experiment=experiment, sweep_run_ids=list(sweep_run_ids or []), filters=filters,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def _filter_list(filters: Sequence[Filter | str] | None) -> list[Filter]:
    return [parse_filter(f) if isinstance(f, str) else f for f in (filters or [])]


def _objective_list(objectives: Sequence[Objective] | str | None) -> list[Objective]:
    if objectives is None:
        return parse_objectives(DEFAULT_OBJECTIVES)
    if isinstance(objectives, str):
        return parse_objectives(objectives)
    return list(objectives)


def _check_objectives(trials: pd.DataFrame, objectives: Sequence[Objective]) -> None:
    for obj in objectives:
        if obj.column not in trials.columns or trials[obj.column].isna().all():
            found = [c[len(METRIC_PREFIX):] for c in trials.columns
                     if c.startswith(METRIC_PREFIX) and trials[c].notna().any()]
            raise ParetoError(f"objective '{obj.name}' is not a final metric of any of the {len(trials)} finished "
                              f"trial runs; metrics found: {', '.join(found) or 'none'}")


def _reference(objectives: Sequence[Objective], feasible_values: np.ndarray,
               reference: Mapping[str, float] | Sequence[float] | None) -> tuple[float, ...]:
    ref = list(default_reference(objectives, feasible_values))
    if isinstance(reference, Mapping):
        unknown = set(reference) - {o.name for o in objectives}
        if unknown:
            raise ParetoError(f"reference: {sorted(unknown)[0]!r} is not an objective")
        ref = [float(reference.get(o.name, r)) for o, r in zip(objectives, ref)]
    elif reference is not None:
        if len(reference) != len(objectives):
            raise ParetoError(f"reference: {len(reference)} values for {len(objectives)} objectives")
        ref = [float(r) for r in reference]
    return tuple(ref)


def _sorted_front(front: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """Best first on the first objective, then the next ones, then run id."""
    keys = [front["run_id"].to_numpy()] + [front[o.column].to_numpy() * o.sign for o in reversed(objectives)]
    return front.iloc[np.lexsort(keys)].reset_index(drop=True)


def extract(tracking_uri: str, experiment: str, *, sweep_run_ids: Sequence[str] | None = None,
            objectives: Sequence[Objective] | str | None = None, filters: Sequence[Filter | str] | None = None,
            reference: Mapping[str, float] | Sequence[float] | None = None, reader: str = "auto") -> ParetoResult:
    """read_trials + compute_front with the metrics the objectives and filters need, and the
    params of the front's trials (the trials frame has none): what the sweep driver calls at
    its end and what the command line runs."""
    objectives = _objective_list(objectives)
    filters = _filter_list(filters)
    metrics = [*FINAL_METRICS, *[o.name for o in objectives], *[f.name for f in filters]]
    reader = "sql" if _use_sql(tracking_uri, reader) else "mlflow"  # probe the store's schema once
    trials = read_trials(tracking_uri, experiment, sweep_run_ids=sweep_run_ids, metrics=metrics, params=False,
                         reader=reader)
    if trials.empty:
        scope = f" in sweep(s) {', '.join(sweep_run_ids)}" if sweep_run_ids else ""
        raise ParetoError(f"experiment '{experiment}' has no FINISHED trial runs (tag {ROLE_TAG}={ROLE_TRIAL}){scope}")
    result = compute_front(trials, objectives, reference, filters, experiment=experiment,
                           sweep_run_ids=sweep_run_ids)
    params = read_params(tracking_uri, result.front["run_id"], reader=reader)
    result.front = result.front.merge(params, on="run_id", how="left", validate="one_to_one")
    return result


# --------------------------------------------------------------------------------------------
# Presentation


def format_table(result: ParetoResult, max_params: int = 6) -> str:
    """The front as a fixed-width text table (objectives, key params, trial and run ids; the
    knee marked with *), under a header with the counts, reference point and hypervolume."""
    front = result.front
    params = _table_params(result, max_params)
    columns = ["#"] + [f"{o.name} ({o.direction})" for o in result.objectives] + params + ["trial_id", "run_id"]
    rows = []
    for i, row in enumerate(front.itertuples(index=False)):
        values = dict(zip(front.columns, row))
        mark = "*" if values.get("knee") else " "
        cells = [f"{i + 1}{mark}"] + [_cell(values[o.column]) for o in result.objectives]
        cells += [_cell(values[PARAM_PREFIX + p]) for p in params]
        cells += [_cell(values.get("trial_id")), str(values["run_id"])]
        rows.append(cells)
    widths = [max(len(c[j]) for c in [columns, *rows]) for j in range(len(columns))]
    lines = [_header(result), "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in rows]
    lines.append("* knee point")
    return "\n".join(lines)


def _header(result: ParetoResult) -> str:
    n_feasible = int(result.trials["feasible"].sum())
    scope = f"experiment '{result.experiment}'" if result.experiment else "trials"
    if result.sweep_run_ids:
        scope += f", sweep(s) {', '.join(result.sweep_run_ids)}"
    ref = ", ".join(f"{o.name}={r:g}" for o, r in zip(result.objectives, result.reference))
    filters = f"; filters {', '.join(map(str, result.filters))}" if result.filters else ""
    return (f"Pareto front of {scope}: {len(result.front)} of {n_feasible} feasible trials "
            f"({len(result.trials)} finished{filters}); hypervolume {result.hypervolume:.6g} "
            f"w.r.t. reference ({ref})")


def _table_params(result: ParetoResult, max_params: int) -> list[str]:
    """Key params first, then the other params that vary over the front."""
    front = result.front
    present = [c[len(PARAM_PREFIX):] for c in front.columns if c.startswith(PARAM_PREFIX)]
    varying = [p for p in present if front[PARAM_PREFIX + p].astype(str).nunique() > 1]
    ordered = [p for p in KEY_PARAMS if p in present] + [p for p in varying if p not in KEY_PARAMS]
    return ordered[:max(max_params, 0)]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value + 0.0:.4g}"  # + 0.0 turns -0.0 into 0.0
    return str(value)


def write_plot(result: ParetoResult, path: str | os.PathLike) -> Path:
    """PNG of the objective space: every trial with finite objectives in grey (hollow if a filter
    excluded it), the front highlighted (connected in 2-D), the knee starred, the hypervolume
    and reference in the title. k > 2 objectives: one panel per pair of objectives."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pairs = _panel_pairs(len(result.objectives))
    fig = Figure(figsize=(6.4 * len(pairs), 4.8), dpi=120)
    FigureCanvasAgg(fig)
    for n, (xi, yi) in enumerate(pairs):
        _plot_panel(fig.add_subplot(1, len(pairs), n + 1), result, xi, yi, connect=len(result.objectives) == 2)
    ref = ", ".join(f"{o.name}={r:g}" for o, r in zip(result.objectives, result.reference))
    fig.suptitle(f"{result.experiment or 'Pareto front'}: {len(result.front)} Pareto-optimal of "
                 f"{int(result.trials['feasible'].sum())} feasible trials\n"
                 f"hypervolume {result.hypervolume:.4g} (reference {ref})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


def _panel_pairs(k: int) -> list[tuple[int, int]]:
    """(x, y) objective indices per panel; 2-D puts the second objective (l0 density by
    default) on x and the first (accuracy) on y."""
    if k == 1:
        return [(0, 0)]
    if k == 2:
        return [(1, 0)]
    return [(j, i) for i in range(k) for j in range(i + 1, k)]


def _plot_panel(ax, result: ParetoResult, xi: int, yi: int, connect: bool) -> None:
    ox, oy = result.objectives[xi], result.objectives[yi]
    trials, front = result.trials, result.front
    finite = np.isfinite(trials[[ox.column, oy.column]].to_numpy(dtype=float)).all(axis=1)
    kept = trials[finite & trials["feasible"].to_numpy()]
    dropped = trials[finite & ~trials["feasible"].to_numpy()]
    ax.scatter(kept[ox.column], kept[oy.column], s=14, c="0.6", label=f"trials ({len(kept)})", zorder=1)
    if len(dropped):
        ax.scatter(dropped[ox.column], dropped[oy.column], s=14, facecolors="none", edgecolors="0.75",
                   label=f"filtered out ({len(dropped)})", zorder=1)
    fx, fy = front[ox.column].to_numpy(dtype=float), front[oy.column].to_numpy(dtype=float)
    if connect:
        order = np.argsort(fx, kind="stable")
        ax.plot(fx[order], fy[order], "-", c="tab:red", lw=1.2, zorder=2)
    ax.scatter(fx, fy, s=30, c="tab:red", edgecolors="k", linewidths=0.5, label=f"Pareto front ({len(front)})", zorder=3)
    knee = front["knee"].to_numpy()
    ax.scatter(fx[knee], fy[knee], s=220, marker="*", c="gold", edgecolors="k", label="knee", zorder=4)
    ax.set_xlabel(_axis_label(ox))
    ax.set_ylabel(_axis_label(oy))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _axis_label(obj: Objective) -> str:
    return f"{obj.name} ({'maximize ↑' if obj.direction == 'max' else 'minimize ↓'})"


# --------------------------------------------------------------------------------------------
# Export, registry, logging to the sweep's parent run


def check_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """The output directory if it may be written: absent, empty, or (with overwrite) any
    directory; raises ParetoError otherwise. Changes nothing."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ParetoError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ParetoError(f"--out {out}: directory exists and is not empty (pass --overwrite to replace the export)")
    return out


def prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """The output directory, created (see check_out_dir); overwrite removes only what an
    export writes (pareto.* and checkpoints/)."""
    out = check_out_dir(out_dir, overwrite)
    if out.is_dir():
        for name in ("pareto.parquet", "pareto.png", "pareto.txt"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def export(result: ParetoResult, out_dir: str | os.PathLike, *, overwrite: bool = False,
           register: str | None = None, tracking_uri: str | None = None) -> Path:
    """Write `pareto.parquet` (one row per Pareto-optimal trial; objectives, reference,
    hypervolume, experiment and time in the schema metadata), `pareto.png`, `pareto.txt` (the
    table) and `checkpoints/<run_id>/` (each checkpoint copied, checked loadable with
    jepa_ray.load_encoder, with its MLflow metrics and run info). A checkpoint that cannot be
    read is reported on stderr and in the `export_error` column; the others are exported.
    register: also register the exported encoders under this MLflow model name."""
    out = prepare_out_dir(out_dir, overwrite)
    front = result.front.copy()
    paths, errors = [], []
    for row in front.itertuples(index=False):
        values = dict(zip(front.columns, row))
        path, error = _export_checkpoint(values, result, out / "checkpoints" / str(values["run_id"]))
        if error:
            print(f"warning: run {values['run_id']}: checkpoint {values['checkpoint']!r} not exported: {error}",
                  file=sys.stderr)
        paths.append(path)
        errors.append(error)
    front["export_path"] = paths
    front["export_error"] = errors
    write_parquet(result, front, out / "pareto.parquet")
    write_plot(result, out / "pareto.png")
    (out / "pareto.txt").write_text(format_table(result) + "\n")
    if register:
        register_encoders(result, front, out, register, tracking_uri or DEFAULT_TRACKING_URI)
    return out


def _export_checkpoint(values: dict, result: ParetoResult, dest: Path) -> tuple[str | None, str | None]:
    """Copy one checkpoint and verify it; (relative path, None) or (None, reason)."""
    from jepa_ray.checkpoint import load_encoder, local_path

    uri = values.get("checkpoint")
    if not isinstance(uri, str) or not uri:
        return None, f"run has no {CHECKPOINT_TAG} tag"
    source = None
    try:
        source = local_path(uri)
        if not source.is_dir():
            raise FileNotFoundError(f"{source} is not a directory")
        missing = [f for f in EXPORT_FILES[:2] if not (source / f).is_file()]
        if missing:
            raise FileNotFoundError(f"missing {', '.join(missing)} in {source}")
        dest.mkdir(parents=True)
        for name in EXPORT_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, dest / name)
        _write_run_info(values, result, dest)
        load_encoder(dest)
    except Exception as exc:  # any unreadable checkpoint is reported, the others still exported
        shutil.rmtree(dest, ignore_errors=True)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        if source is not None and "://" in str(uri) and not str(uri).startswith("file://"):
            shutil.rmtree(source, ignore_errors=True)
    return str(dest.relative_to(dest.parents[1])), None


def _write_run_info(values: dict, result: ParetoResult, dest: Path) -> None:
    """metrics.json gains the trial's final MLflow metrics; mlflow_run.json records the run."""
    metrics_path = dest / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    for column, value in values.items():
        if column.startswith(METRIC_PREFIX) and isinstance(value, float) and math.isfinite(value):
            metrics[column[len(METRIC_PREFIX):]] = value
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    info = {
        "run_id": values["run_id"], "trial_id": values["trial_id"], "sweep_run_id": values["sweep_run_id"],
        "experiment": result.experiment, "source_checkpoint": values["checkpoint"],
        "objectives": {o.name: values[o.column] for o in result.objectives},
        "directions": {o.name: o.direction for o in result.objectives},
        "knee": bool(values.get("knee")),
    }
    (dest / "mlflow_run.json").write_text(json.dumps(info, indent=2, default=str))


def write_parquet(result: ParetoResult, front: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The front as parquet with the result's metadata in the schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(front, preserve_index=False)
    meta = {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in result.metadata().items()}}
    pq.write_table(table.replace_schema_metadata(meta), path)
    return Path(path)


def register_encoders(result: ParetoResult, front: pd.DataFrame, out: Path, name: str,
                      tracking_uri: str) -> list[str]:
    """Log each exported checkpoint to its trial run (artifact `pareto_encoder`) and register it
    as a version of model `name`, tagged with its objectives; the version numbers."""
    from mlflow.exceptions import MlflowException
    client = tracking.client(tracking_uri)
    try:
        client.create_registered_model(name, description="Pareto-optimal jepa_ray encoders")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    versions = []
    for row in front.itertuples(index=False):
        values = dict(zip(front.columns, row))
        if not isinstance(values["export_path"], str):
            continue
        run_id = str(values["run_id"])
        client.log_artifacts(run_id, str(out / values["export_path"]), artifact_path="pareto_encoder")
        source = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/pareto_encoder"
        tags = {o.name: f"{values[o.column]:.6g}" for o in result.objectives}
        tags.update({"directions": ",".join(map(str, result.objectives)), "knee": str(bool(values["knee"])),
                     "experiment": result.experiment, "trial_id": str(values["trial_id"])})
        version = client.create_model_version(name, source, run_id=run_id, tags=tags,
                                              description=f"Pareto-optimal trial {values['trial_id']}")
        versions.append(version.version)
    return versions


def log_to_parent(result: ParetoResult, tracking_uri: str, parent_run_id: str,
                  files: Sequence[str | os.PathLike] | None = None) -> None:
    """Log the plot and table (and any other given files) under `pareto/` of a sweep's parent
    run, with the hypervolume and front size as metrics."""
    client = tracking.client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="jepa_ray_pareto_") as tmp:
        if files is None:
            files = [write_plot(result, Path(tmp) / "pareto.png"), Path(tmp) / "pareto.txt"]
            Path(files[1]).write_text(format_table(result) + "\n")
        for path in files:
            client.log_artifact(parent_run_id, str(path), artifact_path="pareto")
    client.log_metric(parent_run_id, "pareto/hypervolume", result.hypervolume)
    client.log_metric(parent_run_id, "pareto/front_size", float(len(result.front)))


# --------------------------------------------------------------------------------------------
# Command line


def check_tracking_uri(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail fast on a tracking URI that cannot answer: a sqlite file that does not exist, or an
    http(s) server that does not respond (MLflow's own client would retry for minutes)."""
    if tracking_uri.startswith("sqlite:"):
        path = sqlite_path(tracking_uri)
        if path is None or not path.is_file():
            raise ParetoError(f"--tracking-uri {tracking_uri}: database file {path} does not exist")
    elif tracking_uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # the server answered (maybe behind auth): reachable
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ParetoError(f"--tracking-uri {tracking_uri}: unreachable ({reason})") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m jepa_ray.pareto", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name (default %(default)s)")
    p.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or %(default)s)")
    p.add_argument("--sweep", action="append", default=[], metavar="RUN_ID",
                   help="only the trials of this sweep parent run (repeatable: several sweeps together)")
    p.add_argument("--objectives", default=DEFAULT_OBJECTIVES, help="name:max|min, comma separated (default %(default)s)")
    p.add_argument("--filter", action="append", default=[], metavar="EXPR",
                   help="feasibility condition NAME OP NUMBER, e.g. linear_acc>=0.5 (repeatable)")
    p.add_argument("--reference", default="", metavar="NAME=VALUE,...",
                   help="hypervolume reference point (default: 0 for accuracies, 1 for densities, else worst)")
    p.add_argument("--register", default=None, metavar="MODEL_NAME",
                   help="register the exported encoders in the MLflow Model Registry under this name")
    p.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    p.add_argument("--no-log", action="store_true", help="do not log the plot and table to the sweep parent runs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        objectives = parse_objectives(args.objectives)
        filters = [parse_filter(f) for f in args.filter]
        reference = parse_reference(args.reference, objectives)
        out = check_out_dir(args.out, args.overwrite)
        check_tracking_uri(args.tracking_uri)
        result = extract(args.tracking_uri, args.experiment, sweep_run_ids=args.sweep or None,
                         objectives=objectives, filters=filters, reference=reference)
        out = export(result, out, overwrite=args.overwrite, register=args.register, tracking_uri=args.tracking_uri)
    except ParetoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not _is_mlflow_error(exc):
            raise
        print(f"error: MLflow at {args.tracking_uri}: {_first_line(exc)}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"wrote {out / 'pareto.parquet'}, {out / 'pareto.png'} and {out / 'checkpoints'}")
    if not args.no_log:
        _log_to_parents(result, args.tracking_uri, [out / "pareto.png", out / "pareto.txt", out / "pareto.parquet"])
    return 0


def _log_to_parents(result: ParetoResult, tracking_uri: str, files: list[Path]) -> None:
    """The --sweep runs, else every sweep with a trial in the result; a failure only warns
    (the export is already written)."""
    parents = result.sweep_run_ids or sorted({s for s in result.trials["sweep_run_id"] if isinstance(s, str) and s})
    for parent in parents:
        try:
            log_to_parent(result, tracking_uri, parent, files)
        except Exception as exc:
            if not _is_mlflow_error(exc):
                raise
            print(f"warning: could not log the front to sweep run {parent}: {_first_line(exc)}", file=sys.stderr)


def _is_mlflow_error(exc: BaseException) -> bool:
    errors = sys.modules.get("mlflow.exceptions")  # if mlflow was never imported, it raised nothing
    return errors is not None and isinstance(exc, errors.MlflowException)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
