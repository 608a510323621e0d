"""Search methods as the sweep runs them (a sampler over a space, a scheduler), named, to compare
in simulated time over a curve table (benchmarks/search.py --replay) and to ask of a finished
sweep (python -m jepa_ray.replay). Each is what `sweeps/rectified.py --replay TABLE --sampler S
--scheduler X` would run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jepa_ray.contract import is_final
from jepa_ray.curves.grids import Dim
from jepa_ray.curves.table import Row
from jepa_ray.pareto import non_dominated
from jepa_ray.replay.simulate import SimResult, simulate
from jepa_ray.replay.tables import DesignSpace, Replay, TableSpace, nearest_row, replay_config, row_value, serve
from jepa_ray.sweep.progress import sweep_hypervolume
from jepa_ray.sweep.rungs import parse_signals
from jepa_ray.sweep.schedulers import create_scheduler
from jepa_ray.sweep.search import JepaOptunaSearch, make_sampler, study_of
from jepa_ray.trial_spec import TrialSpec

DEFAULT_SIGNALS = "online/linear_acc:max,train/l0_density:min"


@dataclass(frozen=True)
class Method:
    name: str
    sampler: str
    scheduler: str = "fifo"
    axis: str = "density"
    """The density knob the sampler searches: 'density' (target_density, as the table and the
    rectified_density space) or 'mu' (mu, as the default rectified space)."""
    doc: str = ""

    def sweep_args(self) -> list[str]:
        """The method as the live sweep's command line runs it (its space searches its axis)."""
        space = "rectified" if self.axis == "mu" else "rectified_density"
        return ["--sampler", self.sampler, "--scheduler", self.scheduler, "--space", space]


METHODS = {
    m.name: m
    for m in (
        Method("random", "random", doc="random search, every trial to its end"),
        Method("tpe", "tpe", axis="mu", doc="TPE over mu (the default space's axis), every trial to its end"),
        Method("tpe-density", "tpe", doc="TPE over the target density, every trial to its end"),
        Method("gp", "gp", doc="Gaussian-process Bayesian optimization (Optuna's GPSampler), every trial to its end"),
        Method("moasha-random", "random", "moasha", doc="MOASHA with random proposals (MOASHA's baseline)"),
        Method("moasha-tpe", "tpe", "moasha", doc="MOASHA with TPE proposals over the target density"),
        Method(
            "moasha-tpe-rungs",
            "tpe-rungs",
            "moasha",
            doc="MOASHA with TPE that also learns from trials stopped at rungs (BOHB-style)",
        ),
        Method("topk-random", "random", "topk", doc="random proposals, only the top k after the first rung go on"),
        Method("topk-tpe", "tpe", "topk", doc="TPE proposals, only the top k after the first rung go on"),
        Method("ladder-tpe", "tpe", "ladder", doc="successive halving on accuracy inside density bands, TPE proposals"),
        Method(
            "ladder-tpe-rungs",
            "tpe-rungs",
            "ladder",
            doc="the density ladder with TPE that also learns from the rungs",
        ),
    )
}


class MuTableSpace(TableSpace):
    """The table's space with the density knob searched as mu (a float over the recorded range of
    mu), as the default `rectified` space searches it; a proposal is served by its nearest row."""

    def __init__(self, values: dict[str, list], sweep_seed: int, mu_range: tuple[float, float]):
        super().__init__({k: v for k, v in values.items() if k != "target_density"}, sweep_seed)
        self.mu_range = mu_range

    def __call__(self, trial) -> dict[str, Any]:
        params = {"mu": trial.suggest_float("mu", *self.mu_range)}
        params.update({name: trial.suggest_categorical(name, list(c)) for name, c in self.values.items()})
        return TrialSpec.from_optuna(trial, params, self.sweep_seed).to_config()

    def proposal(self, row: Row) -> dict[str, Any]:
        params = {k: v for k, v in row.params.items() if k != "target_density"}
        return {"mu": float(row_value(row, "mu")), **params}


def make_space(replay: Replay, axis: str, seed: int) -> TableSpace:
    """The replay's space, its density knob as mu (over the recorded range of mu) for axis 'mu'."""
    if axis == "mu" and "target_density" in replay.table.param_names():
        mus = [float(row_value(r, "mu")) for r in replay.table]
        design = replay.design
        if design is not None:
            dims = [Dim("mu", min(mus), max(mus)) if d.name == "target_density" else d for d in design.dims]
            return DesignSpace(dims, seed)
        return MuTableSpace(replay.values(), seed, (min(mus), max(mus)))
    return replay.space(seed)


def run_method(
    replay: Replay,
    method: Method,
    objectives: list,
    *,
    seed: int,
    budget: int = 0,
    num_samples: int = 0,
    max_concurrent: int = 4,
    signals: str = DEFAULT_SIGNALS,
    eta: float = 3.0,
    top_k: int = 4,
    min_epochs: int = 0,
    searcher=None,
    starting_points: list[Row] = (),
) -> SimResult:
    """One simulated sweep of `method` over the replay's table (`searcher`: another proposer,
    e.g. a finished sweep's own order, in place of the method's sampler; `starting_points`: rows
    of the table the method's sampler proposes first, e.g. from `warm_start_rows`)."""
    if searcher is None:
        space = make_space(replay, method.axis, seed)
        searcher = JepaOptunaSearch(
            space=space,
            metric=[o.name for o in objectives],
            mode=[o.direction for o in objectives],
            sampler=make_sampler(method.sampler, seed),
        )
        study = study_of(searcher)
        for row in starting_points:
            study.enqueue_trial(space.proposal(row))
        if method.sampler == "tpe-rungs":
            searcher.rung_signals = tuple(s.metric for s in parse_signals(signals))
    scheduler = create_scheduler(
        method.scheduler, replay.base.optim.epochs, signals=signals, min_epochs=min_epochs, eta=eta, top_k=top_k
    )
    return simulate(
        replay.table,
        searcher,
        objectives,
        scheduler=scheduler,
        settings=replay.settings,
        max_concurrent=max_concurrent,
        num_samples=num_samples,
        budget=budget,
    )


def attainable(replay: Replay, objectives: list) -> tuple[list, float]:
    """The table's own result: every configuration (at its lowest seed) that a sweep with the
    replay's collapse guard would finish, its objective values, and their hypervolume (the best
    any search over the table can reach)."""
    points = []
    for row in replay.front_rows():
        results = [result for result, _ in serve(row, replay_config(row, replay.settings))]
        last = results[-1] if results else None
        if last is not None and is_final(last):
            points.append((row, tuple(float(last[o.name]) for o in objectives)))
    return points, sweep_hypervolume([v for _, v in points], objectives)


def warm_start_rows(source: Replay, target: Replay, objectives: list) -> list[Row]:
    """The front of `source`'s table (the configurations a sweep finishes that no other
    dominates), each as its nearest configuration in `target`'s table, without repeats, in the
    order of the last objective (sparsest first for the default ones): what a sweep that starts
    from an earlier sweep's front (a cheap proxy dataset, a smaller model) would try first."""
    import numpy as np

    points, _ = attainable(source, objectives)
    keep = non_dominated(np.array([v for _, v in points]), objectives)
    front = [point for point, on_front in zip(points, keep) if on_front]
    rows: dict[str, Row] = {}
    for row, _ in sorted(front, key=lambda point: point[1][::-1]):
        near = nearest_row(target.table, row.params)
        rows.setdefault(near.key, near)
    return list(rows.values())
