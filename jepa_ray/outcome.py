"""How a trial of a sweep ended, decided once: `classify` turns what Tune hands the driver (the
last result, an error, a scheduler's stop, the sweep's own end) into a `TrialEnd`, and the
`Ledger` keeps one per trial. Optuna's state, MLflow's status and tags, the failure limit, the
progress log and Tune's table all read that one record (docs/design.md, "MLflow layout")."""

from __future__ import annotations

import enum
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jepa_ray.contract import EPOCH, RESULT_FAILURE, FailureKind, failure_kind, is_final
from jepa_ray.errors import StorageFull, one_line


class Outcome(str, enum.Enum):
    FINISHED = "finished"
    """It reached its final metrics."""
    COLLAPSED = "collapsed"
    """The collapse guard stopped it: its hyperparameters are bad, not the run."""
    STOPPED = "stopped"
    """A scheduler stopped it early (at a rung); its curves are kept."""
    UNFINISHED = "unfinished"
    """The sweep stopped it before its end (its compute budget, its failure limit, Ctrl-C,
    SIGTERM): --resume trains it again."""
    FAILED = "failed"
    """It raised, ran out of memory, reached a non-finite loss or reported another failure."""


OPTUNA_STATE = {
    Outcome.FINISHED: "COMPLETE",
    Outcome.COLLAPSED: "PRUNED",  # samplers learn from pruned trials, not from failed ones
    Outcome.STOPPED: "PRUNED",
    Outcome.UNFINISHED: "FAIL",
    Outcome.FAILED: "FAIL",
}
MLFLOW_STATUS = {
    Outcome.FINISHED: "FINISHED",
    Outcome.COLLAPSED: "FAILED",
    Outcome.STOPPED: "KILLED",
    Outcome.UNFINISHED: "FAILED",
    Outcome.FAILED: "FAILED",
}
FAILURE_KINDS = {
    Outcome.COLLAPSED: FailureKind.COLLAPSED,
    Outcome.STOPPED: FailureKind.STOPPED,
    Outcome.UNFINISHED: FailureKind.UNFINISHED,
    Outcome.FAILED: FailureKind.FAILED,
}


@dataclass(frozen=True)
class TrialEnd:
    """The one record of how a trial ended."""

    outcome: Outcome
    reason: str = ""
    """One line: why it did not finish ('' when it finished)."""
    epochs: int = 0
    """Epochs it trained (its furthest reported epoch + 1)."""
    result: dict[str, Any] = field(default_factory=dict, compare=False)
    """Its last result (the final metrics when it finished)."""

    @property
    def optuna_state(self) -> str:
        return OPTUNA_STATE[self.outcome]

    @property
    def mlflow_status(self) -> str:
        return MLFLOW_STATUS[self.outcome]

    @property
    def failure_kind(self) -> FailureKind | None:
        return FAILURE_KINDS.get(self.outcome)

    @property
    def label(self) -> str:
        """A few words for a table column: 'finished', 'collapsed', 'rung 3', 'failed', ..."""
        if self.outcome is Outcome.STOPPED and self.reason.startswith("rung "):
            return self.reason.split(":")[0]
        return self.outcome.value


def epochs_of(result: dict | None) -> int:
    return int(result[EPOCH]) + 1 if result and EPOCH in result else 0


