"""What would early stopping (or another searcher) have saved on a sweep you ran? The sweep's own
curves, read back from MLflow into a curve table, replayed in simulated time: first as it ran
(its trials in their order, every one to its end), then under the scheduler asked about (and,
optionally, a searcher restricted to the sweep's own trials). Reported: the trial-epochs each
spent, the hypervolume each reached, and which points of the sweep's front the what-if would
have lost. No GPU, no Ray: jepa_ray.replay.simulate."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from jepa_ray import config as config_lib
from jepa_ray import contract as C
from jepa_ray import tracking
from jepa_ray.curves.table import STATUS_FAILED, STATUS_FINISHED, CurveTable, Row
from jepa_ray.errors import UsageError, one_line
from jepa_ray.outcome import Outcome
from jepa_ray.pareto.dominance import non_dominated
from jepa_ray.replay.simulate import SimResult, simulate
from jepa_ray.replay.tables import nearest_row
from jepa_ray.trial_spec import TrialSpec

NOT_SEARCHED = frozenset({"seed", "data_dir", "download"})
"""Config keys that differ between trials without being searched."""


def sweep_table(tracking_uri: str, run_id: str) -> tuple[CurveTable, dict[str, str], list[str]]:
    """The trials of a finished sweep (its parent run `run_id`) as a curve table in their
    launch order, the parent run's tags, and the run ids of the rows. UsageError (one line) for a
    run that is not a sweep, or a sweep whose trials did not all end (RUNNING, or stopped early by
    its own scheduler: their curves after the stop are unknown)."""
    c = tracking.client(tracking_uri)
    try:
        parent = c.get_run(run_id)
    except Exception:  # noqa: BLE001 - MlflowException for an unknown id, whatever its wording
        raise UsageError(f"--sweep {run_id!r}: no such run at {tracking_uri}") from None
    tags = parent.data.tags
    if tags.get(C.ROLE) != C.ROLE_SWEEP:
        raise UsageError(f"--sweep {run_id!r}: not a sweep's parent run (tag {C.ROLE}={C.ROLE_SWEEP})")
    runs = tracking.trial_runs(tracking_uri, parent.info.experiment_id, run_id)
    if not runs:
        raise UsageError(f"--sweep {run_id!r}: the sweep has no trial runs")
    runs.sort(key=lambda r: (_int(r.data.tags.get(C.OPTUNA_TRIAL)), r.info.start_time))
    for r in runs:
        name = f"trial {r.data.tags.get(C.OPTUNA_TRIAL, r.info.run_id)}"
        if r.info.status in ("RUNNING", "SCHEDULED"):
            raise UsageError(
                f"--sweep {run_id!r}: {name} is still {r.info.status}; a what-if needs a sweep whose trials all "
                "ended (wait for it, or --resume it)"
            )
        if C.STOPPED in r.data.tags:
            raise UsageError(
                f"--sweep {run_id!r}: {name} was stopped by the sweep's scheduler ({r.data.tags[C.STOPPED]}), so its "
                "curve after that is unknown; a what-if needs a sweep whose trials ran to their end (--scheduler fifo)"
            )
    flat = [{k: _value(v) for k, v in r.data.params.items()} for r in runs]
    searched = sorted(k for k in flat[0] if k not in NOT_SEARCHED and len({str(f.get(k)) for f in flat}) > 1)
    rows = [_row(c, r, f, searched) for r, f in zip(runs, flat)]
    return CurveTable(rows), tags, [r.info.run_id for r in runs]


def _row(c, run, flat: dict[str, Any], searched: list[str]) -> Row:
    history: dict[int, dict[str, Any]] = {}
    for name in (*C.EPOCH_METRICS, *C.DATA_SIZES):
        for m in c.get_metric_history(run.info.run_id, name):
            history.setdefault(m.step, {C.EPOCH: m.step})[name] = m.value
    epochs = [history[e] for e in sorted(history)]
    finished = run.info.status == "FINISHED" and C.has_final_metrics(run.data.metrics)
    final = {**(epochs[-1] if epochs else {}), **{k: v for k, v in run.data.metrics.items() if k in C.FINAL_METRICS}}
    known = {k: v for k, v in run.data.params.items() if k in config_lib.LEAVES}
    cfg = config_lib.apply_overrides(config_lib.TrialConfig(), known)
    params = {k: flat[k] for k in searched}
    return Row(
        key=run.info.run_id,
        grid="sweep",
        setting="",
        revision=C.TRAINING_REVISION,
        params=params,
        seed=int(flat.get("seed", 0)),
        status=STATUS_FINISHED if finished else STATUS_FAILED,
        failure=None if finished else one_line(run.data.tags.get(C.FAILURE, "the trial did not finish")),
        config=config_lib.to_dict(cfg),
        history=epochs,
        final=final if finished else {},
        command="",
        eval_s=float(run.data.metrics.get(C.EVAL_S, 0.0)) if finished else 0.0,
    )


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


class RecordedOrder:
    """A searcher that proposes the sweep's own trials in the order they ran."""

    def __init__(self, table: CurveTable):
        self.rows, self.next = list(table.rows), 0
        self.by_key = {r.key: r for r in table.rows}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.next >= len(self.rows):
            return None
        row = self.rows[self.next]
        self.next += 1
        return TrialSpec(overrides=row.params, number=self.next - 1, seed=row.seed, row=row.key).to_config()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


