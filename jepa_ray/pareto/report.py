"""How a front is shown: a text table, a plot and a Parquet table."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from jepa_ray.pareto.columns import KEY_PARAMS, PARAM_PREFIX
from jepa_ray.pareto.front import ParetoResult
from jepa_ray.pareto.objectives import Objective


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


def write_plot(result: ParetoResult, path: str | os.PathLike) -> Path:
    """PNG of the objective space: every trial with finite objectives in grey (hollow if a filter
    excluded it), the front highlighted (connected in 2-D), the knee starred, the hypervolume
    and reference in the title. k > 2 objectives: one panel per pair of objectives."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pairs = _panel_pairs(len(result.objectives))
    fig = Figure(figsize=(6.4 * len(pairs), 4.8), dpi=120)
    FigureCanvasAgg(fig)
    for n, (xi, yi) in enumerate(pairs):
        _plot_panel(fig.add_subplot(1, len(pairs), n + 1), result, xi, yi, connect=len(result.objectives) == 2)
    ref = ", ".join(f"{o.name}={r:g}" for o, r in zip(result.objectives, result.reference))
    fig.suptitle(
        f"{result.experiment or 'Pareto front'}: {len(result.front)} Pareto-optimal of "
        f"{int(result.trials['feasible'].sum())} feasible trials\n"
        f"hypervolume {result.hypervolume:.4g} (reference {ref})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


def _panel_pairs(k: int) -> list[tuple[int, int]]:
    """(x, y) objective indices per panel; 2-D puts the second objective (l0 density by
    default) on x and the first (accuracy) on y."""
    if k == 1:
        return [(0, 0)]
    if k == 2:
        return [(1, 0)]
    return [(j, i) for i in range(k) for j in range(i + 1, k)]


def _plot_panel(ax, result: ParetoResult, xi: int, yi: int, connect: bool) -> None:
    ox, oy = result.objectives[xi], result.objectives[yi]
    trials, front = result.trials, result.front
    finite = np.isfinite(trials[[ox.column, oy.column]].to_numpy(dtype=float)).all(axis=1)
    kept = trials[finite & trials["feasible"].to_numpy()]
    dropped = trials[finite & ~trials["feasible"].to_numpy()]
    ax.scatter(kept[ox.column], kept[oy.column], s=14, c="0.6", label=f"trials ({len(kept)})", zorder=1)
    if len(dropped):
        ax.scatter(
            dropped[ox.column],
            dropped[oy.column],
            s=14,
            facecolors="none",
            edgecolors="0.75",
            label=f"filtered out ({len(dropped)})",
            zorder=1,
        )
    fx, fy = front[ox.column].to_numpy(dtype=float), front[oy.column].to_numpy(dtype=float)
    if connect:
        order = np.argsort(fx, kind="stable")
        ax.plot(fx[order], fy[order], "-", c="tab:red", lw=1.2, zorder=2)
    ax.scatter(
        fx, fy, s=30, c="tab:red", edgecolors="k", linewidths=0.5, label=f"Pareto front ({len(front)})", zorder=3
    )
    knee = front["knee"].to_numpy()
    ax.scatter(fx[knee], fy[knee], s=220, marker="*", c="gold", edgecolors="k", label="knee", zorder=4)
    ax.set_xlabel(_axis_label(ox))
    ax.set_ylabel(_axis_label(oy))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _axis_label(obj: Objective) -> str:
    return f"{obj.name} ({'maximize ↑' if obj.direction == 'max' else 'minimize ↓'})"
