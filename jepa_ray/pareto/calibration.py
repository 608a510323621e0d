"""The ℓ0 calibration plot: each trial's measured ℓ0 density of z (final metric `l0_density`)
against its target's closed-form density (`target_l0_density`), with the y = x line. It shows at
a glance how well the target density (the ℓ0 knob, set by μ and p) sets the sparsity the
encoder reaches: points on the line hit their target, below it are sparser than asked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from jepa_ray.pareto.comparison import Comparison
from jepa_ray.pareto.front import ParetoResult
from jepa_ray.pareto.plot import MEASURED, TARGET, as_comparison, axis_limits, check_l0_scale, group_colors, use_log

CALIBRATION_COLUMNS = ("run_id", "trial_id", "experiment", "sweep_run_id", "group", "target", "measured", "on_front")


def calibration_data(result: ParetoResult | Comparison) -> pd.DataFrame:
    """One row per trial with a finite target and measured ℓ0 density (filtered-out trials
    included: the knob is about every trial): CALIBRATION_COLUMNS, `on_front` meaning on its
    group's front. Empty when the runs record no `target_l0_density`."""
    comp = as_comparison(result)
    trials = comp.overall.trials
    if TARGET not in trials.columns or MEASURED not in trials.columns:
        return pd.DataFrame(columns=list(CALIBRATION_COLUMNS))
    target, measured = (trials[c].to_numpy(dtype=float) for c in (TARGET, MEASURED))
    keep = np.isfinite(target) & np.isfinite(measured)
    label = next(iter(comp.groups))
    data = pd.DataFrame(
        {
            "run_id": trials["run_id"].to_numpy()[keep],
            "trial_id": trials["trial_id"].to_numpy()[keep],
            "experiment": trials["experiment"].to_numpy()[keep] if "experiment" in trials else None,
            "sweep_run_id": trials["sweep_run_id"].to_numpy()[keep],
            "group": trials["group"].to_numpy()[keep] if "group" in trials else label,
            "target": target[keep],
            "measured": measured[keep],
        }
    )
    data["on_front"] = data["run_id"].isin(set(comp.front()["run_id"]))
    return data.reset_index(drop=True)


def write_calibration_plot(
    result: ParetoResult | Comparison, path: str | os.PathLike, *, l0_scale: str = "auto"
) -> Path | None:
    """PNG of measured against target ℓ0 density over the trials (front points outlined, one
    colour per group), with y = x and both axes on one scale (log when the values span a
    decade, with l0_scale auto); None (nothing written) without calibration data."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    check_l0_scale(l0_scale)
    comp = as_comparison(result)
    data = calibration_data(comp)
    if data.empty:
        return None
    fig = Figure(figsize=(5.6, 5.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    _draw_points(ax, data, comp)
    both = np.r_[data["target"].to_numpy(dtype=float), data["measured"].to_numpy(dtype=float)]
    log = use_log(both, l0_scale)
    if log:
        ax.set_xscale("log", nonpositive="mask")
        ax.set_yscale("log", nonpositive="mask")
    lo, hi = axis_limits(both, log) or (0.0, 1.0)
    ax.plot([lo, hi], [lo, hi], "--", c="0.3", lw=1, label="measured = target (below: sparser)", zorder=1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    scale = " (log scale)" if log else ""
    ax.set_xlabel(f"target ℓ0 density (closed form, target_l0_density){scale}")
    ax.set_ylabel(f"measured ℓ0 density of z (l0_density, test split){scale}")
    ax.set_title(f"ℓ0 calibration over {len(data)} trials\n{_ratio_text(data)}", fontsize=9)
    ax.grid(alpha=0.3, which="both", lw=0.5)
    ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


def _draw_points(ax, data: pd.DataFrame, comp: Comparison) -> None:
    """One colour per group (one group: grey trials, red front points), front points outlined."""
    multi = len(comp.groups) > 1
    colors = group_colors(comp)
    for group in [*comp.groups, *sorted(set(data["group"]) - set(comp.groups))]:
        part = data[data["group"] == group]
        color = colors.get(group, "0.45")
        rest, front = part[~part["on_front"]], part[part["on_front"]]
        name = f"{group}: " if multi else ""
        if len(rest):
            c = color if multi else "0.5"
            ax.scatter(rest["target"], rest["measured"], s=14, c=c, alpha=0.45, lw=0, label=f"{name}trials")
        if len(front):
            ax.scatter(front["target"], front["measured"], s=26, c=color, ec="k", lw=0.6, label=f"{name}on front")


def _ratio_text(data: pd.DataFrame) -> str:
    """The median measured/target ratio over the sparse targets (0 < target < 1: a dense
    target, such as LeJEPA's Gaussian, sets no density)."""
    sparse = data[(data["target"] > 0) & (data["target"] < 1)]
    if sparse.empty:
        return "no sparse target (density 1: nothing to calibrate)"
    ratio = float(np.median(sparse["measured"] / sparse["target"]))
    return f"median measured / target {ratio:.3g} over {len(sparse)} sparse targets"
