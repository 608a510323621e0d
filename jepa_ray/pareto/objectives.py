"""Objectives (metric and direction), filters and reference points of a Pareto front, parsed
from the command line's text."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from jepa_ray.contract import reference_point
from jepa_ray.errors import UsageError
from jepa_ray.pareto.columns import METRIC_PREFIX


@dataclass(frozen=True)
class Objective:
    """A final metric to maximize or minimize."""

    name: str
    direction: str = "max"

    def __post_init__(self) -> None:
        if self.direction not in ("max", "min"):
            raise UsageError(f"objective '{self.name}': direction {self.direction!r} is not allowed; allowed: max, min")
        if not self.name:
            raise UsageError("objective name is empty; expected a metric name such as linear_acc")

    @property
    def sign(self) -> float:
        """Factor that turns the objective into one to minimize."""
        return -1.0 if self.direction == "max" else 1.0

    @property
    def column(self) -> str:
        return METRIC_PREFIX + self.name

    def __str__(self) -> str:
        return f"{self.name}:{self.direction}"


def parse_objectives(text: str) -> list[Objective]:
    """`"linear_acc:max,l0_density:min"` -> objectives (direction defaults to max)."""
    objectives: list[Objective] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, direction = item.partition(":")
        name, direction = name.strip(), (direction.strip().lower() or "max")
        if not re.fullmatch(r"[A-Za-z0-9_./-]+", name) or direction not in ("max", "min"):
            raise UsageError(
                f"--objectives {text!r}: bad item {item!r}; expected name:max or name:min, "
                "comma separated (e.g. linear_acc:max,l0_density:min)"
            )
        objectives.append(Objective(name, direction))
    if not objectives:
        raise UsageError(f"--objectives {text!r}: no objective given; expected e.g. linear_acc:max,l0_density:min")
    names = [o.name for o in objectives]
    if len(set(names)) != len(names):
        raise UsageError(f"--objectives {text!r}: an objective is listed twice")
    return objectives


_OPS = {">=": np.greater_equal, "<=": np.less_equal, ">": np.greater, "<": np.less, "==": np.equal, "!=": np.not_equal}
_FILTER_RE = re.compile(
    r"^\s*([A-Za-z_][\w./-]*)\s*(>=|<=|==|!=|>|<)\s*"
    r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


@dataclass(frozen=True)
class Filter:
    """A feasibility condition `name op number` on a final metric."""

    name: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value:g}"

    def mask(self, trials: pd.DataFrame) -> np.ndarray:
        """Rows that satisfy the condition (a missing value never does)."""
        column = METRIC_PREFIX + self.name
        if column not in trials.columns or trials[column].isna().all():
            raise UsageError(f"--filter {self}: '{self.name}' is not a final metric of any trial run")
        values = trials[column].to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            return _OPS[self.op](values, self.value) & ~np.isnan(values)


def parse_filter(text: str) -> Filter:
    """`"linear_acc>=0.5"` -> Filter; name, one of >= <= > < == !=, and a number (no eval)."""
    match = _FILTER_RE.match(text or "")
    if not match:
        raise UsageError(
            f"--filter {text!r}: expected NAME OP NUMBER with OP one of >=, <=, >, <, ==, != "
            "(e.g. linear_acc>=0.5 or l0_density<=0.3)"
        )
    return Filter(match[1], match[2], float(match[3]))


def parse_reference(text: str, objectives: Sequence[Objective]) -> dict[str, float]:
    """`"linear_acc=0,l0_density=1"` -> {name: value}; names must be objectives."""
    names = {o.name for o in objectives}
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, raw = item.partition("=")
        name = name.strip()
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not sep or name not in names or not math.isfinite(value):
            raise UsageError(
                f"--reference {text!r}: bad item {item!r}; expected objective=number for "
                f"objectives {', '.join(sorted(names))}"
            )
        out[name] = value
    return out


def default_reference(objectives: Sequence[Objective], values: np.ndarray) -> tuple[float, ...]:
    """The reference point of `values` (n, k): per objective, contract.reference_point (the end
    of the metric's known range on its bad side, else the worst value observed), the rule the
    sweep's hypervolume curve follows too."""
    return tuple(
        reference_point(obj.name, obj.direction, values[:, j] if len(values) else ())
        for j, obj in enumerate(objectives)
    )
