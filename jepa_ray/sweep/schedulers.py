"""The sweep's schedulers: a registry of factories (`--scheduler NAME`, or a factory of your own as
`--scheduler package.module:function`) and the adapter that lets any Tune `TrialScheduler` plug
in.

The adapter (`LedgerScheduler`) wraps the chosen scheduler, Tune's FIFO included. Tune calls a
scheduler first when a trial reports, ends or fails (before the searcher and the callbacks), so
the adapter is where the outcome ledger (jepa_ray.outcome) learns of every trial: each STOP the
wrapped scheduler decides is noted with its reason, and each end is classified once, there. A
stock scheduler (Tune's ASHA, say) needs nothing else: its stops come out stopped (PRUNED in
Optuna, KILLED in MLflow) like MOASHA's.

What a scheduler may add, all optional: `stop_reason(trial_id) -> str` (why it stopped a trial;
else "stopped by NAME after epoch N"), `signal_metrics` and `restore_from_histories(histories)`
(rebuild its state from MLflow's epoch histories on --resume).

Adding a scheduler: one factory below, decorated with `register_scheduler`, and its test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from jepa_ray.errors import UsageError
from jepa_ray.outcome import Ledger, epochs_of, trial_error_text
from jepa_ray.sweep.rungs import DensityLadder, MultiObjectiveASHA, Signal, TopKAfterFirstRung, parse_signals


@dataclass(frozen=True)
class SchedulerSettings:
    """What the command line says to a scheduler factory."""

    max_epochs: int
    """The trials' epochs (the last rung is below it)."""
    signals: list[Signal]
    """Per-epoch metrics a scheduler ranks on, with their directions (--scheduler-signals)."""
    min_epochs: int
    """The first rung in epochs (--scheduler-min-epochs, 0 resolved: a ninth of the epochs)."""
    eta: float
    """Keep the top 1/eta at a rung (--scheduler-eta)."""
    top_k: int = 4
    """Keep the top k at the one rung (--scheduler-top-k, scheduler topk)."""


SchedulerFactory = Callable[[SchedulerSettings], "TrialScheduler | None"]
SCHEDULERS: dict[str, SchedulerFactory] = {}


def register_scheduler(name: str) -> Callable[[SchedulerFactory], SchedulerFactory]:
    def add(factory: SchedulerFactory) -> SchedulerFactory:
        SCHEDULERS[name] = factory
        return factory

    return add


def _needs_rungs(name: str, s: SchedulerSettings) -> None:
    if s.max_epochs < 2:
        raise UsageError(f"--scheduler {name} needs trials of at least 2 epochs, got {s.max_epochs}")
    if s.eta <= 1:
        raise UsageError(f"--scheduler-eta {s.eta} is not allowed; allowed: > 1")


@register_scheduler("fifo")
def _fifo(s: SchedulerSettings) -> None:
    """Every trial runs to its end (Tune's FIFO)."""
    return None


@register_scheduler("moasha")
def _moasha(s: SchedulerSettings) -> TrialScheduler:
    """Multi-objective asynchronous successive halving on the signals (jepa_ray.sweep.rungs)."""
    _needs_rungs("moasha", s)
    return MultiObjectiveASHA(s.signals, s.max_epochs, min_epochs=s.min_epochs, eta=s.eta)


@register_scheduler("ladder")
def _ladder(s: SchedulerSettings) -> TrialScheduler:
    """Successive halving on the accuracy signal inside density bands (jepa_ray.sweep.rungs)."""
    _needs_rungs("ladder", s)
    return DensityLadder(s.signals, s.max_epochs, min_epochs=s.min_epochs, eta=s.eta)


@register_scheduler("topk")
def _topk(s: SchedulerSettings) -> TrialScheduler:
    """Keep the top k after the first rung (jepa_ray.sweep.rungs.TopKAfterFirstRung)."""
    _needs_rungs("topk", s)
    return TopKAfterFirstRung(s.signals, s.max_epochs, min_epochs=s.min_epochs, k=s.top_k)


