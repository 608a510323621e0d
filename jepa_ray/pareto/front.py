"""Pareto fronts of finished sweep trials, read from MLflow: the non-dominated trials for any
number of objectives (default: maximize `linear_acc`, minimize `l0_density`), ranked, with
hypervolume and knee point."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from jepa_ray.contract import DEFAULT_OBJECTIVES, HEADLINE_METRICS, ROLE_TRIAL
from jepa_ray.contract import ROLE as ROLE_TAG
from jepa_ray.errors import UsageError
from jepa_ray.pareto.columns import METRIC_PREFIX, ORIGIN_COLUMNS
from jepa_ray.pareto.dominance import hypervolume, knee_point, nondominated_ranks
from jepa_ray.pareto.objectives import Filter, Objective, default_reference, parse_filter, parse_objectives
from jepa_ray.pareto.reader import read_params, read_sweeps, read_trials, use_sql


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


def compute_front(
    trials: pd.DataFrame,
    objectives: Sequence[Objective] | str | None = None,
    reference: Mapping[str, float] | Sequence[float] | None = None,
    filters: Sequence[Filter | str] | None = None,
    *,
    experiment: str = "",
    sweep_run_ids: Sequence[str] | None = None,
) -> ParetoResult:
    """Rank the feasible trials (finite objectives and every filter true) and extract the front,
    its hypervolume against `reference` (default: see default_reference) and its knee.
    trials: a read_trials frame (or any frame with run_id and `metrics.<name>` columns, such as
    mlflow.search_runs gives)."""
    objectives = objective_list(objectives)
    filters = filter_list(filters)
    if trials.empty:
        raise UsageError("no finished trial runs to rank")
    _check_objectives(trials, objectives)
    values = trials[[o.column for o in objectives]].to_numpy(dtype=float)
    feasible = np.isfinite(values).all(axis=1)
    for f in filters:
        feasible &= f.mask(trials)
    if not feasible.any():
        extra = f" and filters {', '.join(map(str, filters))}" if filters else ""
        raise UsageError(f"none of the {len(trials)} finished trial runs is feasible (finite objectives{extra})")
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
        trials=trials,
        front=front,
        objectives=list(objectives),
        reference=ref,
        hypervolume=hypervolume(front_values, directions, ref),
        knee_run_id=str(front["run_id"].iloc[knee]),
        experiment=experiment,
        sweep_run_ids=list(sweep_run_ids or []),
        filters=filters,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def filter_list(filters: Sequence[Filter | str] | None) -> list[Filter]:
    return [parse_filter(f) if isinstance(f, str) else f for f in (filters or [])]


def objective_list(objectives: Sequence[Objective] | str | None) -> list[Objective]:
    if objectives is None:
        return parse_objectives(DEFAULT_OBJECTIVES)
    if isinstance(objectives, str):
        return parse_objectives(objectives)
    return list(objectives)


def _check_objectives(trials: pd.DataFrame, objectives: Sequence[Objective]) -> None:
    for obj in objectives:
        if obj.column not in trials.columns or trials[obj.column].isna().all():
            found = [
                c[len(METRIC_PREFIX) :]
                for c in trials.columns
                if c.startswith(METRIC_PREFIX) and trials[c].notna().any()
            ]
            raise UsageError(
                f"objective '{obj.name}' is not a final metric of any of the {len(trials)} finished "
                f"trial runs; metrics found: {', '.join(found) or 'none'}"
            )


def _reference(
    objectives: Sequence[Objective],
    feasible_values: np.ndarray,
    reference: Mapping[str, float] | Sequence[float] | None,
) -> tuple[float, ...]:
    ref = list(default_reference(objectives, feasible_values))
    if isinstance(reference, Mapping):
        unknown = set(reference) - {o.name for o in objectives}
        if unknown:
            raise UsageError(f"reference: {sorted(unknown)[0]!r} is not an objective")
        ref = [float(reference.get(o.name, r)) for o, r in zip(objectives, ref)]
    elif reference is not None:
        if len(reference) != len(objectives):
            raise UsageError(f"reference: {len(reference)} values for {len(objectives)} objectives")
        ref = [float(r) for r in reference]
    return tuple(ref)


def _sorted_front(front: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """Best first on the first objective, then the next ones, then run id."""
    keys = [front["run_id"].to_numpy()] + [front[o.column].to_numpy() * o.sign for o in reversed(objectives)]
    return front.iloc[np.lexsort(keys)].reset_index(drop=True)


def extract(
    tracking_uri: str,
    experiment: str,
    *,
    sweep_run_ids: Sequence[str] | None = None,
    objectives: Sequence[Objective] | str | None = None,
    filters: Sequence[Filter | str] | None = None,
    reference: Mapping[str, float] | Sequence[float] | None = None,
    reader: str = "auto",
) -> ParetoResult:
    """read_trials + compute_front with the metrics the objectives and filters need, and the
    params of the front's trials (the trials frame has none) and the origin columns
    (`experiment`, `sweep_name`; see add_origin): what the sweep driver calls at its end (the
    command line reads through jepa_ray.pareto.comparison.compare, its multi-front form)."""
    objectives = objective_list(objectives)
    filters = filter_list(filters)
    metrics = [*HEADLINE_METRICS, *[o.name for o in objectives], *[f.name for f in filters]]
    reader = "sql" if use_sql(tracking_uri, reader) else "mlflow"  # probe the store's schema once
    trials = read_trials(
        tracking_uri, experiment, sweep_run_ids=sweep_run_ids, metrics=metrics, params=False, reader=reader
    )
    if trials.empty:
        scope = f" in sweep(s) {', '.join(sweep_run_ids)}" if sweep_run_ids else ""
        raise UsageError(f"experiment '{experiment}' has no FINISHED trial runs (tag {ROLE_TAG}={ROLE_TRIAL}){scope}")
    trials = add_origin(trials, experiment, read_sweeps(tracking_uri, trials["sweep_run_id"].dropna(), reader=reader))
    result = compute_front(trials, objectives, reference, filters, experiment=experiment, sweep_run_ids=sweep_run_ids)
    result.front = with_params(result.front, read_params(tracking_uri, result.front["run_id"], reader=reader))
    return result


def with_params(frame: pd.DataFrame, params: pd.DataFrame) -> pd.DataFrame:
    """frame with the `params.<name>` columns of its runs (a read_params frame) joined on run_id."""
    return frame.merge(params, on="run_id", how="left", validate="one_to_one")


def add_origin(trials: pd.DataFrame, experiment: str, sweeps: Mapping[str, tuple[str, str]]) -> pd.DataFrame:
    """trials with the columns that say where each point comes from, after `sweep_run_id`:
    `experiment` (its MLflow experiment) and `sweep_name` (its sweep parent's name from
    `sweeps`, a read_sweeps mapping; None for a trial outside any known sweep)."""
    trials = trials.drop(columns=[c for c in ORIGIN_COLUMNS if c in trials.columns])
    if "sweep_run_id" not in trials.columns:
        trials["sweep_run_id"] = pd.Series(None, index=trials.index, dtype=object)
    names = [sweeps[s][1] if isinstance(s, str) and s in sweeps else None for s in trials["sweep_run_id"]]
    at = list(trials.columns).index("sweep_run_id") + 1
    trials.insert(at, "experiment", pd.Series([experiment] * len(trials), index=trials.index, dtype=object))
    trials.insert(at + 1, "sweep_name", pd.Series(names, index=trials.index, dtype=object))
    return trials
