"""The plots the MLflow writer logs with a trial."""

from __future__ import annotations

import math
from pathlib import Path


def activation_plot(rates, path: Path, title: str, target_density: float | None = None) -> Path:
    """Bar plot of each z dimension's activation rate (fraction of test samples where it is
    non-zero), sorted: shows dead, always-on and selective units at a glance. The mean rate
    (the measured ℓ0 density of z) is drawn as a dotted line and, when given, the target's
    closed-form ℓ0 density (`target_l0_density`) as a dashed one, so a glance tells whether
    the representation reaches the sparsity its target asks for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rates = np.sort(np.asarray(rates, dtype=float))[::-1]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    # One filled step outline, not a bar per dimension: the same picture, while thousands of bar
    # patches cost the writer, which serves the whole sweep, seconds per trial (7 s at 8,192).
    ax.stairs(rates, np.arange(rates.size + 1) - 0.5, fill=True, color="#1f77b4", label="activation rate")
    if rates.size:
        dead, always = int((rates == 0).sum()), int((rates == 1).sum())
        ax.axhline(rates.mean(), color="0.2", ls=":", lw=1.4, label=f"mean = measured ℓ0 density {rates.mean():.3g}")
        ax.text(0.99, 0.97, f"{dead} dead, {always} always on, of {rates.size}", transform=ax.transAxes,
                ha="right", va="top", fontsize=8, color="0.3")  # fmt: skip
    if target_density is not None and math.isfinite(target_density):
        ax.axhline(target_density, color="tab:red", ls="--", lw=1.4, label=f"target ℓ0 density {target_density:.3g}")
    ax.set_xlabel("z dimension (sorted by activation rate)")
    ax.set_ylabel("activation rate")
    ax.set_xlim(-0.5, max(rates.size, 1) - 0.5)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 0.9), framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
