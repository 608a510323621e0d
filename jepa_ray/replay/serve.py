"""Serving recorded trials to a sweep, light enough for thousands of Tune trial actors: the lookup
from a proposal to its recorded row (`ReplayIndex`, numpy only) and the Tune function trial that
reports a row's precomputed results (`replay_trial`). Neither imports torch, pyarrow or the sweep
package: the driver computes each row's results once (jepa_ray.replay.tables.serve, with the
collapse guard) and hands them to the trials through Ray's object store."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from jepa_ray.trial_spec import TrialSpec


def _canonical(params: dict[str, Any]) -> str:
    return json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True)


class ReplayIndex:
    """Which recorded row serves a proposal: the row of exactly these params (its lowest seed),
    else the nearest, each param placed by its rank among the recorded values of it (a number
    between two values in between), distances summed in squares; ties to the first in (seed,
    key) order."""

    def __init__(self, rows: list[tuple[str, int, dict[str, Any], dict[str, Any]]]):
        """rows: (key, seed, params, values) with `values` every key a proposal may name (the
        row's flattened config, its params over it)."""
        rows = sorted(rows, key=lambda r: (r[1], r[0]))
        self.keys = [r[0] for r in rows]
        self.values = [r[3] for r in rows]
        self.exact: dict[str, str] = {}
        for key, _, params, _ in rows:
            self.exact.setdefault(_canonical(params), key)
        self._places: dict[str, tuple[list, np.ndarray]] = {}

    def nearest(self, params: dict[str, Any]) -> str:
        key = self.exact.get(_canonical(params))
        if key is not None:
            return key
        distance = np.zeros(len(self.keys))
        for name, value in params.items():
            distance += (self._placed(name) - self._place(name, value)) ** 2
        return self.keys[int(np.argmin(distance))]

    def _placed(self, name: str) -> np.ndarray:
        """Every row's place in [0, 1] for `name`."""
        if name not in self._places:
            column = [v.get(name) for v in self.values]
            self._places[name] = (column, np.array([self._place(name, v, column) for v in column]))
        return self._places[name][1]

    def _place(self, name: str, value: Any, column: list | None = None) -> float:
        column = self._places[name][0] if column is None else column
        numbers = sorted({float(v) for v in column if _number(v)})
        if numbers and all(_number(v) for v in column if v is not None):
            if not _number(value):
                return 2.0
            grid = np.linspace(0.0, 1.0, len(numbers)) if len(numbers) > 1 else np.zeros(1)
            return float(np.interp(float(value), numbers, grid))
        labels = sorted({str(v) for v in column if v is not None})
        return labels.index(str(value)) / max(len(labels) - 1, 1) if str(value) in labels else 2.0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def replay_trial(
    trial: dict[str, Any],
    *,
    streams: dict[str, list[tuple[dict, float]]],
    index: ReplayIndex,
    speed: float = 0.0,
) -> None:
    """A Tune function trial that reports the precomputed results of the row serving its
    proposal, sleeping each result's recorded seconds divided by `speed` (0: not at all)."""
    from ray import tune

    spec = TrialSpec.from_config(trial)
    key = spec.row or index.nearest(spec.overrides)
    for result, seconds in streams[key]:
        if speed:
            time.sleep(seconds / speed)
        tune.report(dict(result))
