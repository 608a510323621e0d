"""The projector part shared by the spaces: hidden width, output width and depth."""

from __future__ import annotations

HIDDEN = (128, 256, 512, 1024)
OUTPUT = (64, 128, 256, 512, 1024)


def suggest_projector(trial, hidden=HIDDEN, output=OUTPUT, max_depth: int = 3) -> str:
    """`proj_dims` as hidden widths then the output width, e.g. '512-512-256'."""
    depth = trial.suggest_int("proj_depth", 1, max_depth)
    out = trial.suggest_categorical("proj_out", list(output))
    if depth == 1:
        return str(out)
    hid = trial.suggest_categorical("proj_hidden", list(hidden))
    return "-".join([str(hid)] * (depth - 1) + [str(out)])
