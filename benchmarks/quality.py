"""Quality of one trained encoder: its linear-probe accuracy against the same encoder at
random initialization (same evaluation, same seed), and the measured l0 density of z against
the closed-form target. Default: the embedded digits with the default config (CPU, a minute).

    python benchmarks/quality.py                  # rgg, mu = -1, p = 1 (target density 0.122)
    python benchmarks/quality.py --set mu=0       # any trial-config override
    python benchmarks/quality.py --preset cifar10-resnet18 --set dataset=parquet \
        --set data_dir=DIR --set gpus_per_worker=1 --set epochs=30   # CIFAR-10 on a GPU
    python benchmarks/quality.py --mu-curve=-2,-1,0,1 --seeds 0,1   # accuracy vs target density

The mu curve trains the same config at each mu (target density from sparse to dense) and
seed, and prints the mean over seeds of each accuracy and of the measured density: the
trade-off a sweep's Pareto front is made of, without the search's other knobs.

Prints one JSON line per case (DESIGN.md format).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jepa_ray import config as config_lib  # noqa: E402
from jepa_ray.data import load_dataset  # noqa: E402
from jepa_ray.model import create_model  # noqa: E402
from jepa_ray.train import LocalReporter, Normalizer, _final_evaluation, _runtime, fit  # noqa: E402


DEVICE = "cpu"


def emit(case: str, metric: str, value: float, baseline: float | None = None, **extra) -> None:
    row = {"bench": "quality", "case": case, "metric": metric, "value": round(value, 4)}
    if baseline is not None:
        row.update(baseline=round(baseline, 4), ratio=round(value / baseline, 4) if baseline else None)
    row["device"] = DEVICE
    row.update(extra)
    print(json.dumps(row), flush=True)


def random_init_metrics(cfg) -> dict:
    """fit's final evaluation of the untrained encoder (the weights fit starts from)."""
    torch.manual_seed(cfg.system.seed)
    rt = _runtime(cfg)
    model = create_model(cfg).to(rt.device)
    splits = load_dataset(cfg.data)
    normalize = Normalizer(splits.mean, splits.std, cfg.data.image_size or splits.image_size)
    return _final_evaluation(cfg, model, splits, normalize, rt)[0]


def mu_curve(preset: str, overrides: dict, mus: list[float], seeds: list[int]) -> None:
    """Accuracy and measured density against the target density, one mu at a time."""
    for mu in mus:
        runs = []
        for seed in seeds:
            cfg = config_lib.resolve(config_lib.apply_overrides(config_lib.preset(preset),
                                                                {**overrides, "mu": mu, "seed": seed}))
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(fit(cfg, LocalReporter(Path(tmp))))
        label = (f"mu curve, {cfg.data.dataset} {cfg.model.backbone} rgg p={cfg.target.p:g} mu={mu:g} "
                 f"lambd={cfg.loss.lambd:g} {cfg.optim.epochs} epochs, target l0 {runs[0]['target_l0_density']:.3f}")
        for metric in ("linear_acc", "linear_acc_z", "knn_acc", "l0_density", "rank_me"):
            values = [r[metric] for r in runs]
            emit(label, metric, sum(values) / len(values), per_seed=[round(v, 4) for v in values])


def main() -> None:
    global DEVICE
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="digits")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--mu-curve", help="comma-separated mu values: train each instead of the default case")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the mu curve")
    args = p.parse_args()
    overrides = {"target": "rgg", "mu": -1.0, "p": 1.0, "threads_per_worker": torch.get_num_threads(),
                 **config_lib.parse_set_args(args.set)}
    cfg = config_lib.resolve(config_lib.apply_overrides(config_lib.preset(args.preset), overrides))
    if cfg.system.gpus_per_worker > 0 and torch.cuda.is_available():
        DEVICE = "cuda"
    if args.mu_curve:
        mu_curve(args.preset, overrides, config_lib.float_list(args.mu_curve),
                 [int(s) for s in args.seeds.split(",")])
        return
    label = f"{cfg.data.dataset} {cfg.model.backbone} rgg p={cfg.target.p:g} mu={cfg.target.mu:g} {cfg.optim.epochs} epochs"

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        final = fit(cfg, LocalReporter(Path(tmp)))
    seconds = time.perf_counter() - start
    untrained = random_init_metrics(cfg)

    emit(f"linear_acc trained vs random init, {label}", "accuracy", final["linear_acc"],
         untrained["linear_acc"], gain_points=round(100 * (final["linear_acc"] - untrained["linear_acc"]), 2),
         goal="gain >= 3 points", train_seconds=round(seconds, 1))
    emit(f"linear_acc_z trained vs random init, {label}", "accuracy", final["linear_acc_z"],
         untrained["linear_acc_z"])
    emit(f"l0_density of z vs closed-form target, {label}", "l0_density", final["l0_density"],
         final["target_l0_density"], abs_error=round(abs(final["l0_density"] - final["target_l0_density"]), 4),
         goal="abs_error <= 0.05")
    emit(f"knn_acc, {label}", "accuracy", final["knn_acc"], untrained["knn_acc"])


if __name__ == "__main__":
    main()
