"""The plots of a front, or of several fronts compared: the objective space with each front drawn
as a staircase (the boundary of the region it dominates, which straight segments would overstate),
dominated trials faint, the knee starred and front points labelled with their key params; and the
ℓ0 calibration plot (measured against target density over the trials: the ℓ0 knob at a glance)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from jepa_ray.errors import UsageError
from jepa_ray.pareto.columns import METRIC_PREFIX, PARAM_PREFIX
from jepa_ray.pareto.comparison import Comparison, single
from jepa_ray.pareto.front import ParetoResult
from jepa_ray.pareto.objectives import Objective

L0_SCALES = ("auto", "log", "linear")
"""auto: log when the plotted ℓ0 values are positive and span at least a decade, else linear."""
LABEL_PARAMS = ("mu", "p", "lambd", "target_density", "num_slices", "proj_dims")
"""The params a front point's label may show: the first three that vary over the fronts."""
SYMBOLS = {"mu": "μ", "lambd": "λ", "target_density": "ρ*", "num_slices": "N", "proj_dims": "proj"}
CALIBRATION_FILE = "l0_calibration.png"
TARGET, MEASURED = METRIC_PREFIX + "target_l0_density", METRIC_PREFIX + "l0_density"
_SINGLE_FRONT, _TRIALS = "tab:red", "0.55"
# Label positions tried in turn (offset in points, alignment), nearest first.
_OFFSETS = [(5, 4, "left", "bottom"), (5, -4, "left", "top"), (-5, 4, "right", "bottom"), (-5, -4, "right", "top")]
_OFFSETS += [(0, 9, "center", "bottom"), (0, -9, "center", "top"), (9, 0, "left", "center"), (-9, 0, "right", "center")]
_OFFSETS += [(12, 14, "left", "bottom"), (12, -14, "left", "top"), (-12, 14, "right", "bottom")]


def as_comparison(result: ParetoResult | Comparison) -> Comparison:
    """A comparison as it is, a single front as a one-group comparison."""
    return result if isinstance(result, Comparison) else single(result)


def check_l0_scale(scale: str) -> str:
    """The scale if allowed; a one-line UsageError naming it otherwise."""
    if scale not in L0_SCALES:
        raise UsageError(f"--l0-scale {scale!r} is not allowed; allowed: {', '.join(L0_SCALES)}")
    return scale


def is_l0(obj: Objective) -> bool:
    """Whether an objective is a density (the axis the ℓ0 scale applies to)."""
    return "l0" in obj.name.lower() or "density" in obj.name.lower()


