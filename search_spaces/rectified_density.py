"""Rectified LpJEPA searched in target-density space: the sampler's axis is the l0 density the
trial asks for (log-uniform 0.01-0.9, the objective's own axis) and p; mu is solved from them by
inverting the closed form (config field `target_density`, jepa_ray.targets.mu_for_density), so
MLflow records both the density asked for and the mu solved. lambd, slices and the projector as
in `rectified`."""

from __future__ import annotations

from search_spaces._projector import suggest_projector
from search_spaces.rectified import LAMBD, SLICES, P

DENSITY = (0.01, 0.9)

# The rectified space's starting points, by the density they target (mu 0, -1 at p 1; -2 at p 0.5).
STARTING_POINTS = [
    {
        "lambd": 0.9,
        "num_slices": 1024,
        "p": 1.0,
        "target_density": 0.5,
        "proj_depth": 3,
        "proj_out": 256,
        "proj_hidden": 256,
    },
    {
        "lambd": 0.9,
        "num_slices": 1024,
        "p": 1.0,
        "target_density": 0.122,
        "proj_depth": 3,
        "proj_out": 256,
        "proj_hidden": 256,
    },
    {
        "lambd": 0.9,
        "num_slices": 1024,
        "p": 0.5,
        "target_density": 0.026,
        "proj_depth": 3,
        "proj_out": 256,
        "proj_hidden": 256,
    },
]


def space(trial) -> dict:
    return {
        "target": "rgg",
        "regularizer": "rdmreg",
        "lambd": trial.suggest_float("lambd", *LAMBD, log=True),
        "num_slices": trial.suggest_categorical("num_slices", list(SLICES)),
        "p": trial.suggest_float("p", *P, log=True),
        "target_density": trial.suggest_float("target_density", *DENSITY, log=True),
        "sigma": 0.0,
        "proj_dims": suggest_projector(trial),
    }
