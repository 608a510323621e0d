"""Resuming an interrupted sweep: trials that were running (or that a stopped sweep stopped) run
again in their MLflow runs from their stores' newest checkpoints, and the remaining trials train
with the base config the sweep started with."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from optuna.trial import TrialState

from jepa_ray import config as config_lib
from jepa_ray import tracking
from jepa_ray.adapter import mark_interrupted
from jepa_ray.cluster import sqlite_path
from jepa_ray.config import TrialConfig
from jepa_ray.contract import (
    ATTR_EPOCHS,
    ATTR_FAILURE,
    ATTR_FIRST_TRIAL,
    ATTR_INTERRUPTED,
    ATTR_RESUMED_FROM,
    ATTR_RUNG_STOP,
    ATTR_STOPPED,
    EPOCH_PROBE_METRIC,
    FAILURE,
    FAILURE_KIND,
    FAILURE_TAGS,
    STOPPED,
    FailureKind,
    has_final_metrics,
)
from jepa_ray.tracking.epochs import ReusedRun
from jepa_ray.train import checkpoint as ckpt_lib
from jepa_ray.train.store import TrialStore, resumable_checkpoint
from jepa_ray.trial_spec import params_key

logger = logging.getLogger("jepa_ray.sweep")


@dataclass
class ResumeState:
    finished: int = 0
    reuse_runs: dict[str, list[ReusedRun]] = field(default_factory=dict)  # trial key -> MLflow runs to reuse
    resume_map: dict[str, str] = field(default_factory=dict)  # trial key -> checkpoint URI
    trial_epochs: int = 0  # epochs the sweep's trials trained before (its compute so far)
    finished_metrics: list[dict] = field(default_factory=list)  # final metrics of its finished trials

    def final_points(self, objectives) -> list[tuple[float, ...]]:
        """The finished trials' objective values (for the hypervolume curve)."""
        points = [tuple(m.get(o.name, math.nan) for o in objectives) for m in self.finished_metrics]
        return [p for p in points if all(math.isfinite(v) for v in p)]


def sweep_recorded(tracking_uri: str, experiment: str, name: str) -> bool:
    """Whether MLflow holds the parent run of the sweep `name` (what --resume looks for); True
    when MLflow cannot be read (--resume then says what it finds)."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        return False
    try:
        exp_id = tracking.find_experiment(tracking_uri, experiment)
        return exp_id is not None and tracking.find_sweep_run(tracking_uri, exp_id, name) is not None
    except Exception:
        return True


def epoch_histories(tracking_uri: str, exp_id: str, parent_run_id: str, metrics: list[str]) -> dict[str, dict]:
    """trial key -> {epoch: {metric: value}} of the sweep's trial runs (a scheduler's rungs); a
    run recorded before trial keys were tagged is keyed by its Optuna trial number (the key of a
    trial never re-queued)."""
    c = tracking.client(tracking_uri)
    out: dict[str, dict[int, dict]] = {}
    for run in tracking.trial_runs(tracking_uri, exp_id, parent_run_id):
        tags = run.data.tags
        epochs = out.setdefault(tags.get(tracking.TRIAL_KEY) or tags.get(tracking.OPTUNA_TRIAL) or run.info.run_id, {})
        for name in metrics:
            for m in c.get_metric_history(run.info.run_id, name):
                epochs.setdefault(m.step, {})[name] = m.value
    return out


def prepare_resume(
    study,
    tracking_uri: str,
    exp_id: str,
    parent_run_id: str,
    recover: Callable | None = None,
    recreate: Callable | None = None,
) -> ResumeState:
    """Make an interrupted sweep resumable: trials that were running (or that a stopped sweep
    stopped) are marked FAIL (interrupted) in Optuna and enqueued again with the same
    parameters; their MLflow runs are reused (no duplicates) and resume from their last
    checkpoint. A trial whose end Optuna heard of but MLflow did not (the driver died with
    MLflow's writes queued, or MLflow stopped answering) is recorded in MLflow from
    `recover(client, run, epochs)` (a replayed sweep's table; default: the trial's store), in the
    run `recreate(optuna_trial)` makes when MLflow never got to create one; so is a stopped,
    collapsed or failed trial's end, with the epochs it trained."""
    state = ResumeState()
    runs = tracking.trial_runs(tracking_uri, exp_id, parent_run_id)
    recover = recover or _record_from_store
    c = tracking.client(tracking_uri)
    trials = study.get_trials(deepcopy=False)
    requeued = {t.user_attrs.get(ATTR_RESUMED_FROM) for t in trials}
    run_of = _run_finder(runs, trials)
    first_of = _first_trials(trials)
    for t in trials:
        key = str(first_of(t))
        run = run_of(t)
        stopped = t.state == TrialState.FAIL and t.user_attrs.get(ATTR_STOPPED) and t.number not in requeued
        if t.state == TrialState.RUNNING or stopped:
            if t.state == TrialState.RUNNING:
                mark_interrupted(study, t, ATTR_INTERRUPTED)
            study.enqueue_trial(
                t.params,
                user_attrs={ATTR_RESUMED_FROM: t.number, ATTR_FIRST_TRIAL: first_of(t)},
                skip_if_exists=False,
            )
            if run is not None:
                where = run.data.tags.get(tracking.TRIAL_DIR) or run.data.tags.get(tracking.LAST_CHECKPOINT)
                if where:
                    state.resume_map[key] = where
                committed = _log_missing_epochs(c, run.info.run_id, where)
                failure_tags = tuple(tag for tag in FAILURE_TAGS if tag in run.data.tags)
                reused = ReusedRun(run.info.run_id, failure_tags, committed)
                state.reuse_runs.setdefault(key, []).append(reused)
        elif t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            t.state == TrialState.FAIL and not t.user_attrs.get(ATTR_INTERRUPTED) and not t.user_attrs.get(ATTR_STOPPED)
        ):
            state.finished += 1
            if run is None and recreate is not None:
                run = recreate(t)
            if run is not None and run.info.status == "RUNNING":
                # Optuna heard of the end but MLflow did not (the driver died, or MLflow stopped
                # answering, before its writes): what the trial's store holds is recorded now.
                _record_end(c, t, run, recover)
    reused = {r.run_id for runs_of_key in state.reuse_runs.values() for r in runs_of_key}
    for run in runs:  # what the ended trials cost and found (an interrupted one is counted when it ends)
        if run.info.run_id in reused:
            continue
        state.trial_epochs += len(c.get_metric_history(run.info.run_id, EPOCH_PROBE_METRIC))
        if run.info.status == "FINISHED":
            state.finished_metrics.append(dict(run.data.metrics))
    return state


