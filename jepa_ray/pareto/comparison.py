"""Fronts compared: the trials of several experiments and/or sweeps read together, one front per
group (experiment or sweep), every hypervolume at ONE reference point shared by all groups, and
the hypervolume of each sweep with its mean and spread over the sweeps of an experiment (seeds
of one search space). A single front is the one-group case, so one export code serves both."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from jepa_ray.contract import HEADLINE_METRICS, ROLE_TRIAL
from jepa_ray.contract import ROLE as ROLE_TAG
from jepa_ray.errors import UsageError
from jepa_ray.pareto.columns import DEFAULT_EXPERIMENT, PARAM_PREFIX
from jepa_ray.pareto.dominance import hypervolume, non_dominated
from jepa_ray.pareto.front import ParetoResult, add_origin, compute_front, filter_list, objective_list, with_params
from jepa_ray.pareto.objectives import Filter, Objective
from jepa_ray.pareto.reader import check_experiment, read_params, read_sweeps, read_trials, use_sql

GROUP_BY = ("auto", "experiment", "sweep", "none")
NO_SWEEP = "(no sweep)"
SWEEP_COLUMNS = ("experiment", "sweep_run_id", "sweep_name", "group", "n_trials", "n_feasible", "front_size")


@dataclass
class Comparison:
    """`overall`: the front of every trial read, pooled (what a single export is); `groups`:
    label -> the front of that group's trials, at overall's reference point; `group_by`: what
    a group is ("experiment", "sweep" or "none": one group); `sweeps`: one row per sweep
    (SWEEP_COLUMNS and `hypervolume`, at the same reference)."""

    overall: ParetoResult
    groups: dict[str, ParetoResult]
    group_by: str
    sweeps: pd.DataFrame

    @property
    def objectives(self) -> list[Objective]:
        return self.overall.objectives

    @property
    def reference(self) -> tuple[float, ...]:
        return self.overall.reference

    def front(self) -> pd.DataFrame:
        """The rows an export writes: each group's front (its `knee` and `front_rank` are within
        the group) with `group`, and `overall_front` (also on the pooled front). One group:
        exactly the pooled front."""
        pooled = set(self.overall.front["run_id"])
        parts = [g.front.assign(group=label) for label, g in self.groups.items()]
        front = pd.concat(parts, ignore_index=True)
        front["overall_front"] = front["run_id"].isin(pooled)
        return front

    def sweep_stats(self) -> dict[str, dict[str, float | int | None]]:
        """Per experiment, over its sweeps: n, mean, std (sample standard deviation, ddof=1;
        None for one sweep), min and max of the per-sweep hypervolume."""
        return sweep_stats(self.sweeps)

    def summary(self) -> dict:
        """What the export's `pareto.json` holds (and the Parquet's schema metadata)."""
        groups = []
        for label, g in self.groups.items():
            groups.append(
                {
                    "label": label,
                    "experiments": sorted({str(e) for e in g.trials["experiment"].dropna()}),
                    "sweep_run_ids": sorted({str(s) for s in g.trials["sweep_run_id"].dropna()}),
                    "n_trials": int(len(g.trials)),
                    "n_feasible": int(g.trials["feasible"].sum()),
                    "front_size": int(len(g.front)),
                    "hypervolume": g.hypervolume,
                    "knee_run_id": g.knee_run_id,
                }
            )
        return {
            "objectives": [{"name": o.name, "direction": o.direction} for o in self.objectives],
            "reference": dict(zip([o.name for o in self.objectives], self.reference)),
            "group_by": self.group_by,
            "groups": groups,
            "overall": {"hypervolume": self.overall.hypervolume, "front_size": int(len(self.overall.front))},
            "sweeps": _records(self.sweeps),
            "sweep_hypervolume": self.sweep_stats(),
            "sweep_hypervolume_spread": "std: sample standard deviation (ddof=1) over the sweeps; min, max: range",
        }

    def metadata(self) -> dict[str, str]:
        """The pooled front's Parquet metadata (unchanged keys) plus the comparison's."""
        summary = self.summary()
        extra = {k: summary[k] for k in ("group_by", "groups", "sweeps", "sweep_hypervolume")}
        extra["experiments"] = sorted({str(e) for e in self.overall.trials["experiment"].dropna()})
        return {**self.overall.metadata(), **{f"jepa_ray.{k}": json.dumps(v) for k, v in extra.items()}}


def single(result: ParetoResult) -> Comparison:
    """A one-group comparison of a front (what export does with a plain ParetoResult)."""
    if "experiment" not in result.trials.columns:  # a compute_front of a plain frame
        trials, front = (add_origin(f, result.experiment, {}) for f in (result.trials, result.front))
        result = dataclasses.replace(result, trials=trials, front=front)
    label = result.experiment or "trials"
    return Comparison(result, {label: result}, "none", sweep_table(result.trials.assign(group=label), result))


def sweep_table(trials: pd.DataFrame, result: ParetoResult) -> pd.DataFrame:
    """One row per sweep of the trials (feasibility as in result): its counts, front size and
    hypervolume at result's reference point; trials outside any sweep are left out."""
    rows = []
    columns = [o.column for o in result.objectives]
    directions = [o.direction for o in result.objectives]
    for sweep, part in trials[trials["sweep_run_id"].notna()].groupby("sweep_run_id", sort=False):
        feasible = part[part["feasible"].to_numpy(dtype=bool)]
        values = feasible[columns].to_numpy(dtype=float)
        first = part.iloc[0]
        rows.append(
            {
                "experiment": first["experiment"],
                "sweep_run_id": sweep,
                "sweep_name": first["sweep_name"] if isinstance(first["sweep_name"], str) else sweep,
                "group": first["group"],
                "n_trials": int(len(part)),
                "n_feasible": int(len(feasible)),
                "front_size": int(non_dominated(values, directions).sum()) if len(values) else 0,
                "hypervolume": hypervolume(values, directions, result.reference) if len(values) else 0.0,
            }
        )
    return pd.DataFrame(rows, columns=[*SWEEP_COLUMNS, "hypervolume"])


