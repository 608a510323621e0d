"""The rung schedulers (the registry in jepa_ray.sweep.schedulers builds them): MOASHA, the
density ladder and top-k, and the per-epoch signals they rank on.

MOASHA, a multi-objective, multi-fidelity Tune scheduler: asynchronous successive halving over
rungs in epochs, a trial promoted at a rung by its non-dominated rank among the trials that
reached it.

The rule is MOASHA's (Schmucker et al. 2021, "Multi-objective multi-fidelity hyperparameter
optimization with application to fairness"; Salinas et al. 2021), as syne-tune implements it: at
rung r (epochs completed), the first trial to arrive continues; each later one is ranked among
all recorded at r by non-dominated sorting, and stops when the fraction of them ranked strictly
ahead of it exceeds 1/eta. Within a front, NSGA-II's crowding distance orders the points (MOASHA's
reference code uses an epsilon-net), and equal keys tie (both ends of a front are infinitely
crowded), so a new point at an end of the front is not stopped for arriving later; each
objective keeps its own direction.

It ranks on per-epoch signals that predict the final objectives (by default the online probe's
test accuracy for `linear_acc` and the training batches' l0 density for `l0_density`;
benchmarks/search.py measures how well they predict). Trials are keyed by their identity across
--resume (`trial_key`), so a trial re-run after an interruption is neither judged again at a rung
it passed nor forgets it, while a second trial of the same parameters (a repeat trains with its
own seed) is judged at every rung as a trial of its own; `restore` rebuilds the rungs of a
resumed sweep from MLflow's epoch histories.
Stopped trials are recorded in `stopped` (trial id -> why, read through `stop_reason`); the
sweep's outcome ledger classifies them as stopped (jepa_ray.sweep.schedulers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ray.tune.schedulers import TrialScheduler

from jepa_ray.contract import RESULT_FAILURE, is_final
from jepa_ray.errors import UsageError
from jepa_ray.pareto.dominance import crowding_distance, dominator_counts, nondominated_ranks
from jepa_ray.trial_spec import TrialSpec


@dataclass(frozen=True)
class Signal:
    metric: str
    mode: str  # "max" or "min"


def parse_signals(text: str) -> list[Signal]:
    """`metric:max|min,...` -> signals; UsageError naming the flag otherwise."""
    signals = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        name, _, mode = item.rpartition(":")
        if not name or mode not in ("max", "min"):
            raise UsageError(f"--scheduler-signals {text!r}: expected metric:max or metric:min, comma separated")
        signals.append(Signal(name, mode))
    if not signals:
        raise UsageError(f"--scheduler-signals {text!r}: at least one metric:max|min")
    return signals


def rung_levels(min_epochs: int, eta: float, max_epochs: int) -> list[int]:
    """Epoch counts min_epochs * eta^k below max_epochs (the last epoch is the trial's end)."""
    levels, r = [], float(min_epochs)
    while round(r) < max_epochs:
        if not levels or round(r) > levels[-1]:
            levels.append(int(round(r)))
        r *= eta
    return levels


def priority_keys(values: np.ndarray, modes: list[str]) -> list[tuple[int, float]]:
    """(front, -crowding distance) of each point: smaller is better (NSGA-II's crowded order)."""
    values = np.asarray(values, dtype=float)
    fronts = nondominated_ranks(values, modes)
    crowd = np.zeros(len(values))
    for f in np.unique(fronts):
        members = np.flatnonzero(fronts == f)
        crowd[members] = crowding_distance(values[members], modes)
    return [(int(f), -float(c)) for f, c in zip(fronts, crowd)]


def rank_fraction(values: np.ndarray, i: int, modes: list[str]) -> tuple[int, float]:
    """(how many points are strictly ahead of point i, that count / n): points of equal key tie
    (two ends of one front both have infinite crowding), as syne-tune's searchsorted ranks do."""
    keys = priority_keys(values, modes)
    ahead = sum(k < keys[i] for k in keys)
    return ahead, ahead / len(keys)


class MultiObjectiveASHA(TrialScheduler):
    """MOASHA over epochs (see the module docstring). `keys` maps a Tune trial to the key its
    records are kept under (the parameters' key); `stopped` collects trial id -> reason."""

    def __init__(self, signals: list[Signal], max_epochs: int, *, min_epochs: int = 1, eta: float = 3.0):
        super().__init__()
        if eta <= 1:
            raise UsageError(f"--scheduler-eta {eta} is not allowed; allowed: > 1")
        if not 1 <= min_epochs < max_epochs:
            raise UsageError(
                f"--scheduler-min-epochs {min_epochs} is not allowed; allowed: 1 .. epochs - 1 ({max_epochs - 1})"
            )
        self.signals, self.max_epochs, self.min_epochs, self.eta = signals, max_epochs, min_epochs, eta
        self.rungs = rung_levels(min_epochs, eta, max_epochs)
        self.records: dict[int, dict[str, tuple[float, ...]]] = {r: {} for r in self.rungs}
        self.stopped: dict[str, str] = {}

    @property
    def modes(self) -> list[str]:
        return [s.mode for s in self.signals]

    # Tune hooks ----------------------------------------------------------------------------

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the objectives are the searcher's; the scheduler has its own signals

    def on_trial_add(self, tune_controller, trial) -> None:
        pass

    def on_trial_error(self, tune_controller, trial) -> None:
        pass

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        pass

    def on_trial_remove(self, tune_controller, trial) -> None:
        pass

    def stop_reason(self, trial_id: str) -> str | None:
        return self.stopped.get(trial_id)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        stop, why = self.judge(_key(trial), result)
        if stop:
            self.stopped[trial.trial_id] = why
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def choose_trial_to_run(self, tune_controller):
        for status in ("PENDING", "PAUSED"):
            for trial in tune_controller.get_trials():
                if trial.status == status:
                    return trial
        return None

    def debug_string(self) -> str:
        filled = ", ".join(f"{r}: {len(rec)}" for r, rec in self.records.items())
        return f"MOASHA (eta {self.eta:g}) over {', '.join(s.metric for s in self.signals)}; trials per rung {filled}"

    def save(self, checkpoint_path: str) -> None:
        pass  # the rungs are rebuilt from MLflow on --resume (restore_from_histories)

    def restore(self, checkpoint_path: str) -> None:
        pass

    # The rule ------------------------------------------------------------------------------

    def judge(self, key: str, result: dict) -> tuple[bool, str]:
        """(stop?, why) for a result of the trial recorded under `key`."""
        if result.get(RESULT_FAILURE) or is_final(result) or "epoch" not in result:
            return False, ""
        done = int(result["epoch"]) + 1
        if done not in self.records:
            return False, ""
        recorded = self.records[done]
        if key in recorded:
            return False, ""  # a replay after a restart: judged once, when it first got here
        values = tuple(result.get(s.metric, math.nan) for s in self.signals)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return False, ""  # not rankable: the collapse guard or the end decide
        others = list(recorded.values())
        recorded[key] = values
        if not others:
            return False, ""
        return self.rank(done, values, others)

    def rank(self, rung: int, values: tuple[float, ...], others: list[tuple[float, ...]]) -> tuple[bool, str]:
        """MOASHA's rule: stop when more than 1/eta of the rung's trials rank strictly ahead."""
        table = np.array([*others, values])
        ahead, rank = rank_fraction(table, len(others), self.modes)
        if rank <= 1.0 / self.eta:
            return False, ""
        beaten = int(dominator_counts(table, self.modes)[-1])
        return True, (
            f"rung {rung}: dominated by {beaten} of {len(others)}, {ahead} of {len(others)} ranked ahead "
            f"(kept: the top 1/{self.eta:g})"
        )

    @property
    def signal_metrics(self) -> list[str]:
        return [s.metric for s in self.signals]

    def restore_from_histories(self, histories: dict[str, dict[int, dict]]) -> None:
        """Rebuild the rungs from recorded epoch metrics: key -> {epoch: metrics}."""
        for key, epochs in histories.items():
            for rung in self.rungs:
                metrics = epochs.get(rung - 1)
                if metrics is None:
                    continue
                values = tuple(metrics.get(s.metric, math.nan) for s in self.signals)
                if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                    self.records[rung].setdefault(key, values)


class DensityLadder(MultiObjectiveASHA):
    """Successive halving on accuracy inside density bands, the epsilon-constraint view of a
    sparsity-accuracy front: at a rung a trial is ranked only among the trials whose density
    signal (the second signal; train/l0_density predicts the final density with Spearman 0.95 by
    epoch 3) fell in its band, bands `band` times wide on a log scale, by the accuracy signal (the
    first); it stops when outside the top 1/eta of its band. A sparse trial is never stopped for
    being less accurate than a dense one, so the front keeps its span while each band is halved."""

    def __init__(self, signals: list[Signal], max_epochs: int, *, min_epochs: int = 1, eta: float = 3.0, band=2.0):
        if len(signals) != 2:
            raise UsageError(
                f"--scheduler ladder needs two --scheduler-signals (accuracy, then density), got {len(signals)}"
            )
        super().__init__(signals, max_epochs, min_epochs=min_epochs, eta=eta)
        self.band = band

    def band_of(self, density: float) -> int:
        return math.floor(math.log(max(density, 1e-6)) / math.log(self.band))

    def rank(self, rung: int, values: tuple[float, ...], others: list[tuple[float, ...]]) -> tuple[bool, str]:
        band = self.band_of(values[1])
        peers = [o[0] for o in others if self.band_of(o[1]) == band]
        if not peers:
            return False, ""
        sign = 1.0 if self.signals[0].mode == "max" else -1.0
        ahead = sum(sign * p > sign * values[0] for p in peers)
        if ahead / (len(peers) + 1) <= 1.0 / self.eta:
            return False, ""
        low, high = self.band**band, self.band ** (band + 1)
        return True, (
            f"rung {rung}: {ahead} of {len(peers)} in its density band [{low:.3g}, {high:.3g}) "
            f"ahead on {self.signals[0].metric} (kept: the top 1/{self.eta:g})"
        )


class TopKAfterFirstRung(MultiObjectiveASHA):
    """Keep the top k after the first rung (Egele et al. 2023, "Is one epoch all you need for
    multi-fidelity hyperparameter optimization?"), asynchronously: one rung, at `min_epochs`; a
    trial continues to its end when fewer than `k` of the trials recorded there rank strictly
    ahead of it (the same crowded non-dominated order as MOASHA's), else it stops. As the rung
    fills, only trials among the k best seen so far go on: a fixed number of full runs, not a
    fraction."""

    def __init__(self, signals: list[Signal], max_epochs: int, *, min_epochs: int = 1, k: int = 4):
        if k < 1:
            raise UsageError(f"--scheduler-top-k {k} is not allowed; allowed: >= 1")
        super().__init__(signals, max_epochs, min_epochs=min_epochs, eta=2.0)
        self.k = k
        self.rungs = [min_epochs]
        self.records = {min_epochs: {}}

    def rank(self, rung: int, values: tuple[float, ...], others: list[tuple[float, ...]]) -> tuple[bool, str]:
        table = np.array([*others, values])
        ahead, _ = rank_fraction(table, len(others), self.modes)
        if ahead < self.k:
            return False, ""
        return True, f"rung {rung}: {ahead} of {len(others)} ranked ahead (kept: the top {self.k})"

    def debug_string(self) -> str:
        return f"top {self.k} after rung {self.rungs[0]} over {', '.join(self.signal_metrics)}"


def _key(trial) -> str:
    return TrialSpec.from_config(trial.config).trial_key or str(trial.trial_id)
