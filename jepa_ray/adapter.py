"""The one module that uses Ray's and Optuna's private API and Ray's undocumented environment
switches, checked against the versions it was written for (SUPPORTED). `check_versions` runs at
the start of a sweep, before Ray does any work: an unsupported Ray or Optuna is one line (exit 2)
there, not an AttributeError in the middle of a user's sweep. `check_private_api` names what an
upgrade removed."""

from __future__ import annotations

import os

from jepa_ray.errors import UsageError

SUPPORTED = {"ray": ("2.60",), "optuna": ("5.",)}
"""Version prefixes the private uses below were checked against (pyproject.toml pins the same)."""
CHECKED_VERSIONS = {"ray": "2.60", "optuna": "5.0"}
PRIVATE_SEARCHER_ATTRS = ("_ot_study", "_ot_trials", "_completed_trials")
PRIVATE_STORAGE_METHODS = ("set_trial_user_attr", "set_trial_state_values")

RAY_SWITCHES = {
    # Tune's pre-2.7 console output (the CLIReporter table with our columns); the new one ignores
    # a progress reporter.
    "RAY_AIR_NEW_OUTPUT": "0",
    # The objectives are final metrics: per-epoch results and failure reports lack them, and
    # Tune's strict check would end the whole sweep at the first such result.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Tune's CSV, JSON and TensorBoard loggers write every result into each trial's directory
    # again, on Tune's event loop (three files open per running trial); MLflow records them all.
    # A user who wants those files sets it to 0.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


def check_versions(ray_version: str | None = None, optuna_version: str | None = None) -> None:
    """UsageError (one line) when the installed Ray or Optuna is not a version this adapter
    supports."""
    if ray_version is None:
        import ray

        ray_version = ray.__version__
    if optuna_version is None:
        import optuna

        optuna_version = optuna.__version__
    for name, version in (("ray", ray_version), ("optuna", optuna_version)):
        if not version.startswith(SUPPORTED[name]):
            allowed = " or ".join(f"{p}x" if p.endswith(".") else f"{p}.x" for p in SUPPORTED[name])
            raise UsageError(
                f"installed {name} {version} is not supported: jepa_ray's sweep driver uses {name} internals "
                f"checked against {allowed}; install the versions pyproject.toml pins (pip install -e .)"
            )


def set_ray_switches() -> None:
    """Set the Ray environment switches the driver relies on (see RAY_SWITCHES)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", RAY_SWITCHES["RAY_AIR_NEW_OUTPUT"])
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = RAY_SWITCHES["TUNE_DISABLE_STRICT_METRIC_CHECKING"]
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", RAY_SWITCHES["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"])


# Ray ----------------------------------------------------------------------------------------


def shared_cluster_address() -> str | None:
    """HOST:PORT of the cluster that `ray start` (or `ray up`) last started on this machine for
    sharing, read from Ray's `ray_current_cluster` file; None when there is none. Another
    driver's private local instance is not such a cluster (Ray's own "auto" would join it)."""
    from ray._private.services import get_ray_address_from_environment

    try:
        return get_ray_address_from_environment(None, None)
    except ConnectionError:
        return None


def node_ip_address() -> str:
    """This node's IP address as Ray sees it (Ray maps loopback names to it)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


# Optuna, through Ray's OptunaSearch -----------------------------------------------------------


def searcher_study(searcher):
    """The Optuna study an OptunaSearch drives."""
    return searcher._ot_study


def searcher_trials(searcher) -> dict:
    """Tune trial id -> the Optuna trial an OptunaSearch handed out for it."""
    return searcher._ot_trials


def searcher_completed(searcher) -> set:
    """Tune trial ids whose end the OptunaSearch already told Optuna."""
    return searcher._completed_trials


def mark_interrupted(study, trial, attr: str) -> None:
    """End a trial left RUNNING by a killed driver as FAIL with user attr `attr` (Optuna has no
    public call to end a trial it did not hand out in this process)."""
    from optuna.trial import TrialState

    study._storage.set_trial_user_attr(trial._trial_id, attr, True)
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def adopt_trial(study, trial):
    """A live Optuna `Trial` for the RUNNING trial `trial` of `study` (a FrozenTrial), as `ask`
    would have returned it: for an ask whose answer a database outage lost after it was made."""
    import optuna

    return optuna.trial.Trial(study, trial._trial_id)


def check_private_api(searcher_cls: type | None = None, storage_cls: type | None = None) -> None:
    """RuntimeError naming what is missing when the installed Ray or Optuna no longer has the
    private attributes used above (checked against CHECKED_VERSIONS)."""
    import optuna
    import ray
    from ray.tune.search.optuna import OptunaSearch

    searcher_cls = searcher_cls or OptunaSearch
    storage_cls = storage_cls or optuna.storages.RDBStorage
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the probe's in-memory study is not news
    probe = (
        searcher_cls(space=lambda trial: {}, metric=["a"], mode=["max"])
        if searcher_cls is OptunaSearch
        else searcher_cls()
    )
    missing = [f"OptunaSearch.{a}" for a in PRIVATE_SEARCHER_ATTRS if not hasattr(probe, a)]
    missing += [f"{storage_cls.__name__}.{m}" for m in PRIVATE_STORAGE_METHODS if not hasattr(storage_cls, m)]
    try:
        from ray._private import services

        missing += [
            f"ray._private.services.{f}"
            for f in ("get_ray_address_from_environment", "get_node_ip_address")
            if not hasattr(services, f)
        ]
    except ImportError:
        missing.append("ray._private.services")
    if missing:
        raise RuntimeError(
            f"jepa_ray.adapter relies on {', '.join(missing)}, which the installed ray {ray.__version__} / "
            f"optuna {optuna.__version__} lack (checked against ray {CHECKED_VERSIONS['ray']}, optuna "
            f"{CHECKED_VERSIONS['optuna']}); pin those versions or update the adapter"
        )
