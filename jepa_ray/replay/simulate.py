"""A sweep in simulated time over a curve table: the sweep's own searcher (any Ray Tune searcher,
JepaOptunaSearch by default), scheduler (any Tune scheduler, through the same LedgerScheduler
adapter), collapse guard and outcome ledger, driven by a discrete-event loop in place of Tune's
controller. A trial starts when a slot is free; each of its results arrives after its recorded
seconds; the scheduler, the budget and the searcher hear of each result in the order Tune's
controller follows (the stopper first, then the scheduler, then the searcher; at a trial's end
the scheduler, then the searcher). It is Syne Tune's simulator backend idea applied to this
sweep: the search benchmark and the what-if run hundreds of sweeps in minutes, and
`--replay TABLE` runs the same thing through the real driver (tests/test_replay.py checks that
both agree)."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ray.tune.schedulers import TrialScheduler

from jepa_ray.curves.table import CurveTable, Row
from jepa_ray.outcome import Ledger, Outcome
from jepa_ray.replay.tables import nearest_row, replay_config, serve
from jepa_ray.sweep.failures import EpochBudget, FailureLimit, stop_reason
from jepa_ray.sweep.progress import sweep_hypervolume
from jepa_ray.sweep.schedulers import LedgerScheduler
from jepa_ray.trial_spec import TrialSpec


class SimTrial:
    """What a scheduler reads of a Tune trial: its id, config, status and last result."""

    def __init__(self, trial_id: str, config: dict[str, Any], row: Row, stream: Iterator):
        self.trial_id, self.config, self.row, self.stream = trial_id, config, row, stream
        self.status, self.last_result = "RUNNING", {}
        self.epochs = 0

    def __repr__(self) -> str:
        return f"SimTrial({self.trial_id})"


@dataclass
class TrialRecord:
    """One ended trial of a simulated sweep."""

    trial_id: str
    row_key: str
    outcome: Outcome
    reason: str
    epochs: int
    end_s: float
    trial_epochs: int
    """The sweep's trial-epochs spent when it ended."""
    values: tuple[float, ...] | None
    """Its objectives, when it finished."""


@dataclass
class SimResult:
    objectives: list
    trials: list[TrialRecord] = field(default_factory=list)
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    """(trial-epochs spent, simulated seconds, hypervolume of the finished trials) after each end."""
    trial_epochs: int = 0
    seconds: float = 0.0

    @property
    def finished(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.outcome is Outcome.FINISHED]

    @property
    def hypervolume(self) -> float:
        return self.curve[-1][2] if self.curve else 0.0

    def hypervolume_at(self, trial_epochs: float) -> float:
        """The hypervolume once `trial_epochs` were spent (the last end at or before it)."""
        hv = 0.0
        for spent, _, value in self.curve:
            if spent > trial_epochs:
                break
            hv = value
        return hv

    def count(self, outcome: Outcome) -> int:
        return sum(t.outcome is outcome for t in self.trials)


class Controller:
    """Tune's controller as far as schedulers use it (some call get_trials)."""

    def __init__(self):
        self.trials: list[SimTrial] = []

    def get_trials(self) -> list[SimTrial]:
        return self.trials


def simulate(
    table: CurveTable,
    searcher,
    objectives: list,
    *,
    scheduler: TrialScheduler | None = None,
    settings: dict[str, Any] | None = None,
    max_concurrent: int = 1,
    num_samples: int = 0,
    budget: int = 0,
    row_for: Callable[[TrialSpec], Row] | None = None,
) -> SimResult:
    """One sweep over `table` in simulated time. `searcher`: a Ray Tune Searcher (suggest /
    on_trial_result / on_trial_complete); `settings`: the trials' collapse-guard keys (as
    jepa_ray.replay.tables.Replay has them); stops after `num_samples` trials or once `budget`
    trial-epochs are spent (the trials then running end UNFINISHED, as a live sweep cuts them)."""
    if not (num_samples or budget):
        raise ValueError("simulate: give num_samples or budget")
    sim = _Simulation(table, searcher, objectives, scheduler, dict(settings or {}), row_for, budget)
    while True:
        sim.launch(max_concurrent, num_samples)
        if not sim.queue:
            break
        sim.next_result()
        if sim.budget.reached and sim.running:
            sim.cut()
            break
    sim.out.trial_epochs, sim.out.seconds = sim.budget.spent, sim.now
    return sim.out


