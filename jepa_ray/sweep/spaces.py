"""Search spaces: define-by-run Optuna functions in `search_spaces/` (an installed package), each
`space(trial) -> dict` of flat trial-config overrides, checked against the trainer's config
before Ray starts."""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from typing import Any

from jepa_ray import config as config_lib
from jepa_ray.config import TrialConfig
from jepa_ray.errors import UsageError
from jepa_ray.trial_spec import TrialSpec


def load_space(name: str):
    """The module of a search space: `search_spaces.NAME`, or a dotted module path."""
    module_name = name if "." in name else f"search_spaces.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        import search_spaces

        available = sorted(m.name for m in pkgutil.iter_modules(search_spaces.__path__) if not m.name.startswith("_"))
        raise UsageError(
            f"unknown search space '{name}' ({err}); allowed: {', '.join(available)} "
            "or a dotted module path with a space(trial) function"
        ) from err
    if not callable(getattr(module, "space", None)):
        raise UsageError(f"search space '{name}': module {module_name} has no space(trial) function")
    return module


class DefineByRun:
    """A space wrapped for OptunaSearch (picklable: Tune saves the searcher): the trial config
    carries the config overrides, the Optuna trial number, the per-trial seed and the params
    key."""

    def __init__(self, space: str, sweep_seed: int):
        self.space, self.sweep_seed = space, sweep_seed

    def __call__(self, trial) -> dict[str, Any]:
        overrides = dict(load_space(self.space).space(trial) or {})
        return TrialSpec.from_optuna(trial, overrides, self.sweep_seed).to_config()


def trial_config(base: TrialConfig, spec: TrialSpec) -> TrialConfig:
    """The resolved config of one trial: base config + the space's overrides + its seed."""
    return config_lib.resolve(config_lib.apply_overrides(base, spec.training_overrides()))


def validate_space(module, base: TrialConfig, n: int = 200, seed: int = 0) -> int:
    """Run the space's STARTING_POINTS, then n random trials, through the space (no Ray) and
    check that every one gives a config the trainer accepts and that every starting point
    names only parameters the space suggests, with values inside their ranges. Returns the
    number of distinct trials seen; raises UsageError."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    name = module.__name__.rsplit(".", 1)[-1]
    points = list(getattr(module, "STARTING_POINTS", []))
    for point in points:
        study.enqueue_trial(point)
    fn = DefineByRun(module.__name__, 0)
    seen = set()
    for i in range(len(points) + n):
        where = f"starting point {points[i]}: " if i < len(points) else ""
        trial = study.ask()
        try:
            with warnings.catch_warnings():  # an out-of-range starting point gets our one-line error
                warnings.filterwarnings("ignore", message="Fixed parameter", category=UserWarning)
                out = fn(trial)
            spec = TrialSpec.from_config(out)
            trial_config(base, spec)
        except (ValueError, TypeError) as err:  # ConfigError; optuna: inverted ranges, bad choices
            raise UsageError(f"search space '{name}': {where}{err}") from err
        if i < len(points):
            _check_starting_point(name, points[i], trial)
        seen.add(spec.params_key)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return len(seen)


def _check_starting_point(space: str, point: dict, trial) -> None:
    """A starting point Optuna would silently ignore (a parameter the space does not suggest on
    that path) or take although it lies outside the space (Optuna only warns) is an error."""
    unused = sorted(set(point) - set(trial.params))
    if unused:
        raise UsageError(
            f"search space '{space}': starting point {point} names parameters the space "
            f"does not suggest: {', '.join(unused)}"
        )
    for key, value in point.items():
        dist = trial.distributions[key]
        choices = getattr(dist, "choices", None)
        inside = value in choices if choices is not None else dist.low <= value <= dist.high
        if not inside:
            allowed = ", ".join(map(str, choices)) if choices is not None else f"[{dist.low}, {dist.high}]"
            raise UsageError(
                f"search space '{space}': starting point {point}: {key}={value!r} is outside "
                f"the space; allowed: {allowed}"
            )