@register_scheduler("asha")
def _asha(s: SchedulerSettings) -> TrialScheduler:
    """Tune's stock single-objective ASHA on the first signal (rungs in reported epochs)."""
    from ray.tune.schedulers import AsyncHyperBandScheduler

    _needs_rungs("asha", s)
    first = s.signals[0]
    return AsyncHyperBandScheduler(
        time_attr="training_iteration",  # one report per epoch: iteration k closes epoch k
        metric=first.metric,
        mode=first.mode,
        max_t=s.max_epochs,
        grace_period=s.min_epochs,
        reduction_factor=s.eta,
    )


def create_scheduler(
    name: str, max_epochs: int, *, signals: str, min_epochs: int = 0, eta: float = 3.0, top_k: int = 4
) -> TrialScheduler | None:
    """The scheduler --scheduler names (None: FIFO), built from the command line's settings;
    UsageError (one line) on a bad name or setting."""
    settings = SchedulerSettings(
        max_epochs=max_epochs,
        signals=parse_signals(signals),
        min_epochs=min(min_epochs or max(1, max_epochs // 9), max(1, max_epochs - 1)),
        eta=eta,
        top_k=top_k,
    )
    if min_epochs and not 1 <= min_epochs < max_epochs and name != "fifo":
        raise UsageError(
            f"--scheduler-min-epochs {min_epochs} is not allowed; allowed: 1 .. epochs - 1 ({max_epochs - 1})"
        )
    return _factory(name)(settings)


def scheduler_from_flags(flags, max_epochs: int) -> TrialScheduler | None:
    """The scheduler the scheduler flags name (jepa_ray.sweep.options.SCHEDULER_FLAGS, read from
    SweepOptions or from any command line that added them with `add_scheduler_flags`)."""
    return create_scheduler(
        flags.scheduler,
        max_epochs,
        signals=flags.scheduler_signals,
        min_epochs=flags.scheduler_min_epochs,
        eta=flags.scheduler_eta,
        top_k=flags.scheduler_top_k,
    )


def _factory(name: str) -> SchedulerFactory:
    if name in SCHEDULERS:
        return SCHEDULERS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise UsageError(f"--scheduler {name!r}: cannot load {attr} from {module} ({err})") from None
        if callable(factory):
            return factory
    raise UsageError(
        f"--scheduler {name!r} is not allowed; allowed: {', '.join(SCHEDULERS)}, or package.module:factory"
    )


class LedgerScheduler(TrialScheduler):
    """Any Tune scheduler (None: FIFO), every trial's start, stop and end noted in `ledger`
    before the searcher and the callbacks hear of it (see the module docstring)."""

    def __init__(self, inner: TrialScheduler | None, ledger: Ledger):
        super().__init__()
        self.inner = inner if inner is not None else FIFOScheduler()
        self.ledger = ledger

    @property
    def name(self) -> str:
        return type(self.inner).__name__

    @property
    def signal_metrics(self) -> list[str]:
        return list(getattr(self.inner, "signal_metrics", []))

    def restore_from_histories(self, histories: dict[str, dict[int, dict]]) -> None:
        restore = getattr(self.inner, "restore_from_histories", None)
        if restore is not None:
            restore(histories)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return self.inner.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller, trial) -> None:
        # Tune adds a trial again after a failure it recovers from (max_failures), having called
        # on_trial_error first: the trial is live again, not failed.
        self.ledger.reopen(trial.trial_id)
        self.ledger.start(trial.trial_id)
        self.inner.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = self.inner.on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            why = getattr(self.inner, "stop_reason", lambda _: None)(trial.trial_id)
            self.ledger.note_stop(trial.trial_id, why or f"stopped by {self.name} after epoch {epochs_of(result)}")
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self.ledger.end(trial.trial_id, result)
        self.inner.on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial) -> None:
        self.ledger.end(trial.trial_id, trial.last_result, error=trial_error_text(trial))
        self.inner.on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self.ledger.end(trial.trial_id, trial.last_result)  # removed before it ended
        self.inner.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller):
        return self.inner.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return self.inner.debug_string()

    def save(self, checkpoint_path: str) -> None:
        self.inner.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.inner.restore(checkpoint_path)
