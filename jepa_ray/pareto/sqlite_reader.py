"""The fast reader of a sqlite MLflow store: a few SQL queries over MLflow's own tables (only the
needed keys), where search_runs builds an object per run, param and tag (docs/benchmarks.md has
the ratio at 10,000 runs). It depends on MLflow's schema, checked before use (`sql_readable`); any
other store goes through the MLflow client."""

from __future__ import annotations

import math
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from jepa_ray.cluster import sqlite_path
from jepa_ray.contract import PARENT as PARENT_TAG
from jepa_ray.contract import ROLE as ROLE_TAG
from jepa_ray.contract import ROLE_TRIAL
from jepa_ray.contract import SWEEP_NAME as SWEEP_NAME_TAG
from jepa_ray.errors import UsageError
from jepa_ray.pareto.columns import TAG_COLUMNS

RUN_NAME_TAG = "mlflow.runName"
_SQL_COLUMNS = {
    "experiments": {"experiment_id", "name", "lifecycle_stage"},
    "runs": {"run_uuid", "experiment_id", "status", "lifecycle_stage"},
    "tags": {"key", "value", "run_uuid"},
    "latest_metrics": {"key", "value", "is_nan", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
}


def sql_readable(tracking_uri: str) -> bool:
    """Whether the direct SQL reader applies: a sqlite file with MLflow's tables, and no
    workspace-scoped store (whose experiment names are only unique per workspace)."""
    path = sqlite_path(tracking_uri)
    if path is None or not path.is_file() or os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").lower() in ("1", "true"):
        return False
    try:
        with connect(path) as con:
            return all(cols <= _table_columns(con, t) for t, cols in _SQL_COLUMNS.items())
    except sqlite3.Error:
        return False


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _table_columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in con.execute(f"PRAGMA table_info({table})")}


def read_sql(tracking_uri: str, experiment: str, sweeps: list[str], metrics: list[str], with_params: bool):
    path = sqlite_path(tracking_uri)
    if path is None or not path.is_file():
        raise UsageError(f"tracking URI {tracking_uri}: database file {path} does not exist")
    con = connect(path)
    try:
        exp_id = sql_experiment_id(con, experiment, tracking_uri)
        _sql_check_sweeps(con, exp_id, sweeps, experiment)
        sel, args = _sql_selection(exp_id, sweeps)
        run_ids = [r[0] for r in con.execute(f"{sel} SELECT run_id FROM sel", args)]
        tags = con.execute(
            f"{sel} SELECT t.run_uuid, t.key, t.value FROM tags t JOIN sel ON t.run_uuid = sel.run_id "
            f"WHERE t.key IN ({marks(TAG_COLUMNS)})",
            [*args, *TAG_COLUMNS],
        ).fetchall()
        metric_rows = con.execute(
            f"{sel} SELECT m.run_uuid, m.key, CASE WHEN m.is_nan THEN NULL ELSE m.value END "
            f"FROM latest_metrics m JOIN sel ON m.run_uuid = sel.run_id WHERE m.key IN ({marks(metrics)})",
            [*args, *metrics],
        ).fetchall()
        params = (
            con.execute(
                f"{sel} SELECT p.run_uuid, p.key, p.value FROM params p JOIN sel ON p.run_uuid = sel.run_id", args
            ).fetchall()
            if with_params
            else []
        )
    finally:
        con.close()
    return run_ids, tags, [(r, k, math.nan if v is None else v) for r, k, v in metric_rows], params


def read_sql_sweeps(tracking_uri: str, run_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Run id -> (experiment name, sweep name) of the given runs that exist (see
    reader.read_sweeps): one query for the experiments, one for the name tags."""
    with closing(connect(sqlite_path(tracking_uri))) as con:
        experiments = dict(
            con.execute(
                "SELECT r.run_uuid, e.name FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
                f"WHERE r.run_uuid IN ({marks(run_ids)})",
                run_ids,
            ).fetchall()
        )
        names: dict[str, dict[str, str]] = {}
        for rid, key, value in con.execute(
            f"SELECT run_uuid, key, value FROM tags WHERE key IN (?, ?) AND run_uuid IN ({marks(run_ids)})",
            [SWEEP_NAME_TAG, RUN_NAME_TAG, *run_ids],
        ):
            names.setdefault(rid, {})[key] = value
    found = {}
    for rid, experiment in experiments.items():
        tags = names.get(rid, {})
        found[rid] = (experiment, tags.get(SWEEP_NAME_TAG) or tags.get(RUN_NAME_TAG) or rid)
    return found


def marks(items) -> str:
    return ",".join("?" * len(items))


def sql_experiment_id(con: sqlite3.Connection, experiment: str, tracking_uri: str) -> int:
    where, args = "name = ?", [experiment]
    if "workspace" in _table_columns(con, "experiments"):
        where += " AND workspace = 'default'"
    rows = con.execute(f"SELECT experiment_id, lifecycle_stage FROM experiments WHERE {where}", args).fetchall()
    if not rows:
        names = [
            r[0]
            for r in con.execute("SELECT name FROM experiments WHERE lifecycle_stage = 'active' ORDER BY name LIMIT 20")
        ]
        raise UsageError(unknown_experiment(experiment, tracking_uri, names))
    if rows[0][1] != "active":
        raise UsageError(f"experiment '{experiment}' at {tracking_uri} is deleted")
    return int(rows[0][0])


def _sql_check_sweeps(con: sqlite3.Connection, exp_id: int, sweeps: list[str], experiment: str) -> None:
    if not sweeps:
        return
    found = {
        r[0]
        for r in con.execute(
            f"SELECT run_uuid FROM runs WHERE experiment_id = ? AND run_uuid IN ({marks(sweeps)})", [exp_id, *sweeps]
        )
    }
    missing = [s for s in sweeps if s not in found]
    if missing:
        raise UsageError(f"--sweep {missing[0]}: no such run in experiment '{experiment}'")


def _sql_selection(exp_id: int, sweeps: list[str]) -> tuple[str, list]:
    """A CTE `sel(run_id)` of the FINISHED active trial runs (of the sweeps, if any)."""
    parent = ""
    args: list[Any] = [ROLE_TAG, ROLE_TRIAL]
    if sweeps:
        parent = f"JOIN tags par ON par.run_uuid = r.run_uuid AND par.key = ? AND par.value IN ({marks(sweeps)})"
        args += [PARENT_TAG, *sweeps]
    args.append(exp_id)
    sql = (
        "WITH sel AS (SELECT r.run_uuid AS run_id FROM runs r "
        "JOIN tags role ON role.run_uuid = r.run_uuid AND role.key = ? AND role.value = ? "
        f"{parent} WHERE r.experiment_id = ? AND r.status = 'FINISHED' "
        "AND r.lifecycle_stage = 'active')"
    )
    return sql, args


def unknown_experiment(experiment: str, tracking_uri: str, names: list[str]) -> str:
    known = ", ".join(names) if names else "none"
    return f"unknown experiment '{experiment}' at {tracking_uri}; experiments there: {known}"
