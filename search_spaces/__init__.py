"""Search spaces: one module per space, each with a define-by-run `space(trial) -> dict` that
returns flat trainer-config overrides (keys as in `python -m jepa_ray.train --list-keys`), and
optionally `STARTING_POINTS` (Optuna params enqueued first), `GRID` (for `--sampler grid`)."""