def sweep_stats(sweeps: pd.DataFrame) -> dict[str, dict[str, float | int | None]]:
    """Per experiment: n, mean, std (ddof=1, None below two sweeps), min, max of `hypervolume`."""
    stats = {}
    for experiment, part in sweeps.groupby("experiment", sort=False):
        hv = part["hypervolume"].to_numpy(dtype=float)
        stats[str(experiment)] = {
            "n": int(len(hv)),
            "mean": float(hv.mean()),
            "std": float(hv.std(ddof=1)) if len(hv) > 1 else None,
            "min": float(hv.min()),
            "max": float(hv.max()),
        }
    return stats


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts (numpy scalars turned into Python numbers)."""
    rows = frame.to_dict("records")
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()} for row in rows]


def resolve_scope(
    tracking_uri: str, experiments: Sequence[str] | None, sweeps: Sequence[str] | None, *, reader: str = "auto"
) -> tuple[dict[str, list[str]], dict[str, tuple[str, str]]]:
    """Experiment -> its selected sweeps ([]: all its trials), and the sweeps' (experiment, name);
    every experiment and sweep is checked before any trial is read (UsageError naming the first
    bad one). No experiment given: those of the sweeps, else the default experiment."""
    experiments = list(dict.fromkeys(experiments or []))
    sweeps = list(dict.fromkeys(sweeps or []))
    for name in experiments:
        check_experiment(tracking_uri, name, reader=reader)
    info = read_sweeps(tracking_uri, sweeps, reader=reader)
    given = bool(experiments)
    if not given:
        experiments = list(dict.fromkeys(info[s][0] for s in sweeps if s in info)) or [DEFAULT_EXPERIMENT]
        if not sweeps:
            check_experiment(tracking_uri, experiments[0], reader=reader)
    for sweep in sweeps:
        if sweep in info and info[sweep][0] in experiments:
            continue
        if not given:
            raise UsageError(f"--sweep {sweep}: no such run at {tracking_uri}")
        where = f" (it is a run of '{info[sweep][0]}')" if sweep in info else ""
        raise UsageError(f"--sweep {sweep}: no such run in experiment {', '.join(map(repr, experiments))}{where}")
    return {e: [s for s in sweeps if info[s][0] == e] for e in experiments}, info


def compare(
    tracking_uri: str,
    experiments: Sequence[str] | None = None,
    sweeps: Sequence[str] | None = None,
    *,
    group_by: str = "auto",
    objectives: Sequence[Objective] | str | None = None,
    filters: Sequence[Filter | str] | None = None,
    reference: Mapping[str, float] | Sequence[float] | None = None,
    reader: str = "auto",
    dedupe: bool = False,
) -> Comparison:
    """Read the trials of the experiments (each restricted to its given sweeps, if any), pool
    them into one front, and split them into groups (auto: by experiment when several are
    given, by sweep when several sweeps are, else one group), each group's front and every
    sweep's hypervolume taken at the pooled front's reference point (default_reference over
    all groups, or `reference`), so hypervolumes of different groups compare."""
    if group_by not in GROUP_BY:
        raise UsageError(f"--group-by {group_by!r} is not allowed; allowed: {', '.join(GROUP_BY)}")
    reader = "sql" if use_sql(tracking_uri, reader) else "mlflow"
    scope, _ = resolve_scope(tracking_uri, experiments, sweeps, reader=reader)
    given_sweeps = list(dict.fromkeys(sweeps or []))
    objectives, filters = objective_list(objectives), filter_list(filters)
    trials = _read_all(tracking_uri, scope, objectives, filters, reader)
    if dedupe:
        trials = drop_repeats(trials, read_params(tracking_uri, trials["run_id"], reader=reader))
    group_by = _group_by(group_by, scope)
    trials["group"] = _labels(trials, group_by)
    names = list(scope)
    pooled = compute_front(
        trials, objectives, reference, filters, experiment=", ".join(names), sweep_run_ids=given_sweeps
    )
    groups = _group_fronts(pooled, group_by, _label_order(trials, group_by, given_sweeps))
    runs = set(pooled.front["run_id"]).union(*[set(g.front["run_id"]) for g in groups.values()])
    params = read_params(tracking_uri, sorted(runs), reader=reader)
    for g in {id(g): g for g in [pooled, *groups.values()]}.values():
        g.front = with_params(g.front, params)
    return Comparison(pooled, groups, group_by, sweep_table(pooled.trials, pooled))


def drop_repeats(trials: pd.DataFrame, params: pd.DataFrame) -> pd.DataFrame:
    """The trials with one run per (config, seed): runs whose params (the whole resolved config,
    the seed included) are equal are one trial trained twice (a sweep re-run with its seed); the
    first read is kept. Runs without a `seed` param are kept as they are."""
    seed = f"{PARAM_PREFIX}seed"
    if seed not in params.columns:
        return trials
    columns = [c for c in params.columns if c != "run_id"]
    table = params.set_index("run_id")
    keys = table[columns].astype(str).agg("|".join, axis=1).where(table[seed].notna())
    keyed = keys.loc[trials["run_id"]]
    repeated = (keyed.duplicated() & keyed.notna()).to_numpy()
    return trials[~repeated].reset_index(drop=True)


def _read_all(
    tracking_uri: str, scope: dict[str, list[str]], objectives: list[Objective], filters: list[Filter], reader: str
) -> pd.DataFrame:
    """The trials of every experiment in scope, with their origin columns, in scope order."""
    metrics = [*HEADLINE_METRICS, *[o.name for o in objectives], *[f.name for f in filters]]
    frames = []
    for experiment, selected in scope.items():
        trials = read_trials(
            tracking_uri, experiment, sweep_run_ids=selected or None, metrics=metrics, params=False, reader=reader
        )
        if trials.empty:
            where = f" in sweep(s) {', '.join(selected)}" if selected else ""
            raise UsageError(
                f"experiment '{experiment}' has no FINISHED trial runs (tag {ROLE_TAG}={ROLE_TRIAL}){where}"
            )
        origin = read_sweeps(tracking_uri, trials["sweep_run_id"].dropna(), reader=reader)
        frames.append(add_origin(trials, experiment, origin))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _group_by(group_by: str, scope: dict[str, list[str]]) -> str:
    if group_by != "auto":
        return group_by
    if len(scope) > 1:
        return "experiment"
    return "sweep" if sum(len(s) for s in scope.values()) > 1 else "none"


def _labels(trials: pd.DataFrame, group_by: str) -> pd.Series:
    """Each trial's group label: its experiment, its sweep's name (made unique with the
    experiment, then the id, where names repeat), or the experiment(s) for one group."""
    if group_by == "experiment":
        return trials["experiment"].astype(str)
    if group_by == "none":
        return pd.Series(", ".join(dict.fromkeys(trials["experiment"].astype(str))), index=trials.index)
    several = trials["experiment"].nunique() > 1
    sweeps = trials[["sweep_run_id", "sweep_name", "experiment"]].drop_duplicates("sweep_run_id")
    labels = {}
    for row in sweeps.itertuples(index=False):
        name = row.sweep_name if isinstance(row.sweep_name, str) else row.sweep_run_id
        labels[row.sweep_run_id] = f"{row.experiment}/{name}" if several else name
    counts = pd.Series(list(labels.values())).value_counts()
    labels = {s: (f"{n} ({str(s)[:8]})" if counts[n] > 1 else n) for s, n in labels.items()}
    return trials["sweep_run_id"].map(lambda s: labels.get(s, NO_SWEEP) if isinstance(s, str) else NO_SWEEP)


def _label_order(trials: pd.DataFrame, group_by: str, sweeps: list[str]) -> list[str]:
    """Group labels in the order given: experiments in --experiment order (trials are read in
    it); sweeps in --sweep order, then the others by label."""
    labels = list(dict.fromkeys(trials["group"]))
    if group_by != "sweep":
        return labels
    by_sweep = trials.drop_duplicates("sweep_run_id").set_index("sweep_run_id")["group"]
    given = list(dict.fromkeys(by_sweep[s] for s in sweeps if s in by_sweep.index))
    return given + sorted(set(labels) - set(given))


def _group_fronts(pooled: ParetoResult, group_by: str, labels: list[str]) -> dict[str, ParetoResult]:
    """label -> the front of the group's trials at the pooled reference point (pooled itself
    for one group). A group with no feasible trial is an error naming it."""
    trials = pooled.trials.drop(columns=["feasible", "front_rank"])
    if group_by == "none" or len(labels) == 1:
        return {labels[0]: pooled}
    groups = {}
    for label in labels:
        part = trials[trials["group"] == label].reset_index(drop=True)
        sweeps = sorted({str(s) for s in part["sweep_run_id"].dropna()} & set(pooled.sweep_run_ids))
        try:
            groups[label] = compute_front(
                part,
                pooled.objectives,
                list(pooled.reference),
                pooled.filters,
                experiment=", ".join(dict.fromkeys(part["experiment"].astype(str))),
                sweep_run_ids=sweeps,
            )
        except UsageError as exc:
            raise UsageError(f"group '{label}': {exc}") from None
    return groups