def _first_trials(trials: list) -> Callable:
    """Optuna trial -> the number of the first trial of its chain of re-queues (its identity): its
    own attribute, else followed back through `resumed_from` (studies resumed before the
    attribute existed)."""
    resumed_from = {t.number: t.user_attrs.get(ATTR_RESUMED_FROM) for t in trials}

    def first_of(t) -> int:
        if ATTR_FIRST_TRIAL in t.user_attrs:
            return int(t.user_attrs[ATTR_FIRST_TRIAL])
        number, seen = t.number, set()
        while resumed_from.get(number) is not None and number not in seen:
            seen.add(number)
            number = int(resumed_from[number])
        return number

    return first_of


def _run_finder(runs: list, trials: list) -> Callable:
    """Optuna trial -> its MLflow run, or None when MLflow never got to create one. A run is
    found by the trial number it is tagged with, else by the trial it resumes (a run reopened for a
    re-queued trial still carries the first number until the driver retags it); by params only
    for runs without a trial number. Never by params alone otherwise: two trials may propose the
    same configuration (a categorical space, a grid, a replayed table), and a trial whose run is
    missing would borrow the other's instead of being recreated."""
    by_number = {r.data.tags.get(tracking.OPTUNA_TRIAL): r for r in runs if r.data.tags.get(tracking.OPTUNA_TRIAL)}
    untagged = {r.data.tags.get(tracking.PARAMS_KEY): r for r in runs if not r.data.tags.get(tracking.OPTUNA_TRIAL)}
    resumed_from = {t.number: t.user_attrs.get(ATTR_RESUMED_FROM) for t in trials}

    def run_of(t):
        number, seen = t.number, set()
        while number is not None and number not in seen:
            seen.add(number)
            if str(number) in by_number:
                return by_number[str(number)]
            number = resumed_from.get(number)
        return untagged.get(params_key(t.params))

    return run_of


