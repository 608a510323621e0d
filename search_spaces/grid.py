"""The published mu x p grid of Rectified LpJEPA (mu in [-3, 1], p in {0.5, 1, 2}; sigma =
sigma_GN(p)) with the reference lambd (5/7; the loss scale comes from the preset, 350 in the
reference presets): use with `--sampler grid`, one trial per cell."""

from __future__ import annotations

MU = (-3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0)
P = (0.5, 1.0, 2.0)
GRID = {"mu": list(MU), "p": list(P)}
DEFAULT_SAMPLER = "grid"


def space(trial) -> dict:
    return {
        "target": "rgg",
        "regularizer": "rdmreg",
        "lambd": 5.0 / 7.0,
        "sigma": 0.0,
        "mu": trial.suggest_categorical("mu", list(MU)),
        "p": trial.suggest_categorical("p", list(P)),
    }
