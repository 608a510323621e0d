"""How a front is shown as text: the table of a front, and the tables and hypervolume summary of
several fronts compared (the plots are in jepa_ray.pareto.plot)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jepa_ray.pareto.columns import KEY_PARAMS, PARAM_PREFIX
from jepa_ray.pareto.comparison import Comparison
from jepa_ray.pareto.front import ParetoResult


def format_table(result: ParetoResult, max_params: int = 6) -> str:
    """The front as a fixed-width text table (objectives, key params, trial and run ids; the
    knee marked with *), under a header with the counts, reference point and hypervolume."""
    front = result.front
    params = _table_params(result, max_params)
    columns = ["#"] + [f"{o.name} ({o.direction})" for o in result.objectives] + params + ["trial_id", "run_id"]
    rows = []
    for i, row in enumerate(front.itertuples(index=False)):
        values = dict(zip(front.columns, row))
        mark = "*" if values.get("knee") else " "
        cells = [f"{i + 1}{mark}"] + [_cell(values[o.column]) for o in result.objectives]
        cells += [_cell(values[PARAM_PREFIX + p]) for p in params]
        cells += [_cell(values.get("trial_id")), str(values["run_id"])]
        rows.append(cells)
    widths = [max(len(c[j]) for c in [columns, *rows]) for j in range(len(columns))]
    lines = [
        _header(result),
        "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in rows]
    lines.append("* knee point")
    return "\n".join(lines)


def _header(result: ParetoResult) -> str:
    n_feasible = int(result.trials["feasible"].sum())
    scope = f"experiment '{result.experiment}'" if result.experiment else "trials"
    if result.sweep_run_ids:
        scope += f", sweep(s) {', '.join(result.sweep_run_ids)}"
    ref = ", ".join(f"{o.name}={r:g}" for o, r in zip(result.objectives, result.reference))
    filters = f"; filters {', '.join(map(str, result.filters))}" if result.filters else ""
    return (
        f"Pareto front of {scope}: {len(result.front)} of {n_feasible} feasible trials "
        f"({len(result.trials)} finished{filters}); hypervolume {result.hypervolume:.6g} "
        f"w.r.t. reference ({ref})"
    )


def _table_params(result: ParetoResult, max_params: int) -> list[str]:
    """Key params first, then the other params that vary over the front."""
    front = result.front
    present = [c[len(PARAM_PREFIX) :] for c in front.columns if c.startswith(PARAM_PREFIX)]
    varying = [p for p in present if front[PARAM_PREFIX + p].astype(str).nunique() > 1]
    ordered = [p for p in KEY_PARAMS if p in present] + [p for p in varying if p not in KEY_PARAMS]
    return ordered[: max(max_params, 0)]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value + 0.0:.4g}"  # + 0.0 turns -0.0 into 0.0
    return str(value)


def format_comparison(comp: Comparison, max_params: int = 6) -> str:
    """One front: its table (as format_table), then the per-sweep hypervolumes when an
    experiment holds several sweeps. Several fronts: each group's table, then a summary of
    the groups' hypervolumes at the shared reference and the per-sweep hypervolume spread."""
    if len(comp.groups) == 1:
        parts = [format_table(comp.overall, max_params)]
    else:
        parts = [f"[{label}] {format_table(g, max_params)}" for label, g in comp.groups.items()]
        parts.append(_groups_summary(comp))
    spread = format_sweep_spread(comp)
    if spread:
        parts.append(spread)
    return "\n\n".join(parts)


def _groups_summary(comp: Comparison) -> str:
    ref = ", ".join(f"{o.name}={r:g}" for o, r in zip(comp.objectives, comp.reference))
    width = max(len(label) for label in [*comp.groups, "(all pooled)"])
    lines = [f"{len(comp.groups)} fronts by {comp.group_by}, hypervolume w.r.t. the shared reference ({ref}):"]
    for label, g in comp.groups.items():
        n = int(g.trials["feasible"].sum())
        lines.append(f"  {label.ljust(width)}  hypervolume {g.hypervolume:.6g}  front {len(g.front)} of {n} feasible")
    pooled = comp.overall
    lines.append(f"  {'(all pooled)'.ljust(width)}  hypervolume {pooled.hypervolume:.6g}  front {len(pooled.front)}")
    return "\n".join(lines)


def format_sweep_spread(comp: Comparison) -> str:
    """`hypervolume over N sweeps of 'exp': mean .., std .. (sample, ddof=1), min .., max ..`,
    one line per experiment with two sweeps or more ("" if none has)."""
    lines = []
    for experiment, s in comp.sweep_stats().items():
        if s["n"] < 2:
            continue
        lines.append(
            f"hypervolume over {s['n']} sweeps of '{experiment}': mean {s['mean']:.6g}, "
            f"std {s['std']:.3g} (sample, ddof=1), min {s['min']:.6g}, max {s['max']:.6g}"
        )
    return "\n".join(lines)
