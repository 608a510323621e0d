"""Recorded learning curves replayed instead of trained: a curve table as a sweep's search space
and trials (`tables`, `serve`: the live sweep's `--replay TABLE`), a sweep run in simulated time
(`simulate`), the named search methods it compares (`methods`, benchmarks/search.py --replay),
and the what-if of a finished sweep (`whatif`: `python -m jepa_ray.replay --sweep RUN_ID
--scheduler moasha`).

The names load on first use (jepa_ray.lazy): the live driver and a replayed trial's Ray worker
import `tables` and `serve`, which sit below the sweep package; `simulate`, `methods` and the
what-if sit above it (they run the sweep's own searcher and schedulers)."""

from jepa_ray import lazy

__getattr__, _names = lazy.exports(
    __name__,
    {
        "jepa_ray.replay.whatif": ("WhatIf", "sweep_table", "what_if"),
        "jepa_ray.replay.methods": ("METHODS", "Method", "run_method"),
        "jepa_ray.replay.simulate": ("SimResult", "simulate"),
        "jepa_ray.replay.tables": ("Replay", "nearest_row"),
    },
)
__all__ = list(_names)