def classify(
    result: dict | None,
    *,
    error: str | None = None,
    scheduler_stop: str | None = None,
    sweep_stop: str | None = None,
    objectives: tuple[str, ...] = (),
) -> TrialEnd:
    """How a trial ended, from its last result and what else is known of its end, in this
    order: an error; a failure it reported (the collapse guard's included); its final metrics
    (all `objectives` finite); a scheduler's stop; else the sweep stopped it (a trial ends
    without final metrics, a failure or an error only when Tune stops it: a trial that fails
    says so in a failure report), with the sweep's reason when known. A full disk (an error or
    a reported `unfinished` failure saying StorageFull's line) is no fault of the trial: it
    ends unfinished, and --resume trains it again."""
    result = dict(result or {})
    epochs = epochs_of(result)
    if error is not None:
        full = StorageFull.find(error)
        if full is not None:
            return TrialEnd(Outcome.UNFINISHED, str(full), epochs, result)
        return TrialEnd(Outcome.FAILED, one_line(error) or "the trial raised an error", epochs, result)
    kind = failure_kind(result)
    if kind is not None:
        outcome = {
            FailureKind.COLLAPSED: Outcome.COLLAPSED,
            FailureKind.STOPPED: Outcome.STOPPED,
            FailureKind.UNFINISHED: Outcome.UNFINISHED,
        }.get(kind, Outcome.FAILED)
        return TrialEnd(outcome, one_line(str(result[RESULT_FAILURE])), epochs, result)
    if is_final(result):
        bad = [o for o in objectives if not _finite(result.get(o))]
        if bad:
            return TrialEnd(Outcome.FAILED, f"objective {bad[0]} is not a finite number", epochs, result)
        return TrialEnd(Outcome.FINISHED, "", epochs, result)
    if scheduler_stop is not None:
        return TrialEnd(Outcome.STOPPED, one_line(scheduler_stop), epochs, result)
    why = one_line(sweep_stop) if sweep_stop is not None else "stopped before its end: the sweep stopped it"
    return TrialEnd(Outcome.UNFINISHED, why, epochs, result)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Ledger:
    """Every trial's end, classified once (the first reader decides, later ones read the same
    record), with what a classification needs: the scheduler's stops and the sweep's own end."""

    def __init__(self, objectives: tuple[str, ...] = ()):
        self.objectives = tuple(objectives)
        self.ends: dict[str, TrialEnd] = {}
        self.stops: dict[str, str] = {}  # trial id -> why a scheduler stopped it
        self.started: dict[str, None] = {}  # an ordered set: the trials' start order
        self.sweep_stop: str | None = None
        self.storage_full: StorageFull | None = None  # the first full disk met: the sweep stops

    def start(self, trial_id: str) -> None:
        self.started.setdefault(trial_id, None)

    def note_stop(self, trial_id: str, why: str) -> None:
        """A scheduler decided to stop the trial (before Tune ends it)."""
        self.stops.setdefault(trial_id, why)

    def end(self, trial_id: str, result: dict | None = None, *, error: str | None = None) -> TrialEnd:
        """The trial's end: classified now if it was not yet, else the recorded one."""
        if trial_id not in self.ends:
            self.ends[trial_id] = classify(
                result,
                error=error,
                scheduler_stop=self.stops.get(trial_id),
                sweep_stop=self.sweep_stop,
                objectives=self.objectives,
            )
            if self.ends[trial_id].outcome is Outcome.UNFINISHED and self.storage_full is None:
                self.storage_full = StorageFull.find(self.ends[trial_id].reason)
        return self.ends[trial_id]

    def reopen(self, trial_id: str) -> None:
        """The trial runs again: Tune recovers a trial whose actor died (a worker killed, its
        node lost) by telling the scheduler `on_trial_error` and adding the trial again, so the
        end that error recorded is not its end. Its real end is classified when it comes."""
        self.ends.pop(trial_id, None)

    def get(self, trial_id: str) -> TrialEnd | None:
        return self.ends.get(trial_id)

    def unended(self) -> list[str]:
        return [t for t in self.started if t not in self.ends]

    def close_reason(self, why: str) -> None:
        """Why the sweep is stopping (trials that end from now on without final metrics end
        unfinished with it); the first reason stays."""
        self.sweep_stop = self.sweep_stop or why

    def close(self, why: str, results: dict[str, dict] | None = None, also: list[str] = ()) -> list[str]:
        """End every started trial (and those of `also`) that has no end yet as UNFINISHED
        (`why`: how the sweep ended); returns their ids."""
        self.sweep_stop = self.sweep_stop or why
        closed = self.unended() + [t for t in also if t not in self.ends and t not in self.started]
        for trial_id in closed:
            result = dict((results or {}).get(trial_id) or {})
            self.ends[trial_id] = TrialEnd(Outcome.UNFINISHED, one_line(why), epochs_of(result), result)
        return closed

    def count(self, outcome: Outcome) -> int:
        return sum(e.outcome is outcome for e in self.ends.values())


def trial_error_text(trial) -> str:
    """What a Tune trial that raised left as its error (its message, else its error file)."""
    for attr in ("error_message", "error_msg"):
        msg = getattr(trial, attr, None)
        if msg:
            return str(msg)
    path = getattr(trial, "error_file", None)
    if path and os.path.isfile(path):
        return Path(path).read_text()
    return "the trial raised an error"