def _record_end(c, t, run, recover: Callable) -> None:
    """Record the end of an Optuna trial in its RUNNING MLflow run as the driver would have
    (docs/design.md, "How a trial ends"): a finished trial's final metrics and checkpoint, or the
    epochs a stopped, collapsed or failed one trained, with its status and tags."""
    run_id = run.info.run_id
    stop = t.user_attrs.get(ATTR_RUNG_STOP)  # tpe-rungs tells a stopped trial COMPLETE
    if t.state == TrialState.COMPLETE and not stop:
        if has_final_metrics(run.data.metrics) or recover(c, run, None):
            c.set_terminated(run_id, "FINISHED")
            return
        tags = {FAILURE: "interrupted before the trial's end was recorded"}
    else:
        recover(c, run, int(t.user_attrs.get(ATTR_EPOCHS, 0)))
        if stop:
            tags = {STOPPED: stop, FAILURE_KIND: FailureKind.STOPPED.value}
        else:
            kind = FailureKind.COLLAPSED if t.state == TrialState.PRUNED else FailureKind.FAILED
            tags = {FAILURE: t.user_attrs.get(ATTR_FAILURE, kind.value), FAILURE_KIND: kind.value}
    for key, value in tags.items():
        c.set_tag(run_id, key, value)
    c.set_terminated(run_id, "KILLED" if stop else "FAILED")


def _log_missing_epochs(c, run_id: str, where: str | None) -> int:
    """Log the epochs the interrupted trial's newest checkpoint holds but its MLflow run lacks;
    returns the newest epoch MLflow then holds (-1: none).

    The driver logs an epoch once a checkpoint covers it (tracking.EpochLog); a driver killed
    between a trial's checkpoint and the driver's write leaves the checkpoint ahead of MLflow,
    and the resumed trial starts after it. Those epochs are in the checkpoint's history."""
    history: list[dict] = []
    try:
        checkpoint = resumable_checkpoint(where) if where else None
        history = ckpt_lib.read_history(checkpoint) if checkpoint else []
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        logger.warning("could not read the epoch history of %s: %s", where, err)
    return _log_history(c, run_id, history)


def _log_history(c, run_id: str, history: list[dict], final: dict | None = None) -> int:
    """Log the epochs of `history` the run lacks, each once; returns the newest epoch the run
    then holds (-1: none). `final`: the trial's final metrics,
    which carry its last epoch's (docs/design.md): logged with that epoch in one batch, as the
    driver does, or only the keys it lacks when MLflow has the epoch already (logging the epoch's
    own metrics again would record them twice, with a new timestamp)."""
    logged = {m.step for m in c.get_metric_history(run_id, EPOCH_PROBE_METRIC)}
    epochs = {int(e["epoch"]): {k: v for k, v in e.items() if k != "epoch"} for e in history}
    last = int(final["epoch"]) if final is not None else None
    extra = {k: v for k, v in (final or {}).items() if k != "epoch" and k not in epochs.get(last, {})}
    for epoch, metrics in sorted(epochs.items()):
        if epoch not in logged:
            tracking.log_metrics(c, run_id, {**metrics, **extra} if epoch == last else metrics, step=epoch)
    if last is not None and (last in logged or last not in epochs):
        tracking.log_metrics(c, run_id, extra, step=last)
    return max(logged | set(epochs), default=-1)


def _record_from_store(c, run, epochs: int | None) -> bool:
    """Log a trial's record from its store into its run. `epochs` None: a finished trial's
    epochs, final metrics and checkpoint tag from its final checkpoint (False when the store
    holds none); else the epochs an ended trial's newest checkpoint holds."""
    where = run.data.tags.get(tracking.TRIAL_DIR)
    if epochs is not None:
        if where:
            _log_missing_epochs(c, run.info.run_id, where)
        return False
    try:
        final = TrialStore(where).final() if where else None
        if final is None:
            return False
        metrics = ckpt_lib.read_metrics(final)
        history = ckpt_lib.read_history(final)
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        logger.warning("could not read the final checkpoint of %s: %s", where, err)
        return False
    _log_history(c, run.info.run_id, history, final=metrics)
    c.set_tag(run.info.run_id, tracking.CHECKPOINT, final)
    return has_final_metrics(metrics)


def recorded_base_config(parent_run, given: TrialConfig) -> TrialConfig:
    """The base config a sweep started with (its parent run's `base.*` params): a resumed sweep
    trains its remaining trials like its first ones, whatever --preset/--set say now."""
    recorded = {k[len("base.") :]: v for k, v in parent_run.data.params.items() if k.startswith("base.")}
    if not recorded:
        return given
    cfg = config_lib.apply_overrides(config_lib.TrialConfig(), recorded)
    kept, now = config_lib.flatten(cfg), config_lib.flatten(given)
    changed = sorted(k for k, v in now.items() if str(v) != str(kept[k]))
    if changed:
        logger.warning(
            "--resume: keeping the sweep's recorded base config; ignoring the given %s",
            ", ".join(f"{k}={now[k]}" for k in changed),
        )
    return cfg
