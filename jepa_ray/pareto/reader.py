"""Reading the finished trial runs of an experiment from MLflow (the layout of
docs/design.md): FINISHED, active child runs tagged `jepa_ray.role=trial`, their final metrics
(MLflow's latest values), flattened-config params and the `jepa_ray.checkpoint` tag, one row per
run. sqlite:// stores are read directly (jepa_ray.pareto.sqlite_reader); any other store pages
through `MlflowClient.search_runs`. Both give the same frame."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing

import numpy as np
import pandas as pd

from jepa_ray import tracking
from jepa_ray.cluster import sqlite_path
from jepa_ray.contract import HEADLINE_METRICS, ROLE_TRIAL
from jepa_ray.contract import PARENT as PARENT_TAG
from jepa_ray.contract import ROLE as ROLE_TAG
from jepa_ray.contract import SWEEP_NAME as SWEEP_NAME_TAG
from jepa_ray.errors import UsageError
from jepa_ray.pareto.columns import BASE_COLUMNS, METRIC_PREFIX, PARAM_PREFIX, SQL_INF, TAG_COLUMNS
from jepa_ray.pareto.sqlite_reader import (
    connect,
    marks,
    read_sql,
    read_sql_sweeps,
    sql_experiment_id,
    sql_readable,
    unknown_experiment,
)
from jepa_ray.tracking.store import SEARCH_PAGE_SIZE


def read_trials(
    tracking_uri: str,
    experiment: str,
    *,
    sweep_run_ids: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    params: bool = True,
    reader: str = "auto",
    page_size: int = SEARCH_PAGE_SIZE,
) -> pd.DataFrame:
    """The FINISHED, active trial runs (tag jepa_ray.role=trial) of an experiment, optionally
    only the children of the given sweep parent runs, one row each (sorted by run id):
    run_id, trial_id, sweep_run_id, checkpoint, `metrics.<name>` for the requested final
    metrics (default HEADLINE_METRICS; NaN where a run lacks one) and, if params, `params.<name>`
    for every param (numeric where every value is a number, else text). Params are most of a
    trial's data: extract() reads them only for the front (read_params).

    reader: "sql" reads a sqlite store's tables directly (only the needed rows), "mlflow" pages
    through MlflowClient.search_runs, "auto" takes "sql" for sqlite:// URIs of a known schema."""
    metrics = list(dict.fromkeys(metrics or HEADLINE_METRICS))
    sweeps = list(dict.fromkeys(sweep_run_ids or []))
    if use_sql(tracking_uri, reader):
        long = read_sql(tracking_uri, experiment, sweeps, metrics, params)
    else:
        long = _read_mlflow(tracking_uri, experiment, sweeps, metrics, params, page_size)
    return _assemble(*long, metrics=metrics)


def read_params(tracking_uri: str, run_ids: Sequence[str], *, reader: str = "auto") -> pd.DataFrame:
    """run_id and `params.<name>` (typed as in read_trials) of the given runs, sorted by run id."""
    run_ids = sorted(set(run_ids))
    if use_sql(tracking_uri, reader):
        with connect(sqlite_path(tracking_uri)) as con:
            rows = [
                row
                for start in range(0, len(run_ids), 500)
                for row in con.execute(
                    "SELECT run_uuid, key, value FROM params WHERE run_uuid IN "
                    f"({marks(run_ids[start : start + 500])})",
                    run_ids[start : start + 500],
                )
            ]
    else:
        client = tracking.client(tracking_uri)
        rows = [(rid, k, v) for rid in run_ids for k, v in client.get_run(rid).data.params.items()]
    index = pd.Index(run_ids, name="run_id")
    return _params_frame(rows, index).reset_index()


def use_sql(tracking_uri: str, reader: str) -> bool:
    if reader not in ("auto", "sql", "mlflow"):
        raise ValueError(f"reader {reader!r} is not allowed; allowed: auto, sql, mlflow")
    return reader == "sql" or (reader == "auto" and sql_readable(tracking_uri))


