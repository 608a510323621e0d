"""What one Tune trial is asked to train, typed: the config overrides its proposal sets, its Optuna
number, its identity across --resume, its seed, which configuration it is, and (when a recorded
curve serves it) the row. Tune carries it as the trial's config dict, whose keys are named in
`contract.py`; every space builds it here and every reader reads it back with `from_config`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from jepa_ray.contract import (
    ATTR_FIRST_TRIAL,
    SPEC_NUMBER,
    SPEC_OVERRIDES,
    SPEC_PARAMS_KEY,
    SPEC_ROW,
    SPEC_SEED,
    SPEC_TRIAL_KEY,
)


def params_key(params: dict[str, Any]) -> str:
    """A short stable id of a trial's sampled parameters (identifies a re-run trial)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def first_trial(trial) -> int:
    """The Optuna number of the trial a re-queued trial continues (its own number otherwise)."""
    return int(trial.user_attrs.get(ATTR_FIRST_TRIAL, trial.number))


@dataclass(frozen=True)
class TrialSpec:
    """One trial's proposal. `number` is None and the keys empty for a config that no jepa_ray
    space made (a test's, or a foreign searcher's); readers fall back to Tune's trial id."""

    overrides: dict[str, Any] = field(default_factory=dict)
    """Flat config overrides (`jepa_ray.config.apply_overrides`), the proposal itself."""
    number: int | None = None
    """The Optuna trial number: the trial's directory and its MLflow run's name."""
    trial_key: str = ""
    """Which trial this is across --resume: the first Optuna number of its chain."""
    seed: int | None = None
    """The training seed (the sweep's seed + the chain's first number); None: the config's."""
    params_key: str = ""
    """Which configuration this is (two trials, repeats or re-runs, may share one)."""
    row: str | None = None
    """The recorded row that serves the trial, when the proposal names one (the what-if)."""

    @classmethod
    def from_optuna(cls, trial, overrides: dict[str, Any], sweep_seed: int) -> TrialSpec:
        """The spec of an Optuna trial whose space proposed `overrides`: a re-queued trial keeps
        the key and seed of the trial it continues."""
        first = first_trial(trial)
        return cls(
            overrides=dict(overrides),
            number=trial.number,
            trial_key=str(first),
            seed=sweep_seed + first,
            params_key=params_key(trial.params),
        )

    def to_config(self) -> dict[str, Any]:
        """The Tune trial config (only the keys that are set, as Tune's reporters show them)."""
        config: dict[str, Any] = {SPEC_OVERRIDES: dict(self.overrides)}
        optional = {
            SPEC_NUMBER: self.number,
            SPEC_TRIAL_KEY: self.trial_key or None,
            SPEC_SEED: self.seed,
            SPEC_PARAMS_KEY: self.params_key or None,
            SPEC_ROW: self.row,
        }
        config.update({k: v for k, v in optional.items() if v is not None})
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> TrialSpec:
        """The spec a Tune trial config carries (missing keys take their defaults)."""
        config = config or {}
        number, seed, row = config.get(SPEC_NUMBER), config.get(SPEC_SEED), config.get(SPEC_ROW)
        return cls(
            overrides=dict(config.get(SPEC_OVERRIDES) or {}),
            number=None if number is None else int(number),
            trial_key=str(config.get(SPEC_TRIAL_KEY) or ""),
            seed=None if seed is None else int(seed),
            params_key=str(config.get(SPEC_PARAMS_KEY) or ""),
            row=None if row is None else str(row),
        )

    def training_overrides(self) -> dict[str, Any]:
        """The overrides a trial trains with: the proposal's, and its seed when it has one."""
        return self.overrides if self.seed is None else {**self.overrides, "seed": self.seed}
