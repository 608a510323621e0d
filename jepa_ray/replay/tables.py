"""Replaying recorded learning curves through the real sweep (`--replay TABLE`): each trial serves
one row of a curve table (jepa_ray.curves) epoch by epoch instead of training, optionally
sleeping its recorded epoch times divided by `--replay-speed`, so the searcher, the schedulers,
the collapse guard, MLflow, --resume and the Pareto export run unchanged at no GPU cost.

The search space becomes the table's. A factorial table: one categorical parameter per searched
param, over the values the table holds (every proposal is a recorded configuration; `--sampler
grid` walks it). A table recorded from a space-filling design (jepa_ray.curves.grids.Design): the
design's own axes, as a live sweep searches them (floats over their ranges, log-uniform where the
design draws them so; choices categorical; the projector as depth, hidden and output width), the
same space for every method, none of which sees the recorded points. A proposal the table lacks
is served by its nearest recorded configuration (each axis placed by its rank among the recorded
values, so a design's points sit evenly along every axis). A configuration recorded with several seeds is served at its
lowest seed. The trial's config is the row's (what trained), with the collapse guard as the
sweep's config says (recordings run without it, so its stops are replayed from the curves).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jepa_ray import config as config_lib
from jepa_ray import tracking
from jepa_ray.config import TrialConfig
from jepa_ray.contract import (
    DATA_SIZES,
    EPOCH,
    EPOCH_PROBE_METRIC,
    EPOCH_S,
    EPOCH_WALL_S,
    FINAL_RESULT,
    RESULT_FAILURE,
    RESULT_FAILURE_KIND,
    is_final,
)
from jepa_ray.curves.grids import GRIDS
from jepa_ray.curves.table import CurveTable, Row, canonical, read_table
from jepa_ray.errors import UsageError
from jepa_ray.replay.serve import ReplayIndex, replay_trial
from jepa_ray.trial_spec import TrialSpec

GUARD_KEYS = ("collapse_guard", "collapse_warmup_epochs", "collapse_min_rank", "collapse_min_density_ratio")
RUN_KEYS = ("cpus_per_worker", "gpus_per_worker", "threads_per_worker", "max_failures")
REPLAY_KEYS = frozenset(GUARD_KEYS + RUN_KEYS)
"""Config keys a replayed sweep may set (--set): the guard and where a trial runs. Anything else
would change what the recorded curves trained."""


class TableSpace:
    """The define-by-run space of a curve table: one categorical per searched param (picklable:
    Tune saves the searcher)."""

    def __init__(self, values: dict[str, list], sweep_seed: int):
        self.values, self.sweep_seed = values, sweep_seed

    def __call__(self, trial) -> dict[str, Any]:
        params = {name: trial.suggest_categorical(name, list(choices)) for name, choices in self.values.items()}
        return TrialSpec.from_optuna(trial, params, self.sweep_seed).to_config()

    def proposal(self, row: Row) -> dict[str, Any]:
        """A row's params as this space suggests them (to enqueue the row as a trial)."""
        return dict(row.params)


class DesignSpace(TableSpace):
    """The space of a table recorded from a space-filling design: the design's axes (`dims`, each
    a jepa_ray.curves.grids.Dim); proposals name the axes (`proj_hidden` only for a projector
    deeper than one layer), served by the nearest row."""

    def __init__(self, dims, sweep_seed: int):
        super().__init__({}, sweep_seed)
        self.dims = tuple(dims)

    def __call__(self, trial) -> dict[str, Any]:
        point = {
            d.name: trial.suggest_categorical(d.name, list(d.choices))
            if d.choices
            else trial.suggest_float(d.name, d.low, d.high, log=d.log)
            for d in self.dims
        }
        if point.get("proj_depth") == 1:
            point.pop("proj_hidden", None)  # no hidden layer: nothing to match a row on
        return TrialSpec.from_optuna(trial, point, self.sweep_seed).to_config()

    def proposal(self, row: Row) -> dict[str, Any]:
        """A row's point on the axes (without `proj_hidden` for a one-layer projector: the
        sampler fills it, unused)."""
        values = {d.name: row_value(row, d.name) for d in self.dims}
        return {name: value for name, value in values.items() if value is not None}


