"""The Ray Tune x Optuna searcher: Ray's OptunaSearch, telling Optuna each trial's end as the
outcome ledger classified it (jepa_ray.outcome): COMPLETE with the objectives, PRUNED for a trial
the collapse guard or a scheduler stopped (samplers learn from pruned trials, not from failed
ones: TPE stops proposing the small-lambda corner where z collapses), FAIL otherwise. Its private
state is reached through jepa_ray.adapter only."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from jepa_ray.adapter import (
    CHECKED_VERSIONS,
    adopt_trial,
    check_private_api,
    mark_interrupted,
    searcher_completed,
    searcher_study,
    searcher_trials,
)
from jepa_ray.cluster import sqlite_path
from jepa_ray.contract import (
    ATTR_EPOCHS,
    ATTR_FAILURE,
    ATTR_INTERRUPTED,
    ATTR_RUNG_STOP,
    ATTR_STOPPED,
    ATTR_TUNE_TRIAL,
)
from jepa_ray.databases import is_database_uri
from jepa_ray.errors import UsageError, causes, storage_full
from jepa_ray.outcome import Ledger, Outcome, classify
from jepa_ray.sweep.options import SAMPLERS

__all__ = [
    "CHECKED_VERSIONS",
    "JepaOptunaSearch",
    "SAMPLERS",
    "check_private_api",
    "make_sampler",
    "make_searcher",
    "mark_interrupted",
    "study_of",
]


def make_sampler(name: str, seed: int, grid: dict | None = None):
    import optuna

    if name in ("tpe", "tpe-rungs"):
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        if not grid:
            raise UsageError("--sampler grid needs a space with a GRID dict (e.g. --space grid)")
        return optuna.samplers.GridSampler(grid, seed=seed)
    raise UsageError(f"--sampler {name!r} is not allowed; allowed: {', '.join(SAMPLERS)}")


class JepaOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna each trial's end from the sweep's ledger (or, used alone,
    from the trial's last result) and records the Tune trial id on the Optuna trial."""

    ledger: Ledger | None = None
    storage_path: str = ""
    """Where its study is stored (a full disk there is named so)."""
    rung_signals: tuple[str, ...] = ()
    """With the `tpe-rungs` sampler: the per-epoch signals (one per objective, in order) a trial
    stopped at a rung is told with, as COMPLETE, so that TPE learns from the rungs too (BOHB's
    idea: a model fit on the cheap fidelities); empty: stopped trials are PRUNED."""

    patience_s: float = 0.0
    """Seconds a study on a database server that stopped answering (restarted, failed over) is
    tried again, backing off from 0.5 s to 10 s, before the error goes to Tune (0: at once)."""

    def suggest(self, trial_id: str):
        def ask(retry: bool):
            if retry and trial_id not in searcher_trials(self):
                self._adopt_lost_ask(trial_id)
            params = super(JepaOptunaSearch, self).suggest(trial_id)
            trials = searcher_trials(self)
            if trial_id in trials:
                trials[trial_id].set_user_attr(ATTR_TUNE_TRIAL, trial_id)
            return params

        return self._with_patience(ask)

    def _adopt_lost_ask(self, trial_id: str) -> None:
        """A try of `ask` that failed on a database outage may have made its trial before the
        answer was lost: that trial, RUNNING and held by no Tune trial, becomes `trial_id`'s (a
        second ask would leave it RUNNING for ever); any more such are ended as interrupted."""
        study = searcher_study(self)
        ours = {t.number for t in searcher_trials(self).values()}
        lost = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number not in ours and ATTR_TUNE_TRIAL not in t.user_attrs
        ]
        if lost:
            first, *more = sorted(lost, key=lambda t: t.number)
            searcher_trials(self)[trial_id] = adopt_trial(study, first)
            for t in more:
                mark_interrupted(study, t, ATTR_INTERRUPTED)

    @property
    def suggested(self) -> int:
        """Trials suggested (started) in this run of the sweep."""
        return len(searcher_trials(self))

    def unended(self) -> list[str]:
        """Tune trial ids handed out whose end Optuna was not told yet."""
        done = searcher_completed(self)
        return [t for t in searcher_trials(self) if t not in done]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        trials, done = searcher_trials(self), searcher_completed(self)
        if trial_id not in trials or trial_id in done:
            return
        end = self.ledger.get(trial_id) if self.ledger is not None else None
        if end is None:
            metrics = tuple(self.metric) if isinstance(self.metric, (list, tuple)) else (self.metric,)
            end = classify(result, error="the trial raised an error" if error else None, objectives=metrics)
        ot_trial, attrs = trials[trial_id], {ATTR_EPOCHS: end.epochs}
        done.add(trial_id)
        if end.outcome is Outcome.FINISHED:
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            self._tell(ot_trial, [float((end.result or result)[m]) for m in metrics], TrialState.COMPLETE, attrs)
            return
        proxies = [end.result.get(m) for m in self.rung_signals]
        if end.outcome is Outcome.STOPPED and proxies and all(_finite(v) for v in proxies):
            attrs[ATTR_RUNG_STOP] = end.reason[:1000]
            self._tell(ot_trial, [float(v) for v in proxies], TrialState.COMPLETE, attrs)
            return
        if end.reason:
            attrs[ATTR_FAILURE] = end.reason[:1000]
        if end.outcome is Outcome.STOPPED:
            attrs[ATTR_RUNG_STOP] = end.reason[:1000]
        if end.outcome is Outcome.UNFINISHED:
            attrs[ATTR_STOPPED] = True  # --resume runs it again
        self._tell(ot_trial, None, TrialState[end.optuna_state], attrs)

    def _tell(self, ot_trial, values, state: TrialState, attrs: dict) -> None:
        """Optuna hears of the end now, in the event loop: a sampler's next proposal sees every
        end before it (with one trial at a time, a seeded sweep proposes the same again). A
        study whose disk is full stops the sweep (the ledger's `storage_full`, which Tune would
        otherwise only log): the trial stays RUNNING there, and --resume trains it again."""
        from optuna.exceptions import UpdateFinishedTrialError

        def tell(retry: bool) -> None:
            try:
                for k, v in attrs.items():
                    ot_trial.set_user_attr(k, v)
                searcher_study(self).tell(ot_trial, values, state=state, skip_if_finished=retry)
            except UpdateFinishedTrialError:
                if not retry:
                    raise  # on a retry: the try whose answer was lost did tell it

        try:
            self._with_patience(tell)
        except Exception as err:
            full = storage_full(err, self.storage_path)
            if full is None or self.ledger is None:
                raise
            self.ledger.storage_full = self.ledger.storage_full or full

    def _with_patience(self, call: Callable[[bool], Any]) -> Any:
        """call(retry) until it returns, again while the study's database server does not answer
        (for `patience_s`, on Tune's event loop: its trials wait for Optuna anyway), saying so on
        stderr once when it stops answering and once when it answers again."""
        delay, deadline, retry = 0.5, None, False
        while True:
            try:
                result = call(retry)
            except Exception as err:
                lost = _connection_lost(err) if self.patience_s else None
                if lost is None:
                    raise
                deadline = deadline or time.monotonic() + self.patience_s
                if time.monotonic() + delay > deadline:
                    raise
                if not retry:
                    reason = " ".join(str(lost).split())[:200]  # the driver's lines, joined
                    print(
                        f"warning: the Optuna study at {self.storage_path} did not answer ({reason}); "
                        f"trying again for up to {self.patience_s:g} s (--tracking-patience)",
                        file=sys.stderr,
                        flush=True,
                    )
                time.sleep(delay)
                delay, retry = min(2 * delay, 10.0), True
                continue
            if retry:
                print(f"the Optuna study at {self.storage_path} answers again", file=sys.stderr, flush=True)
            return result


