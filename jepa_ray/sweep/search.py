"""The Ray Tune x Optuna adapter: the one module that uses private API of either (Ray's
OptunaSearch keeps its study and trials in `_ot_study`, `_ot_trials`, `_completed_trials`;
Optuna's storage is changed directly to mark an interrupted trial). It names the versions it was
checked against, and `check_private_api` fails with a clear message when an upgrade removed
what it relies on (tests/test_sweep.py runs it)."""

from __future__ import annotations

import math

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from jepa_ray.contract import RESULT_FAILURE, FailureKind, failure_kind
from jepa_ray.errors import UsageError
from jepa_ray.sweep.options import SAMPLERS

CHECKED_VERSIONS = {"ray": "2.60", "optuna": "5.0"}
"""The versions whose private attributes this module was written against."""
PRIVATE_SEARCHER_ATTRS = ("_ot_study", "_ot_trials", "_completed_trials")
PRIVATE_STORAGE_METHODS = ("set_trial_user_attr", "set_trial_state_values")


def make_sampler(name: str, seed: int, grid: dict | None = None):
    import optuna

    if name == "tpe":
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
    """OptunaSearch that tells Optuna FAIL for a trial that failed, PRUNED for one the collapse
    guard stopped, and records the Tune trial id on the Optuna trial.

    PRUNED rather than FAIL because samplers learn from pruned trials and not from failed
    ones: TPE ranks them below every complete trial, so it stops proposing the small-lambda
    corner where z collapses instead of sampling it again and again."""

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
        return params

    @property
    def suggested(self) -> int:
        """Trials suggested (started) in this run of the sweep."""
        return len(self._ot_trials)

    def fail_unfinished(self, why: str) -> int:
        """Tell FAIL (marked `stopped`, so that --resume runs them again) for the suggested
        trials whose end Tune never reported: those it stopped when the sweep stopped."""
        count = 0
        for trial_id, ot_trial in self._ot_trials.items():
            if trial_id in self._completed_trials:
                continue
            ot_trial.set_user_attr("stopped", True)
            ot_trial.set_user_attr("failure", why)
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            self._completed_trials.add(trial_id)
            count += 1
        return count

    stopped: dict[str, str]
    """Trial id -> why a scheduler stopped it at a rung (the scheduler's ledger; make_searcher
    sets an empty one)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._ot_trials and trial_id not in self._completed_trials and trial_id in self.stopped:
            # Stopped early: PRUNED, which samplers read as worse than any complete trial
            # (Optuna takes no intermediate values in multi-objective studies).
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("rung_stop", self.stopped[trial_id][:1000])
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            kind = failure_kind(result)
            failed = error or not result or kind is not None or any(not _finite(result.get(m)) for m in self.metric)
            if failed:
                ot_trial = self._ot_trials[trial_id]
                why = str(result.get(RESULT_FAILURE) or "") if result else ""
                if why:
                    ot_trial.set_user_attr("failure", why[:1000])
                pruned = not error and kind in (FailureKind.COLLAPSED, FailureKind.STOPPED)
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED if pruned else TrialState.FAIL)
                self._completed_trials.add(trial_id)
                return
        super().on_trial_complete(trial_id, result, error)


def make_searcher(space_fn, objectives, sampler, study_name: str, storage_url: str) -> JepaOptunaSearch:
    import optuna

    storage = optuna.storages.RDBStorage(
        storage_url, engine_kwargs={"connect_args": {"timeout": 30}} if storage_url.startswith("sqlite") else {}
    )
    searcher = JepaOptunaSearch(
        space=space_fn,
        metric=[o.name for o in objectives],
        mode=[o.direction for o in objectives],
        sampler=sampler,
        study_name=study_name,
        storage=storage,
    )
    searcher.stopped = {}
    return searcher


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def study_of(searcher: JepaOptunaSearch):
    """The Optuna study a searcher drives."""
    return searcher._ot_study


def mark_interrupted(study, trial) -> None:
    """A trial left RUNNING by a killed driver: FAIL, with user attr `interrupted` (Optuna has no
    public call to end a trial it did not hand out in this process)."""
    study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def check_private_api(searcher_cls: type = OptunaSearch, storage_cls: type | None = None) -> None:
    """Raise RuntimeError naming what is missing when an installed Ray or Optuna no longer has
    the private attributes this adapter uses (checked against CHECKED_VERSIONS)."""
    import optuna
    import ray

    if storage_cls is None:
        storage_cls = optuna.storages.RDBStorage
    probe = (
        searcher_cls(space=lambda trial: {}, metric=["a"], mode=["max"])
        if searcher_cls is OptunaSearch
        else searcher_cls()
    )
    missing = [f"OptunaSearch.{a}" for a in PRIVATE_SEARCHER_ATTRS if not hasattr(probe, a)]
    missing += [f"{storage_cls.__name__}.{m}" for m in PRIVATE_STORAGE_METHODS if not hasattr(storage_cls, m)]
    if missing:
        raise RuntimeError(
            f"jepa_ray.sweep.search relies on {', '.join(missing)}, which the installed ray {ray.__version__} / "
            f"optuna {optuna.__version__} lack (checked against ray {CHECKED_VERSIONS['ray']}, optuna "
            f"{CHECKED_VERSIONS['optuna']}); pin those versions or update the adapter"
        )
