"""What a curve table shows: the sparsity-accuracy front of the configurations it holds (a plot),
the noise floor (the spread over seeds of the configurations recorded with several), how well each
per-epoch signal at each epoch ranks the final objectives (Spearman), how long it took to record,
and (with --random-init) the best row against the same encoder at random initialization.

    python benchmarks/table.py benchmarks/curves/cifar10-cpu.parquet --plot docs/img/front-cifar10.png \\
        --random-init ../shared/data/cifar10
    python benchmarks/table.py benchmarks/curves/digits.parquet

Prints one JSON line per figure (docs/design.md format).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIGNALS = {
    "linear_acc": ("online/linear_acc", "online/linear_acc_z"),
    "linear_acc_z": ("online/linear_acc_z",),
    "l0_density": ("train/l0_density",),
}


def emit(case: str, metric: str, value, **extra) -> None:
    row = {"bench": "table", "case": case, "metric": metric, "value": value, "device": "cpu", **extra}
    print(json.dumps(row), flush=True)


def main() -> None:
    from scipy import stats

    from jepa_ray import pareto
    from jepa_ray.curves.table import canonical
    from jepa_ray.pareto.dominance import non_dominated
    from jepa_ray.replay.methods import attainable
    from jepa_ray.replay.tables import Replay

    p = argparse.ArgumentParser()
    p.add_argument("table")
    p.add_argument("--plot", help="the front (every configuration, the front highlighted) to this PNG")
    p.add_argument("--random-init", metavar="DATA_DIR", help="evaluate the encoder at random init on this data")
    p.add_argument("--epochs", default="1,3,6,9", help="epochs at which to rank the signals")
    args = p.parse_args()
    replay = Replay.open(args.table, [])
    table = replay.table
    objectives = pareto.parse_objectives("linear_acc:max,l0_density:min")
    name = Path(args.table).name

    hours = sum(r.wall_s for r in table) / 3600
    finished = [r for r in table if r.finished]
    emit(f"{name}: rows, of them finished", "rows", len(table), finished=len(finished))
    emit(f"{name}: trial-hours of recording (wall time of each trial, summed)", "hours", round(hours, 2))

    # The front of the configurations (lowest seed), without and with the collapse guard.
    rows = replay.front_rows()
    values = np.array([[r.final["linear_acc"], r.final["l0_density"]] for r in rows])
    mask = non_dominated(values, ["max", "min"])
    for r, keep in sorted(zip(rows, mask), key=lambda x: x[0].final["l0_density"]):
        if keep:
            emit(
                f"{name}: front point {json.dumps(r.params)}",
                "linear_acc",
                round(r.final["linear_acc"], 4),
                l0_density=round(r.final["l0_density"], 4),
                target_l0_density=round(r.final["target_l0_density"], 4),
                knn_acc=round(r.final["knn_acc"], 4),
            )
    points, best = attainable(replay, objectives)
    emit(f"{name}: hypervolume of every configuration a guarded sweep finishes", "hypervolume", round(best, 5))

    # The noise floor: configurations recorded with several seeds.
    spreads = {"linear_acc": [], "l0_density": []}
    for params in {canonical(r.params): r.params for r in table}.values():
        seeds = [r for r in table.seeds(params) if r.finished]
        if len(seeds) < 2:
            continue
        for metric in spreads:
            v = [r.final[metric] for r in seeds]
            spreads[metric].append(max(v) - min(v))
            emit(
                f"{name}: seeds of {json.dumps(params)}: {metric}",
                metric,
                round(statistics.mean(v), 4),
                std=round(statistics.stdev(v), 4),
                range=round(max(v) - min(v), 4),
                per_seed=[round(x, 4) for x in v],
            )
    for metric, s in spreads.items():
        if s:
            emit(f"{name}: noise floor, mean range over seeds of {metric}", metric, round(statistics.mean(s), 4))

    # Rank correlations of each signal at each epoch with the final objectives.
    for objective, signals in SIGNALS.items():
        for signal in signals:
            for epoch in (int(e) for e in args.epochs.split(",")):
                pairs = [(r.history[epoch - 1][signal], r.final[objective]) for r in rows if len(r.history) >= epoch]
                if len(pairs) >= 4:
                    rho = stats.spearmanr(*zip(*pairs)).statistic
                    emit(f"{name}: Spearman({signal} at epoch {epoch}, final {objective})", "spearman", round(rho, 3))

    if args.random_init:
        random_init(replay, args.random_init, name)
    if args.plot:
        plot(rows, mask, args.plot, name)


def random_init(replay, data_dir: str, name: str) -> None:
    """The best row's linear_acc against its encoder at random initialization (the quality
    benchmark's evaluation: fit's final evaluation of the weights fit starts from)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality import random_init_metrics

    from jepa_ray import config as config_lib

    best = max((r for r in replay.table if r.finished), key=lambda r: r.final["linear_acc"])
    cfg = config_lib.from_dict(best.config)
    cfg = config_lib.resolve(config_lib.apply_overrides(cfg, {"data_dir": data_dir}))
    untrained = random_init_metrics(cfg)
    for metric in ("linear_acc", "knn_acc"):
        emit(
            f"{name}: best row {json.dumps(best.params)} seed {best.seed} vs its random init: {metric}",
            metric,
            round(best.final[metric], 4),
            baseline=round(untrained[metric], 4),
            gain_points=round(100 * (best.final[metric] - untrained[metric]), 2),
        )


def plot(rows, mask, path: str, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4), dpi=110)
    p_values = sorted({r.params.get("p") for r in rows})
    markers = dict(zip(p_values, "o^sDv"))
    lambdas = sorted({r.params.get("lambd") for r in rows})
    cmap = plt.get_cmap("viridis")
    for r, keep in zip(rows, mask):
        color = cmap(lambdas.index(r.params.get("lambd")) / max(len(lambdas) - 1, 1))
        ax.scatter(
            r.final["l0_density"],
            r.final["linear_acc"],
            marker=markers.get(r.params.get("p"), "o"),
            s=46 if keep else 22,
            color=color,
            edgecolor="k" if keep else "none",
            alpha=1.0 if keep else 0.55,
        )
    front = sorted((r.final["l0_density"], r.final["linear_acc"]) for r, keep in zip(rows, mask) if keep)
    ax.step([x for x, _ in front], [y for _, y in front], where="post", color="k", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("l0 density of z (test split)")
    ax.set_ylabel("linear-probe accuracy (backbone)")
    ax.set_title(f"{name}: every configuration, the front outlined")
    for p_value, m in markers.items():
        ax.scatter([], [], marker=m, color="0.5", label=f"p = {p_value:g}")
    for i, lam in enumerate(lambdas):
        ax.scatter([], [], marker="s", color=cmap(i / max(len(lambdas) - 1, 1)), label=f"λ = {lam:.3g}")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    emit(f"plot written to {path}", "file", None)


if __name__ == "__main__":
    main()