def _read_mlflow(
    tracking_uri: str, experiment: str, sweeps: list[str], metrics: list[str], with_params: bool, page_size: int
):
    from mlflow.entities import ViewType

    client = tracking.client(tracking_uri)
    exp = _mlflow_experiment(client, experiment, tracking_uri)
    _mlflow_check_sweeps(client, exp.experiment_id, sweeps, experiment)
    base = f"attributes.status = 'FINISHED' AND tags.`{ROLE_TAG}` = '{ROLE_TRIAL}'"
    filters = [f"{base} AND tags.`{PARENT_TAG}` = '{s}'" for s in sweeps] or [base]
    run_ids, tags, metric_rows, params = [], [], [], []
    wanted = set(metrics)
    for filter_string in filters:
        token = None
        while True:
            page = client.search_runs(
                [exp.experiment_id],
                filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=page_size,
                page_token=token,
            )
            for run in page:
                rid = run.info.run_id
                run_ids.append(rid)
                tags += [(rid, k, v) for k, v in run.data.tags.items() if k in TAG_COLUMNS]
                metric_rows += [(rid, k, v) for k, v in run.data.metrics.items() if k in wanted]
                if with_params:
                    params += [(rid, k, v) for k, v in run.data.params.items()]
            token = page.token
            if not token:
                break
    return run_ids, tags, metric_rows, params


def _mlflow_experiment(client, experiment: str, tracking_uri: str):
    """The active experiment of that name; UsageError naming it (and the known ones) otherwise."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments(max_results=200))[:20]
        raise UsageError(unknown_experiment(experiment, tracking_uri, names))
    if exp.lifecycle_stage != "active":
        raise UsageError(f"experiment '{experiment}' at {tracking_uri} is deleted")
    return exp


def check_experiment(tracking_uri: str, experiment: str, *, reader: str = "auto") -> None:
    """UsageError (one line naming it and the experiments there) unless the experiment exists
    and is active: what a comparison checks for every experiment before it reads any trial."""
    if use_sql(tracking_uri, reader):
        with closing(connect(sqlite_path(tracking_uri))) as con:
            sql_experiment_id(con, experiment, tracking_uri)
    else:
        _mlflow_experiment(tracking.client(tracking_uri), experiment, tracking_uri)


def read_sweeps(tracking_uri: str, run_ids: Sequence[str], *, reader: str = "auto") -> dict[str, tuple[str, str]]:
    """Run id -> (experiment name, sweep name) for those of the given runs that exist. The sweep
    name is the parent run's `jepa_ray.sweep_name` tag, else its run name, else its id: the
    label a point's sweep of origin gets in a comparison."""
    run_ids = sorted({r for r in run_ids if r})
    if not run_ids:
        return {}
    if use_sql(tracking_uri, reader):
        return read_sql_sweeps(tracking_uri, run_ids)
    from mlflow.exceptions import MlflowException

    client = tracking.client(tracking_uri)
    found: dict[str, tuple[str, str]] = {}
    for rid in run_ids:
        try:
            run = client.get_run(rid)
        except MlflowException:
            continue
        name = run.data.tags.get(SWEEP_NAME_TAG) or run.info.run_name or rid
        found[rid] = (client.get_experiment(run.info.experiment_id).name, name)
    return found


def _mlflow_check_sweeps(client, exp_id: str, sweeps: list[str], experiment: str) -> None:
    from mlflow.exceptions import MlflowException

    for sweep in sweeps:
        try:
            run = client.get_run(sweep)
        except MlflowException:
            run = None
        if run is None or run.info.experiment_id != exp_id:
            raise UsageError(f"--sweep {sweep}: no such run in experiment '{experiment}'")


def _assemble(run_ids: list[str], tags: list, metric_rows: list, params: list, *, metrics: list[str]) -> pd.DataFrame:
    """One frame from (run_id, key, value) rows; both readers end here so they agree."""
    index = pd.Index(sorted(set(run_ids)), name="run_id")
    frame = pd.DataFrame(index=index)
    tag_wide = _pivot(tags, index)
    for tag, column in TAG_COLUMNS.items():
        frame[column] = _text(tag_wide[tag]) if tag in tag_wide else pd.Series(None, index=index, dtype=object)
    metric_wide = _pivot(metric_rows, index)
    for name in metrics:
        values = metric_wide[name].astype(float) if name in metric_wide else pd.Series(np.nan, index=index)
        frame[METRIC_PREFIX + name] = values.where(values.abs() < SQL_INF, np.sign(values) * np.inf)
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
