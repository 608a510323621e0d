"""Syne Tune's MOASHA as a sweep scheduler: an external baseline for benchmarks/search.py, run by
the same simulator, searcher and budget as the project's own schedulers (`--scheduler
syne_moasha:create`, importable from benchmarks/). Needs the benchmarks' optional extra
(`pip install -e ".[bench]"`: syne-tune), never the package.

Syne Tune 0.16's MOASHA (syne_tune.optimizer.schedulers.multiobjective.moasha) judges each trial
at rungs grace_period * eta^k by the fraction of the rung's trials ranked ahead of it. Two things
are adapted, nothing else:
- its NonDominatedPriority returns the items in priority order (indices, best first) where MOASHA
  reads a priority per item; `RankPriority` returns each item's place in that order, which is what
  the rule needs (the issue tracker's "priority-to-rank mix-up");
- it minimizes every metric: signals to maximize are negated on the way in, and its STOP at the
  trial's last epoch (max_t reached) is passed on as CONTINUE, the trial ending there anyway.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler


def _moasha_classes():
    try:
        from syne_tune.backend.trial_status import Trial
        from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA
        from syne_tune.optimizer.schedulers.multiobjective.multiobjective_priority import NonDominatedPriority
    except ImportError as err:
        from jepa_ray.errors import UsageError

        raise UsageError(
            f"--scheduler syne_moasha:create needs syne-tune ({err}); allowed: pip install -e '.[bench]'"
        ) from None
    return Trial, MOASHA, NonDominatedPriority


class SyneMOASHA(FIFOScheduler):
    """Tune's scheduler interface around Syne Tune's MOASHA (one bracket, time = epochs done);
    trials start in Tune's FIFO order."""

    def __init__(self, signals, max_epochs: int, min_epochs: int, eta: float):
        super().__init__()
        Trial, MOASHA, NonDominatedPriority = _moasha_classes()

        class RankPriority(NonDominatedPriority):
            def priority_unsafe(self, objectives: np.ndarray) -> np.ndarray:
                order = np.asarray(super().priority_unsafe(objectives))
                place = np.empty(len(order), dtype=float)
                place[order] = np.arange(len(order))
                return place

        self._trial = Trial
        self.signals = list(signals)
        self.max_epochs = max_epochs
        self.inner = MOASHA(
            config_space={},
            metrics=[s.metric for s in self.signals],
            do_minimize=True,
            time_attr="epochs_done",
            multiobjective_priority=RankPriority(),
            max_t=max_epochs,
            grace_period=min_epochs,
            reduction_factor=eta,
            random_seed=0,
        )
        self.ids: dict[str, int] = {}
        self.stopped: dict[str, str] = {}

    def _syne_trial(self, trial):
        number = self.ids.setdefault(trial.trial_id, len(self.ids))
        return self._trial(trial_id=number, config={}, creation_time=datetime.now())

    @property
    def signal_metrics(self) -> list[str]:
        return [s.metric for s in self.signals]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        self.inner.on_trial_add(self._syne_trial(trial))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if "epoch" not in result or any(s.metric not in result for s in self.signals):
            return TrialScheduler.CONTINUE  # a failure or the final result: nothing to rank
        done = int(result["epoch"]) + 1
        values = {s.metric: (-1.0 if s.mode == "max" else 1.0) * float(result[s.metric]) for s in self.signals}
        if not all(np.isfinite(v) for v in values.values()):
            return TrialScheduler.CONTINUE
        decision = self.inner.on_trial_result(self._syne_trial(trial), {"epochs_done": done, **values})
        if decision == "STOP" and done < self.max_epochs:
            self.stopped[trial.trial_id] = f"syne-tune MOASHA: stopped at rung {done}"
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def stop_reason(self, trial_id: str) -> str | None:
        return self.stopped.get(trial_id)

    def _forget(self, trial) -> None:
        """An ended trial leaves MOASHA's bracket table (its rung records stay)."""
        self.inner.trial_info.pop(self.ids.get(trial.trial_id), None)

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        self._forget(trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._forget(trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._forget(trial)

    def debug_string(self) -> str:
        return "syne-tune MOASHA"


def create(settings) -> SyneMOASHA:
    """The factory `--scheduler syne_moasha:create` names (jepa_ray.sweep.schedulers)."""
    return SyneMOASHA(settings.signals, settings.max_epochs, settings.min_epochs, settings.eta)
