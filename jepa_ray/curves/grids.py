"""Named recording grids: the trials a curve table holds. A grid is a base (a preset and the
overrides every row shares), its configurations, and a few configurations recorded with more
seeds, the noise floor every comparison is read against. Configurations are a full factorial of
searched params (a sampler restricted to the table's values always proposes a recorded
configuration) or a space-filling design over the search space's continuous ranges (a Latin
hypercube: what a search meets in a real space, not a lattice)."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any

from jepa_ray.errors import UsageError
from search_spaces import _projector, rectified, rectified_density

REPLICATE_SEEDS = (1, 2)


@dataclass(frozen=True)
class Dim:
    """One axis of a design: a float range (log-uniform with `log`) or a list of choices."""

    name: str
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    choices: tuple = ()

    def value(self, u: float) -> Any:
        """The value at `u` in [0, 1): choices split the interval evenly; floats keep 4 digits."""
        if self.choices:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        x = (
            math.exp(math.log(self.low) + u * math.log(self.high / self.low))
            if self.log
            else self.low + u * (self.high - self.low)
        )
        return float(f"{x:.4g}")


@dataclass(frozen=True)
class Design:
    """`n` points of a Latin hypercube (seeded, centred discrepancy optimized) over `dims`: every
    axis cut into `n` equal strata with one point each, so choices are used equally often; `proj_depth`, `proj_hidden`
    and `proj_out`, when present, become the trial's `proj_dims` as the search spaces build it."""

    dims: tuple[Dim, ...]
    n: int
    seed: int = 0

    def points(self) -> list[dict[str, Any]]:
        from scipy.stats import qmc

        unit = qmc.LatinHypercube(len(self.dims), optimization="random-cd", seed=self.seed).random(self.n)
        return [_projector_dims({d.name: d.value(u) for d, u in zip(self.dims, row)}) for row in unit]


def _projector_dims(point: dict[str, Any]) -> dict[str, Any]:
    if "proj_depth" not in point:
        return point
    depth, hidden, out = point.pop("proj_depth"), point.pop("proj_hidden"), point.pop("proj_out")
    return {**point, "proj_dims": "-".join([str(hidden)] * (depth - 1) + [str(out)])}


