"""Rectified LpJEPA: RDMReg toward ReLU(GN_p(mu, sigma_GN(p))), the l0 knob being mu and p.

lambd spans LeJEPA-like small weights up to beyond the reference 5/7 (its loss scale stays the
preset's: 350 in the reference presets, 1 on digits); the number of slices is a power of two from
256 to 8192; sigma stays sigma_GN(p) (unit variance before the ReLU).
"""

from __future__ import annotations

from search_spaces._projector import suggest_projector

LAMBD = (0.02, 0.95)
SLICES = (256, 512, 1024, 2048, 4096, 8192)
P = (0.25, 2.0)
MU = (-3.0, 1.0)

# Dense, medium and sparse known-good points first, so even a short sweep spans the front.
STARTING_POINTS = [
    {"lambd": 0.9, "num_slices": 1024, "p": 1.0, "mu": 0.0, "proj_depth": 3, "proj_out": 256, "proj_hidden": 256},
    {"lambd": 0.9, "num_slices": 1024, "p": 1.0, "mu": -1.0, "proj_depth": 3, "proj_out": 256, "proj_hidden": 256},
    {"lambd": 0.9, "num_slices": 1024, "p": 0.5, "mu": -2.0, "proj_depth": 3, "proj_out": 256, "proj_hidden": 256},
]


def space(trial) -> dict:
    return {
        "target": "rgg",
        "regularizer": "rdmreg",
        "lambd": trial.suggest_float("lambd", *LAMBD, log=True),
        "num_slices": trial.suggest_categorical("num_slices", list(SLICES)),
        "p": trial.suggest_float("p", *P, log=True),
        "mu": trial.suggest_float("mu", *MU),
        "sigma": 0.0,
        "proj_dims": suggest_projector(trial),
    }