@dataclass
class WhatIf:
    """The sweep as it ran and as it would have run."""

    baseline: SimResult
    runs: list[SimResult]
    run_ids: dict[str, str]
    """row key -> MLflow run id."""
    lost: list[str] = field(default_factory=list)
    """Run ids of the baseline's front the what-if did not finish (in any of its runs)."""

    def summary(self) -> dict[str, Any]:
        base_epochs, base_hv = self.baseline.trial_epochs, self.baseline.hypervolume
        epochs = statistics.median(r.trial_epochs for r in self.runs)
        hv = statistics.median(r.hypervolume for r in self.runs)
        return {
            "trials": len(self.baseline.trials),
            "baseline_trial_epochs": base_epochs,
            "whatif_trial_epochs": epochs,
            "saved_fraction": 1.0 - epochs / base_epochs if base_epochs else 0.0,
            "baseline_hypervolume": base_hv,
            "whatif_hypervolume": hv,
            "stopped": statistics.median(r.count(Outcome.STOPPED) for r in self.runs),
            "lost_front_runs": self.lost,
            "baseline_seconds": self.baseline.seconds,
            "whatif_seconds": statistics.median(r.seconds for r in self.runs),
        }


def front_keys(result: SimResult, objectives: list) -> set[str]:
    done = [t for t in result.finished if t.values and all(math.isfinite(v) for v in t.values)]
    if not done:
        return set()
    import numpy as np

    mask = non_dominated(np.array([t.values for t in done]), [o.direction for o in objectives])
    return {t.row_key for t, keep in zip(done, mask) if keep}


def what_if(
    table: CurveTable,
    run_ids: list[str],
    objectives: list,
    *,
    scheduler_factory,
    searcher_factory=None,
    seeds: int = 1,
    max_concurrent: int = 1,
    settings: dict[str, Any] | None = None,
) -> WhatIf:
    """Replay `table` as it ran (recorded order, FIFO) and under `scheduler_factory()` (with
    `searcher_factory(seed)`'s proposals at the baseline's trial-epochs, else the recorded order)."""
    by_key = {r.key: r for r in table.rows}

    def row_for(spec: TrialSpec) -> Row:
        return by_key[spec.row] if spec.row is not None else _nearest(table, spec)

    def run(searcher, scheduler, budget: int = 0) -> SimResult:
        return simulate(
            table,
            searcher,
            objectives,
            scheduler=scheduler,
            settings=settings,
            max_concurrent=max_concurrent,
            num_samples=0 if budget else len(table),
            budget=budget,
            row_for=row_for,
        )

    baseline = run(RecordedOrder(table), None)
    if searcher_factory is None:
        runs = [run(RecordedOrder(table), scheduler_factory())]
    else:
        runs = [run(searcher_factory(seed), scheduler_factory(), baseline.trial_epochs) for seed in range(seeds)]
    base_front = front_keys(baseline, objectives)
    finished = set.intersection(*({t.row_key for t in r.finished} for r in runs)) if runs else set()
    keys = dict(zip([r.key for r in table.rows], run_ids))
    return WhatIf(baseline, runs, keys, sorted(keys[k] for k in base_front - finished))


def _nearest(table: CurveTable, spec: TrialSpec) -> Row:
    return nearest_row(table, spec.overrides)
