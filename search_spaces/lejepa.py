"""LeJEPA baseline: SIGReg toward the isotropic Gaussian (no ReLU), lambd in LeJEPA's small
range and around it, slices and projector sizes."""

from __future__ import annotations

from search_spaces._projector import suggest_projector

LAMBD = (0.005, 0.5)
SLICES = (256, 512, 1024, 2048)

STARTING_POINTS = [
    {"lambd": 0.05, "num_slices": 1024, "proj_depth": 3, "proj_out": 128, "proj_hidden": 256},
]


def space(trial) -> dict:
    return {
        "target": "gaussian",
        "regularizer": "sigreg",
        "lambd": trial.suggest_float("lambd", *LAMBD, log=True),
        "num_slices": trial.suggest_categorical("num_slices", list(SLICES)),
        "proj_dims": suggest_projector(trial),
    }