@dataclass(frozen=True)
class Grid:
    name: str
    preset: str
    base: dict[str, Any]
    """Overrides of the preset every row shares (the recording's setting)."""
    factors: dict[str, tuple] = field(default_factory=dict)
    """Searched params, each with its values; every combination is recorded at seed 0."""
    design: Design | None = None
    """Instead of `factors`: a space-filling design's points, each recorded at seed 0."""
    replicates: tuple[dict[str, Any], ...] = ()
    """Configurations recorded again with each of `replicate_seeds`."""
    replicate_first: int = 0
    """With a design: its first N points (spread over the space) recorded with `replicate_seeds`."""
    replicate_seeds: tuple[int, ...] = REPLICATE_SEEDS
    needs_data_dir: bool = False
    doc: str = ""
    order_seed: int = 0
    """Seed of the order the factorial is recorded in (a shuffle, so any prefix spreads over it)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def configurations(self) -> list[dict[str, Any]]:
        if self.design is not None:
            return self.design.points()
        names = list(self.factors)
        return [dict(zip(names, values)) for values in itertools.product(*(self.factors[n] for n in names))]

    def points(self) -> list[tuple[dict[str, Any], int]]:
        """(params, seed) in recording order: the replicated configurations at every seed
        first (the noise floor early), then the rest of the factorial in a seeded shuffle."""
        configs = self.configurations()
        replicates = self.replicates or tuple(configs[: self.replicate_first])
        for point in replicates:
            if point not in configs:
                raise ValueError(f"grid {self.name}: replicate {point} is not one of its configurations")
        first = [(p, s) for p in replicates for s in (0, *self.replicate_seeds)]
        rest = [p for p in configs if p not in replicates]
        random.Random(self.order_seed).shuffle(rest)
        return first + [(p, 0) for p in rest]


_REFERENCE_LAMBD = 5.0 / 7.0
# CIFAR-10 at CPU scale: a fixed stratified 5,000 train / 2,000 test images, jepa_convnet_tiny,
# the reference recipe, one thread per trial.
_CIFAR_CPU = {
    "dataset": "parquet",
    "backbone": "jepa_convnet_tiny",
    "cifar_stem": False,
    "max_train_samples": 5000,
    "max_test_samples": 2000,
    "epochs": 12,
    "batch_size": 256,
    "sync_bn": False,
    "target": "rgg",
    "regularizer": "rdmreg",
    "collapse_guard": False,
    "checkpoint_every": 0,
    "threads_per_worker": 1,
}

GRIDS: dict[str, Grid] = {
    g.name: g
    for g in (
        Grid(
            name="cifar10-cpu",
            preset="cifar10-resnet18",
            doc="CIFAR-10 at CPU scale, the quality benchmark's setting: the reference recipe (LARS, "
            "loss scale 350) on a fixed stratified 5,000 train / 2,000 test images with "
            "jepa_convnet_tiny, batch 256, 12 epochs (6 of warmup), one thread per trial.",
            base=_CIFAR_CPU,
            factors={
                "target_density": (0.01, 0.05, 0.25, 0.9),
                "p": (0.5, 1.0, 2.0),
                "lambd": (0.3, _REFERENCE_LAMBD, 0.9),
                "num_slices": (256, 2048),
            },
            replicates=(
                {"target_density": 0.01, "p": 1.0, "lambd": _REFERENCE_LAMBD, "num_slices": 2048},
                {"target_density": 0.05, "p": 0.5, "lambd": 0.9, "num_slices": 256},
                {"target_density": 0.25, "p": 2.0, "lambd": 0.3, "num_slices": 2048},
                {"target_density": 0.9, "p": 1.0, "lambd": _REFERENCE_LAMBD, "num_slices": 256},
                {"target_density": 0.25, "p": 1.0, "lambd": 0.9, "num_slices": 256},
                {"target_density": 0.05, "p": 2.0, "lambd": _REFERENCE_LAMBD, "num_slices": 2048},
            ),
            needs_data_dir=True,
        ),
        Grid(
            name="cifar10-long",
            preset="cifar10-resnet18",
            doc="CIFAR-10 at CPU scale in the users' regime: cifar10-cpu's data, encoder and recipe "
            "for 30 epochs with 3 of warmup (10%), bf16, over 96 configurations of a Latin hypercube "
            "design on the default search space's ranges (lambda, p, target density, slices, "
            "projector), the first 6 at seeds 0, 1, 2.",
            base={**_CIFAR_CPU, "epochs": 30, "warmup_epochs": 3, "precision": "bf16"},
            design=Design(
                dims=(
                    Dim("lambd", *rectified.LAMBD, log=True),
                    Dim("p", *rectified.P, log=True),
                    Dim("target_density", *rectified_density.DENSITY, log=True),
                    Dim("num_slices", choices=rectified.SLICES),
                    Dim("proj_depth", choices=(1, 2, 3)),
                    Dim("proj_hidden", choices=_projector.HIDDEN),
                    Dim("proj_out", choices=_projector.OUTPUT),
                ),
                n=96,
                seed=0,
            ),
            replicate_first=6,
            needs_data_dir=True,
        ),
        Grid(
            name="digits",
            preset="digits-sweep",
            doc="The embedded digits, the default sweep's trial (AdamW, loss scale 1) shortened to "
            "12 epochs, one thread per trial: the same shape as cifar10-cpu, small, for tests and "
            "fast iteration.",
            base={
                "epochs": 12,
                "target": "rgg",
                "regularizer": "rdmreg",
                "collapse_guard": False,
                "checkpoint_every": 0,
                "threads_per_worker": 1,
            },
            factors={
                "target_density": (0.02, 0.1, 0.5),
                "p": (0.5, 1.0, 2.0),
                "lambd": (0.1, 0.5, 0.9),
                "num_slices": (256, 1024),
            },
            replicates=(
                {"target_density": 0.02, "p": 1.0, "lambd": 0.5, "num_slices": 1024},
                {"target_density": 0.1, "p": 0.5, "lambd": 0.9, "num_slices": 256},
                {"target_density": 0.5, "p": 2.0, "lambd": 0.1, "num_slices": 1024},
                {"target_density": 0.1, "p": 1.0, "lambd": 0.5, "num_slices": 256},
                {"target_density": 0.5, "p": 1.0, "lambd": 0.9, "num_slices": 256},
                {"target_density": 0.02, "p": 2.0, "lambd": 0.9, "num_slices": 1024},
            ),
        ),
        Grid(
            name="smoke",
            preset="smoke",
            doc="Two epochs of the smoke config at 2 x 2 configurations: for the recorder's tests.",
            base={"epochs": 2, "target": "rgg", "collapse_guard": False, "threads_per_worker": 1},
            factors={"target_density": (0.1, 0.5), "lambd": (0.3, 0.9)},
            replicates=({"target_density": 0.1, "lambd": 0.9},),
            replicate_seeds=(1,),
        ),
    )
}


def grid(name: str) -> Grid:
    if name not in GRIDS:
        raise UsageError(f"--grid {name!r} is not a recording grid; allowed: {', '.join(GRIDS)}")
    return GRIDS[name]