def _connection_lost(err: BaseException) -> BaseException | None:
    """The driver's error when `err` comes from a database connection that failed or broke
    (SQLAlchemy's OperationalError or InterfaceError, which Optuna wraps in a message about
    invalid data), not from what was written; else None."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    for cause in causes(err):
        if isinstance(cause, (OperationalError, InterfaceError)):
            return cause.orig or cause
    return None


def storage_engine_kwargs(storage_url: str) -> dict:
    """SQLAlchemy engine options of the study's storage: a sqlite file waits up to 30 s for its
    lock; a database server's pooled connections are tested before use (`pool_pre_ping`, which
    Optuna sets for MySQL only), so that one dropped by a restarted server is replaced instead of
    failing the next ask or tell."""
    if storage_url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True}


def make_searcher(
    space_fn,
    objectives,
    sampler,
    study_name: str,
    storage_url: str,
    ledger: Ledger | None = None,
    patience_s: float = 0.0,
) -> JepaOptunaSearch:
    """The sweep's searcher on its study; `patience_s`: how long a study on a database server
    that stopped answering is tried again (a sqlite file has its own lock timeout)."""
    import optuna

    storage = optuna.storages.RDBStorage(storage_url, engine_kwargs=storage_engine_kwargs(storage_url))
    searcher = JepaOptunaSearch(
        space=space_fn,
        metric=[o.name for o in objectives],
        mode=[o.direction for o in objectives],
        sampler=sampler,
        study_name=study_name,
        storage=storage,
    )
    searcher.ledger = ledger
    searcher.storage_path = str(sqlite_path(storage_url) or storage_url)
    searcher.patience_s = patience_s if is_database_uri(storage_url) else 0.0
    return searcher


def study_of(searcher: JepaOptunaSearch):
    """The Optuna study a searcher drives."""
    return searcher_study(searcher)


def _finite(value) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value == value
        and abs(value) != float("inf")
    )