def write_plot(
    result: ParetoResult | Comparison, path: str | os.PathLike, *, l0_scale: str = "auto", labels: bool = True
) -> Path:
    """PNG of the objective space: each group's front (one colour per group; one group: red
    over grey trials) as a staircase with its dominated region shaded, its dominated trials
    faint, filtered-out trials hollow, its knee starred, front points labelled with their key
    params (labels that would overlap are left out), the hypervolumes at the shared reference
    in the legend and title. k > 2 objectives: one panel per pair, points only."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    comp = as_comparison(result)
    check_l0_scale(l0_scale)
    pairs = _panel_pairs(len(comp.objectives))
    fig = Figure(figsize=(7.2 * len(pairs), 5.4), dpi=120)
    canvas = FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, len(pairs), n + 1) for n in range(len(pairs))]
    for ax, (xi, yi) in zip(axes, pairs):
        _plot_panel(ax, comp, xi, yi, staircase=len(comp.objectives) == 2, l0_scale=l0_scale)
    fig.suptitle(_title(comp), fontsize=10)
    fig.tight_layout()
    if labels:
        for ax, (xi, yi) in zip(axes, pairs):
            _label_front(ax, comp, xi, yi, canvas.get_renderer())
    fig.savefig(path, format="png")
    return Path(path)


def _title(comp: Comparison) -> str:
    ref = ", ".join(f"{o.name}={r:g}" for o, r in zip(comp.objectives, comp.reference))
    overall = comp.overall
    if len(comp.groups) == 1:
        head = f"{overall.experiment or 'Pareto front'}: {len(overall.front)} Pareto-optimal of "
        head += f"{int(overall.trials['feasible'].sum())} feasible trials"
        return f"{head}\nhypervolume {overall.hypervolume:.4g} (reference {ref})"
    return f"{len(comp.groups)} fronts by {comp.group_by}, hypervolumes at one reference ({ref})"


def _panel_pairs(k: int) -> list[tuple[int, int]]:
    """(x, y) objective indices per panel; 2-D puts the second objective (l0 density by
    default) on x and the first (accuracy) on y."""
    if k == 1:
        return [(0, 0)]
    if k == 2:
        return [(1, 0)]
    return [(j, i) for i in range(k) for j in range(i + 1, k)]


def group_colors(comp: Comparison) -> dict[str, str]:
    """One colour per group (red for a single front)."""
    if len(comp.groups) == 1:
        return {label: _SINGLE_FRONT for label in comp.groups}
    cycle = [f"C{i}" for i in range(10)]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(comp.groups)}


def _plot_panel(ax, comp: Comparison, xi: int, yi: int, *, staircase: bool, l0_scale: str) -> None:
    ox, oy = comp.objectives[xi], comp.objectives[yi]
    multi = len(comp.groups) > 1
    for (label, group), color in zip(comp.groups.items(), group_colors(comp).values()):
        _draw_trials(ax, group, ox, oy, color if multi else _TRIALS, multi)
        name = f"{label}: " if multi else "Pareto front "
        legend = f"{name}{len(group.front)} of {int(group.trials['feasible'].sum())}, HV {group.hypervolume:.4g}"
        legend += _seed_spread(comp, label)
        fx, fy = (group.front[o.column].to_numpy(dtype=float) for o in (ox, oy))
        if staircase:
            _draw_staircase(ax, fx, fy, ox, oy, (comp.reference[xi], comp.reference[yi]), color)
        ax.scatter(fx, fy, s=30, c=color, edgecolors="k", linewidths=0.5, label=legend, zorder=3)
        knee = group.front["knee"].to_numpy(dtype=bool)
        ax.scatter(fx[knee], fy[knee], s=200, marker="*", c="gold" if not multi else color, edgecolors="k", zorder=4)
    ax.scatter([], [], s=120, marker="*", c="gold" if not multi else "w", edgecolors="k", label="knee")
    _set_axes(ax, comp, ox, oy, l0_scale)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)


def _seed_spread(comp: Comparison, label: str) -> str:
    """`; per sweep 0.90 ± 0.03 (n=3)` (mean ± sample std of the per-sweep hypervolume) for a
    group of several sweeps, else ""."""
    sweeps = comp.sweeps[comp.sweeps["group"] == label]
    if len(sweeps) < 2:
        return ""
    hv = sweeps["hypervolume"].to_numpy(dtype=float)
    return f"; per sweep {hv.mean():.3g} ± {hv.std(ddof=1):.2g} (n={len(hv)})"


def _draw_trials(ax, group: ParetoResult, ox: Objective, oy: Objective, color: str, multi: bool) -> None:
    """The group's dominated feasible trials faint, its filtered-out ones hollow."""
    trials = group.trials
    xy = trials[[ox.column, oy.column]].to_numpy(dtype=float)
    finite = np.isfinite(xy).all(axis=1)
    feasible = trials["feasible"].to_numpy(dtype=bool)
    dominated = finite & feasible & (trials["front_rank"].fillna(0).to_numpy() != 1)
    dropped = finite & ~feasible
    label = None if multi else f"dominated trials ({int(dominated.sum())})"
    ax.scatter(xy[dominated, 0], xy[dominated, 1], s=12, c=color, alpha=0.3, linewidths=0, label=label, zorder=1)
    if dropped.any():
        label = None if multi else f"filtered out ({int(dropped.sum())})"
        ax.scatter(
            xy[dropped, 0], xy[dropped, 1], s=12, facecolors="none", edgecolors=color, alpha=0.3, label=label, zorder=1
        )