def projector_axes(proj_dims: Any) -> dict[str, int]:
    """`proj_dims` ('512-512-256') as the design's axes: depth, output width and (deeper than one
    layer) hidden width."""
    try:
        widths = [int(w) for w in str(proj_dims).split("-")]
    except ValueError:
        return {}
    axes = {"proj_depth": len(widths), "proj_out": widths[-1]}
    if len(widths) > 1:
        axes["proj_hidden"] = widths[0]
    return axes


def row_value(row: Row, name: str) -> Any:
    """A searched param of a row, else the value its trained config has for that key (the
    projector's axes read from its `proj_dims`)."""
    if name in row.params:
        return row.params[name]
    for section in row.config.values():
        if isinstance(section, dict) and name in section:
            return section[name]
    if name in ("proj_depth", "proj_hidden", "proj_out"):
        return projector_axes(row_value(row, "proj_dims")).get(name)
    return None


def design_of(table: CurveTable):
    """The space-filling design (jepa_ray.curves.grids.Design) the table's rows were recorded
    from, or None (a factorial, or a grid this version does not know)."""
    grids = {r.grid for r in table}
    grid = GRIDS.get(grids.pop()) if len(grids) == 1 else None
    return grid.design if grid is not None else None


_INDEXES: weakref.WeakKeyDictionary[CurveTable, tuple[int, ReplayIndex]] = weakref.WeakKeyDictionary()
"""Each table's lookup, built once per table (and again if rows were added since)."""


def replay_index(table: CurveTable) -> ReplayIndex:
    """The proposal -> row lookup of a table."""
    rows, index = _INDEXES.get(table, (-1, None))
    if index is None or rows != len(table):
        entries = []
        for row in table:
            values = {k: v for section in row.config.values() if isinstance(section, dict) for k, v in section.items()}
            values.update(projector_axes(row.params.get("proj_dims", values.get("proj_dims"))))
            entries.append((row.key, row.seed, row.params, {**values, **row.params}))
        index = ReplayIndex(entries)
        _INDEXES[table] = (len(table), index)
    return index


def nearest_row(table: CurveTable, params: dict[str, Any]) -> Row:
    """The row of `params` (its lowest seed), or the nearest recorded configuration
    (jepa_ray.replay.serve.ReplayIndex)."""
    return table.get(replay_index(table).nearest(params))


def serve(row: Row, cfg: TrialConfig) -> Iterator[tuple[dict[str, Any], float]]:
    """The results a trial of `row` reports, each with the seconds it took: every epoch's
    metrics as recorded (the last one with the final metrics and the final-result marker), the
    collapse guard of `cfg` applied to each epoch (its stop reported as the trainer reports it),
    a recorded failure reported as one. The first result's seconds include the row's setup, the
    last one's its final evaluation."""
    from jepa_ray.train.guard import TrialFailure, check_collapse  # the trainer's collapse guard

    last = len(row.history) - 1
    for i, metrics in enumerate(row.history):
        seconds = float(metrics.get(EPOCH_WALL_S, metrics.get(EPOCH_S, 0.0))) + (row.setup_s if i == 0 else 0.0)
        try:
            check_collapse(cfg, metrics)
        except TrialFailure as err:
            yield {RESULT_FAILURE: str(err), RESULT_FAILURE_KIND: err.kind.value}, seconds
            return
        if i == last and row.finished:
            yield {**row.final, FINAL_RESULT: True}, seconds + row.eval_s
        else:
            yield dict(metrics), seconds
    if not row.finished:
        yield {RESULT_FAILURE: row.failure or "the recorded trial failed", RESULT_FAILURE_KIND: "failed"}, 0.0


def replay_config(row: Row, settings: dict[str, Any]) -> TrialConfig:
    """The row's trained config with the sweep's guard and run settings."""
    return config_lib.apply_overrides(config_lib.from_dict(row.config), settings)