class _Simulation:
    """A simulated sweep's state, moved on one result at a time: the clock, the running trials and
    their next results, the ledger, and the trial-epochs spent (counted as the live sweep's
    stopper counts them)."""

    def __init__(self, table: CurveTable, searcher, objectives: list, scheduler, settings: dict, row_for, budget: int):
        self.table, self.searcher, self.objectives, self.settings = table, searcher, objectives, settings
        self.ledger = Ledger(tuple(o.name for o in objectives))
        if hasattr(searcher, "ledger"):
            searcher.ledger = self.ledger  # the searcher tells Optuna what the ledger decided
        self.sched = LedgerScheduler(scheduler, self.ledger)
        self.row_for = row_for or (lambda spec: nearest_row(table, spec.overrides))
        self.budget = EpochBudget(budget)
        self.controller = Controller()
        self.out = SimResult(list(objectives))
        self.points: list[tuple[float, ...]] = []
        self.queue: list[tuple[float, int, str]] = []  # (time of its next result, tie order, trial id)
        self.running: dict[str, SimTrial] = {}
        self.pending: dict[str, tuple[dict, float]] = {}
        self.now, self.launched, self.order = 0.0, 0, 0

    def launch(self, max_concurrent: int, num_samples: int) -> None:
        """Start trials while a slot is free, the searcher proposes and the sweep goes on."""
        while (
            len(self.running) < max_concurrent
            and (not num_samples or self.launched < num_samples)
            and not self.budget.reached
        ):
            trial_id = f"sim_{self.launched:05d}"
            config = self.searcher.suggest(trial_id)
            if config is None or config == "FINISHED":
                return
            self.launched += 1
            row = self.row_for(TrialSpec.from_config(config))
            trial = SimTrial(trial_id, config, row, serve(row, replay_config(row, self.settings)))
            self.controller.trials.append(trial)
            self.sched.on_trial_add(self.controller, trial)
            self.running[trial_id] = trial
            nxt = next(trial.stream, None)
            if nxt is not None:
                self._schedule(trial_id, nxt)

    def _schedule(self, trial_id: str, result_and_seconds: tuple[dict, float]) -> None:
        self.pending[trial_id] = result_and_seconds
        self.order += 1
        heapq.heappush(self.queue, (self.now + result_and_seconds[1], self.order, trial_id))

    def next_result(self) -> None:
        """The earliest pending result arrives: the scheduler and the searcher hear it, and the
        trial goes on, or ends with it."""
        self.now, _, trial_id = heapq.heappop(self.queue)
        trial = self.running[trial_id]
        result, _ = self.pending.pop(trial_id)
        self.budget.add(trial_id, result)  # the stopper: every epoch a trial trains counts once
        trial.epochs = self.budget.epochs.get(trial_id, 0)
        trial.last_result = result
        decision = self.sched.on_trial_result(self.controller, trial, result)
        if decision == TrialScheduler.CONTINUE:
            self.searcher.on_trial_result(trial_id, result)
        nxt = next(trial.stream, None) if decision == TrialScheduler.CONTINUE else None
        if nxt is None:  # the trial's last result (final metrics or a failure), or the scheduler stopped it
            self._end(trial, result)
        else:
            self._schedule(trial_id, nxt)

    def _end(self, trial: SimTrial, result: dict) -> None:
        self.sched.on_trial_complete(self.controller, trial, result)
        self.searcher.on_trial_complete(trial.trial_id, result=result)
        trial.status = "TERMINATED"
        self.running.pop(trial.trial_id)
        record = self.ledger.get(trial.trial_id)
        values = None
        if record.outcome is Outcome.FINISHED:
            values = tuple(float(record.result[o.name]) for o in self.objectives)
            self.points.append(values)
        self._record(trial, values)
        self.out.curve.append((self.budget.spent, self.now, sweep_hypervolume(self.points, self.objectives)))

    def _record(self, trial: SimTrial, values: tuple[float, ...] | None) -> None:
        record = self.ledger.get(trial.trial_id)
        self.out.trials.append(
            TrialRecord(
                trial.trial_id,
                trial.row.key,
                record.outcome,
                record.reason,
                trial.epochs,
                self.now,
                self.budget.spent,
                values,
            )
        )

    def cut(self) -> None:
        """The budget is spent: the trials still running end unfinished, as a live sweep's do."""
        closed = self.ledger.close(stop_reason(FailureLimit(0, self.ledger), self.budget))
        for trial_id in closed:
            self.searcher.on_trial_complete(trial_id, result=self.running[trial_id].last_result)
            self._record(self.running.pop(trial_id), None)
        self.queue.clear()