def staircase(
    fx: np.ndarray, fy: np.ndarray, ox: Objective, oy: Objective, reference: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """The boundary of the region the front points dominate, from the reference's level in y
    up to the first point, step by step through the others, out to the reference's level in x
    (points not strictly better than the reference in both objectives are left out)."""
    sx, sy = ox.sign, oy.sign
    m = np.column_stack([fx * sx, fy * sy])
    rx, ry = reference[0] * sx, reference[1] * sy
    m = m[(m[:, 0] < rx) & (m[:, 1] < ry)]
    if len(m) == 0:
        return np.empty(0), np.empty(0)
    m = m[np.lexsort((m[:, 1], m[:, 0]))]
    nxt = np.r_[m[1:, 0], rx]
    xs = np.r_[m[0, 0], np.column_stack([m[:, 0], nxt]).ravel()]
    ys = np.r_[ry, np.repeat(m[:, 1], 2)]
    return xs * sx, ys * sy


def _draw_staircase(
    ax, fx: np.ndarray, fy: np.ndarray, ox: Objective, oy: Objective, reference: tuple[float, float], color: str
) -> None:
    """The staircase as a line and the region it bounds (up to the reference) lightly shaded."""
    xs, ys = staircase(fx, fy, ox, oy, reference)
    if len(xs) == 0:
        return
    ax.plot(xs, ys, "-", c=color, lw=1.3, zorder=2)
    ax.fill(np.r_[xs, reference[0]], np.r_[ys, reference[1]], color=color, alpha=0.07, lw=0, zorder=0)


def use_log(values: np.ndarray, scale: str) -> bool:
    """Whether an ℓ0 axis over these values is drawn on a log scale (see L0_SCALES)."""
    values = values[np.isfinite(values)]
    if scale != "auto":
        return scale == "log"
    return bool(len(values)) and bool((values > 0).all()) and values.max() >= 10 * values.min()


def axis_limits(values: np.ndarray, log: bool) -> tuple[float, float] | None:
    """Data range with a 5% margin (multiplicative on a log axis); None without data."""
    values = values[np.isfinite(values) & ((values > 0) if log else True)]
    if not len(values):
        return None
    lo, hi = float(values.min()), float(values.max())
    if log:
        pad = max(hi / lo, 1.5) ** 0.05
        return lo / pad, hi * pad
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
    return lo - pad, hi + pad


def _set_axes(ax, comp: Comparison, ox: Objective, oy: Objective, l0_scale: str) -> None:
    """Scales (log on an ℓ0 axis where chosen), limits around the data (the staircases run on
    to the reference point beyond them), labels and grid."""
    trials = comp.overall.trials
    for obj, set_scale, set_lim, set_label in (
        (ox, ax.set_xscale, ax.set_xlim, ax.set_xlabel),
        (oy, ax.set_yscale, ax.set_ylim, ax.set_ylabel),
    ):
        values = trials[obj.column].to_numpy(dtype=float)
        log = is_l0(obj) and use_log(values, l0_scale)
        if log:
            set_scale("log", nonpositive="mask")
            hidden = int((values <= 0).sum())
            if hidden:
                ax.text(0.01, 0.01, f"{hidden} trials with {obj.name} <= 0 not shown (log axis)", fontsize=6,
                        transform=ax.transAxes, color="0.4")  # fmt: skip
        limits = axis_limits(values, log)
        if limits:
            set_lim(*limits)
        set_label(_axis_label(obj) + (" (log scale)" if log else ""))
    ax.grid(alpha=0.3, which="both" if l0_scale != "linear" else "major", lw=0.5)


def _axis_label(obj: Objective) -> str:
    return f"{obj.name} ({'maximize ↑' if obj.direction == 'max' else 'minimize ↓'})"


def label_params(front: pd.DataFrame) -> list[str]:
    """Up to three LABEL_PARAMS that vary over a group's front points (two present ones if none
    vary: a label that repeats on every point says nothing)."""
    present = [p for p in LABEL_PARAMS if PARAM_PREFIX + p in front.columns and front[PARAM_PREFIX + p].notna().any()]
    varying = [p for p in present if front[PARAM_PREFIX + p].astype(str).nunique() > 1]
    return (varying or present[:2])[:3]


def point_label(row: pd.Series, params: list[str]) -> str:
    """Short text of a point's params, e.g. `μ=-1.2 p=0.5 λ=0.71`."""
    parts = []
    for p in params:
        value = row.get(PARAM_PREFIX + p)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        parts.append(f"{SYMBOLS.get(p, p)}={_short(value)}")
    return " ".join(parts)


def _short(value) -> str:
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer() and abs(value) >= 10):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value + 0.0:.2g}"
    return str(value)


def _label_front(ax, comp: Comparison, xi: int, yi: int, renderer) -> None:
    """Label each front point with its key params at the first nearby spot where the label
    stays inside the axes and clear of the markers, the legend and the labels already placed."""
    ox, oy = comp.objectives[xi], comp.objectives[yi]
    colors = group_colors(comp).values() if len(comp.groups) > 1 else ["0.15"]
    fronts = [(color, g.front) for color, g in zip(colors, comp.groups.values())]
    frame = ax.get_window_extent(renderer)
    taken = [_marker_box(ax, x, y) for _, f in fronts for x, y in zip(f[ox.column], f[oy.column])]
    if ax.get_legend() is not None:
        taken.append(ax.get_legend().get_window_extent(renderer))
    for color, front in fronts:
        params = label_params(front)
        for _, row in front.sort_values(ox.column).iterrows():
            x, y = float(row[ox.column]), float(row[oy.column])
            text = point_label(row, params)
            if text and np.isfinite([x, y]).all():
                _place_label(ax, text, (x, y), color, frame, taken, renderer)


def _marker_box(ax, x: float, y: float, half: float = 4.0):
    from matplotlib.transforms import Bbox

    px, py = ax.transData.transform((x, y))
    return Bbox.from_extents(px - half, py - half, px + half, py + half)


def _place_label(ax, text: str, xy: tuple[float, float], color: str, frame, taken: list, renderer) -> bool:
    for dx, dy, ha, va in _OFFSETS:
        ann = ax.annotate(
            text,
            xy,
            xytext=(dx, dy),
            textcoords="offset points",
            fontsize=6.5,
            ha=ha,
            va=va,
            color=color,
            zorder=5,
            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75},
        )
        box = ann.get_window_extent(renderer)
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        if inside and not any(box.overlaps(t) for t in taken):
            taken.append(box)
            return True
        ann.remove()
    return False
