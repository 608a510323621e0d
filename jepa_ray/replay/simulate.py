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

from jepa_ray.contract import EPOCH
from jepa_ray.curves.table import CurveTable, Row
from jepa_ray.outcome import Ledger, Outcome
from jepa_ray.replay.tables import nearest_row, replay_config, serve
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
    ledger = Ledger(tuple(o.name for o in objectives))
    if hasattr(searcher, "ledger"):
        searcher.ledger = ledger  # the searcher tells Optuna what the ledger decided
    sched = LedgerScheduler(scheduler, ledger)
    settings = dict(settings or {})
    row_for = row_for or (lambda spec: nearest_row(table, spec.overrides))
    controller = Controller()
    out = SimResult(list(objectives))
    points: list[tuple[float, ...]] = []
    queue: list[tuple[float, int, str]] = []  # (time of its next result, tie order, trial id)
    running: dict[str, SimTrial] = {}
    pending: dict[str, tuple[dict, float]] = {}
    now, launched, order, spent = 0.0, 0, 0, 0

    def end(trial: SimTrial, result: dict) -> None:
        nonlocal spent
        sched.on_trial_complete(controller, trial, result)
        searcher.on_trial_complete(trial.trial_id, result=result)
        trial.status = "TERMINATED"
        running.pop(trial.trial_id)
        record = ledger.get(trial.trial_id)
        values = None
        if record.outcome is Outcome.FINISHED:
            values = tuple(float(record.result[o.name]) for o in objectives)
            points.append(values)
        out.trials.append(
            TrialRecord(trial.trial_id, trial.row.key, record.outcome, record.reason, trial.epochs, now, spent, values)
        )
        out.curve.append((spent, now, sweep_hypervolume(points, objectives)))

    def advance(trial: SimTrial) -> None:
        nonlocal order
        result, seconds = next(trial.stream, (None, 0.0))
        if result is None:
            return
        pending[trial.trial_id] = (result, seconds)
        order += 1
        heapq.heappush(queue, (now + seconds, order, trial.trial_id))

    while True:
        while (
            len(running) < max_concurrent
            and (not num_samples or launched < num_samples)
            and not (budget and spent >= budget)
        ):
            trial_id = f"sim_{launched:05d}"
            config = searcher.suggest(trial_id)
            if config is None or config == "FINISHED":
                break
            launched += 1
            row = row_for(TrialSpec.from_config(config))
            trial = SimTrial(trial_id, config, row, serve(row, replay_config(row, settings)))
            controller.trials.append(trial)
            sched.on_trial_add(controller, trial)
            running[trial_id] = trial
            advance(trial)
        if not queue:
            break
        now, _, trial_id = heapq.heappop(queue)
        trial = running[trial_id]
        result, _ = pending.pop(trial_id)
        if EPOCH in result:  # the stopper: every epoch a trial trains counts once
            done = int(result[EPOCH]) + 1
            spent += max(done - trial.epochs, 0)
            trial.epochs = max(trial.epochs, done)
        trial.last_result = result
        decision = sched.on_trial_result(controller, trial, result)
        if decision == TrialScheduler.CONTINUE:
            searcher.on_trial_result(trial_id, result)
        nxt = next(trial.stream, None) if decision == TrialScheduler.CONTINUE else None
        if nxt is None:  # the trial's last result (final metrics or a failure), or the scheduler stopped it
            end(trial, result)
        else:
            pending[trial_id] = nxt
            order += 1
            heapq.heappush(queue, (now + nxt[1], order, trial_id))
        if budget and spent >= budget and running:
            closed = ledger.close(f"stopped before its end: the sweep's budget of {budget} trial-epochs was spent")
            for trial_id in closed:
                searcher.on_trial_complete(trial_id, result=running[trial_id].last_result)
                trial = running.pop(trial_id)
                record = ledger.get(trial_id)
                out.trials.append(
                    TrialRecord(trial_id, trial.row.key, record.outcome, record.reason, trial.epochs, now, spent, None)
                )
            queue.clear()
            break
    out.trial_epochs, out.seconds = spent, now
    return out
