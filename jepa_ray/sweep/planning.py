"""`SweepPlan`: a sweep checked and ready to run (what `driver.plan` returns and `driver.execute`
runs; the records module reads it too, so it lives below both)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import TrialScheduler

from jepa_ray.config import TrialConfig
from jepa_ray.pareto.objectives import Objective
from jepa_ray.sweep.options import SweepOptions
from jepa_ray.tracking import writer_lock

if TYPE_CHECKING:  # annotations only: the plan holds these, it never builds them
    from mlflow.entities import Run
    from optuna.samplers import BaseSampler

    from jepa_ray.replay.tables import Replay
    from jepa_ray.train.faults import Fault


@dataclass(frozen=True)
class SweepPlan:
    """What `execute` needs, every input checked, nothing started."""

    opts: SweepOptions
    objectives: list[Objective]
    base: TrialConfig
    """The trials' base config, unresolved (each trial's overrides apply first)."""
    scheduler: TrialScheduler | None
    """The scheduler the flags name (None: FIFO); the driver wraps it in LedgerScheduler."""
    space: Callable[[Any], dict[str, Any]]
    """A define-by-run callable for OptunaSearch (picklable): an Optuna trial -> a TrialSpec's config."""
    starting_points: list[dict[str, Any]]
    sampler_name: str
    sampler: BaseSampler
    grid: dict[str, list] | None
    """The factorial `--sampler grid` walks (None: the space has none)."""
    seed: int
    storage: str
    """Where trials keep their checkpoints (a resolved local path or a URI)."""
    storage_url: str
    """The Optuna study's storage."""
    name: str
    exp_id: str | None
    """None: the experiment does not exist yet (execute creates it)."""
    parent: Run | None = None
    """The parent run of the sweep to resume (None: a new sweep)."""
    fault: Fault | None = None
    """A fault to inject into trials (JEPA_RAY_FAULT, tests only)."""
    replay: Replay | None = None
    """The curve table the trials replay instead of training (--replay)."""

    @property
    def writer_lock(self) -> Path:
        """The lock file its MLflow writer holds (a resumed driver waits for a killed one's)."""
        return writer_lock.lock_path(self.opts.tracking_uri, self.opts.experiment, self.name)
