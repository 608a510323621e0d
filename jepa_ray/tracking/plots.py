"""The plots the MLflow writer logs with a trial."""

from __future__ import annotations

from pathlib import Path


def activation_plot(rates, path: Path, title: str) -> Path:
    """Bar plot of each z dimension's activation rate (fraction of test samples where it is
    non-zero), sorted: shows dead, always-on and selective units at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rates = np.sort(np.asarray(rates, dtype=float))[::-1]
    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    ax.bar(np.arange(rates.size), rates, width=1.0, color="#1f77b4")
    ax.set_xlabel("z dimension (sorted)")
    ax.set_ylabel("activation rate")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