@dataclass
class Replay:
    """A curve table opened for a sweep: its space, base config, trainable and trial configs."""

    path: str
    table: CurveTable
    settings: dict[str, Any]
    speed: float = 0.0

    @classmethod
    def open(cls, path: str, sets: list[str], speed: float = 0.0) -> Replay:
        """UsageError (one line) for a table that cannot be replayed or a --set that would change
        what its curves trained."""
        table = read_table(path)
        finished = [r for r in table if r.finished]
        if not finished:
            raise UsageError(f"--replay {path}: the table has no finished trial to replay")
        if not table.param_names():
            raise UsageError(f"--replay {path}: the table's rows have no searched params")
        settings = config_lib.parse_set_args(sets)
        refused = sorted(set(settings) - REPLAY_KEYS)
        if refused:
            raise UsageError(
                f"--set {refused[0]}=...: a replay serves recorded curves, so only "
                f"{', '.join(sorted(REPLAY_KEYS))} may be set"
            )
        defaults = config_lib.flatten(config_lib.TrialConfig())
        settings = {**{k: defaults[k] for k in GUARD_KEYS}, **settings}  # the guard on, as in a live sweep
        replay = cls(str(path), table, settings, speed)
        replay_config(finished[0], settings)  # a bad --set value fails here
        return replay

    @property
    def base(self) -> TrialConfig:
        """The first finished row's config (its epochs are the trials' epochs)."""
        return replay_config(next(r for r in self.table if r.finished), self.settings)

    def values(self) -> dict[str, list]:
        return {name: self.table.values(name) for name in self.table.param_names()}

    @property
    def design(self):
        """The design the table was recorded from (None: a factorial)."""
        return design_of(self.table)

    def space(self, seed: int) -> TableSpace:
        design = self.design
        return DesignSpace(design.dims, seed) if design is not None else TableSpace(self.values(), seed)

    def grid(self) -> dict[str, list] | None:
        """The factorial `--sampler grid` walks (None for a design's table)."""
        return None if self.design is not None else self.values()

    def row(self, spec: TrialSpec) -> Row:
        """The row that serves a trial's proposal."""
        return nearest_row(self.table, spec.overrides)

    def trial_config(self, spec: TrialSpec) -> TrialConfig:
        """What a trial's MLflow params record: the served row's config."""
        return replay_config(self.row(spec), self.settings)

    def streams(self) -> dict[str, list[tuple[dict, float]]]:
        """Every row's results with their seconds, as a trial of this sweep reports them."""
        return {row.key: list(serve(row, replay_config(row, self.settings))) for row in self.table}

    def trainable(self):
        """The Tune trial: jepa_ray.replay.serve.replay_trial over the rows' results computed
        here once (trial actors import neither torch nor the table)."""
        from ray import tune

        return tune.with_parameters(
            replay_trial, streams=self.streams(), index=replay_index(self.table), speed=self.speed
        )

    def record_run(self, c, run, epochs: int | None) -> bool:
        """Record in a replayed trial's MLflow run what its row served, for a trial whose end
        Optuna heard of but MLflow did not: `epochs` None, its epochs and final metrics (False
        when the row did not finish); else its first `epochs` epochs (a trial that stopped)."""
        params = {}
        for name in self.table.param_names():
            raw = run.data.params.get(name)
            try:
                params[name] = float(raw)
            except (TypeError, ValueError):
                params[name] = raw
        row = nearest_row(self.table, params)
        results = [r for r, _ in serve(row, replay_config(row, self.settings))]
        if epochs is not None:
            results = [r for r in results if EPOCH in r and r[EPOCH] < epochs and not is_final(r)]
        elif not results or not is_final(results[-1]):
            return False
        logged = {m.step for m in c.get_metric_history(run.info.run_id, EPOCH_PROBE_METRIC)}
        for result in results:
            if result[EPOCH] not in logged or is_final(result):
                metrics = {k: v for k, v in result.items() if k not in (EPOCH, *DATA_SIZES)}
                tracking.log_metrics(c, run.info.run_id, metrics, result[EPOCH])
        return epochs is None

    def front_rows(self) -> list[Row]:
        """The finished rows served at the lowest seed of each configuration."""
        seen: dict[str, Row] = {}
        for r in sorted(self.table.rows, key=lambda r: r.seed):
            if r.finished:
                seen.setdefault(canonical(r.params), r)
        return list(seen.values())
