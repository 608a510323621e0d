"""Rectified LpJEPA searched in target-density space: the sampler's axis is the l0 density the
trial asks for (log-uniform 0.01-0.9, the objective's own axis) and p; mu is solved from them by
inverting the closed form (config field `target_density`, jepa_ray.targets.mu_for_density), so
MLflow records both the density asked for and the mu solved. lambd, slices and the projector as
in `rectified`."""

from __future__ import annotations

from jepa_ray.targets import expected_l0_density, sigma_gn
from search_spaces._projector import suggest_projector
from search_spaces.rectified import LAMBD, SLICES, P
from search_spaces.rectified import STARTING_POINTS as RECTIFIED_STARTING_POINTS

DENSITY = (0.01, 0.9)

# The rectified space's starting points, by the density they target (mu 0, -1 at p 1; -2 at p 0.5).
STARTING_POINTS = [
    {
        **{k: v for k, v in point.items() if k != "mu"},
        "target_density": round(expected_l0_density(point["p"], point["mu"], sigma_gn(point["p"])), 3),
    }
    for point in RECTIFIED_STARTING_POINTS
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
