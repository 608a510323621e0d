"""Input-path speed: the streaming path (jepa_ray.data.stream: decode in DataLoader workers)
against the in-memory path (decode once, gather per step) on the same images and views.

    python benchmarks/data.py                      # CIFAR scale (the shared parquet if present) + 224 px decode
    python benchmarks/data.py --images 4000 --workers 1 --quick

Figures (one JSON line each, docs/design.md format):
- pipeline views/s, streaming (augmented on the training process, or in the data workers) vs in
  memory, at CIFAR scale (32 px, batch 256, 2 views);
- trainer img/s of `fit` (epoch 2, after the workers start) streaming vs in memory, the model
  training in the same process: the figure that says whether streaming keeps a model fed;
- decoded images/s per core at 224 px (JPEG decode, RGB, shorter side to 224, center crop) in
  one process, and over `--workers` DataLoader processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jepa_ray import config as config_lib  # noqa: E402
from jepa_ray.config import DataConfig  # noqa: E402
from jepa_ray.data import BatchIterator, ViewMaker, load_dataset  # noqa: E402
from jepa_ray.data import stream as S  # noqa: E402
from jepa_ray.seeding import STREAM_AUGMENT, step_generator  # noqa: E402

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "train.parquet"


def emit(case: str, metric: str, value: float, baseline: float | None = None, **extra) -> None:
    row = {"bench": "data", "case": case, "metric": metric, "value": round(value, 3)}
    if baseline is not None:
        row.update(baseline=round(baseline, 3), ratio=round(value / baseline, 4))
    row["device"] = "cpu"
    row.update(extra)
    print(json.dumps(row), flush=True)


def _save_jpeg(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path, format="JPEG", quality=90)


def write_cifar_folder(root: Path, count: int) -> str:
    """An image folder of `count` 32 px JPEGs: the shared CIFAR-10 parquet's own bytes when it is
    there (10 classes, stratified order), else random images. Returns where they came from."""
    per_split = {"train": count, "test": max(count // 5, 10)}
    if SHARED_CIFAR.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(SHARED_CIFAR).slice(0, sum(per_split.values()))
        blobs, labels = table.column("image").to_pylist(), table.column("label").to_pylist()
        offset = 0
        for split, n in per_split.items():
            for i in range(offset, offset + n):
                folder = root / split / f"c{labels[i]}"
                folder.mkdir(parents=True, exist_ok=True)
                blob = blobs[i]["bytes"] if isinstance(blobs[i], dict) else blobs[i]
                (folder / f"{i:06d}.jpg").write_bytes(blob)
            offset += n
        return "cifar10 parquet"
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for i in range(n):
            folder = root / split / f"c{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            _save_jpeg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), folder / f"{i:06d}.jpg")
    return "synthetic"


def views_per_s_memory(cfg: DataConfig, views: ViewMaker, batch: int, steps: int) -> float:
    splits = load_dataset(cfg)
    it = BatchIterator(len(splits.train_y), batch, seed=0)
    idx = list(it)[:steps]
    t0 = time.perf_counter()
    for step, rows in enumerate(idx):
        views(splits.train_x[rows], step_generator("cpu", 0, step, STREAM_AUGMENT))
    return steps * batch * views.total_views / (time.perf_counter() - t0)


def views_per_s_stream(cfg: DataConfig, views: ViewMaker, batch: int, steps: int, in_workers: bool) -> float:
    splits = S.open_stream(cfg)
    it = BatchIterator(len(splits.train), batch, seed=0)
    augment = S.WorkerAugment(views, 0, len(it), 0, batch) if in_workers else None
    loader = S.make_loader(S.TrainBatches(splits.train, splits.side, it, augment), cfg, sampler=S.EpochSteps(steps))
    batches = iter(loader)
    first = next(batches)  # the workers' start is not the pipeline's rate
    del first
    t0 = time.perf_counter()
    for step, b in enumerate(batches, start=1):
        if not in_workers:
            views(b["x"], step_generator("cpu", 0, step, STREAM_AUGMENT))
    return (steps - 1) * batch * views.total_views / (time.perf_counter() - t0)


def fit_img_per_s(root: Path, stream: str, workers: int, augment: str, backbone: str) -> tuple[float, float]:
    """img/s of the trainer's second epoch (`fit`, one process, one intra-op thread) and the
    final evaluation's seconds per 10k images (features of both splits, probes, kNN)."""
    from jepa_ray.train import LocalReporter, fit

    overrides = {
        "dataset": "imagefolder",
        "data_dir": str(root),
        "image_size": 32,
        "stream": stream,
        "data_workers": workers,
        "stream_augment": augment,
        "backbone": backbone,
        "epochs": 2,
        "batch_size": 256,
        "num_slices": 256,
        "proj_dims": "256-256",
        "probe_epochs": 1,
        "collapse_guard": False,
        "max_train_samples": 0,
    }
    cfg = config_lib.resolve(config_lib.apply_overrides(config_lib.preset("smoke"), overrides))
    rates: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        final = fit(cfg, LocalReporter(Path(out)), on_epoch=lambda m: rates.append(m["throughput/img_per_s"]))
    return rates[-1], final["time/eval_s_per_10k"]


def write_large_jpegs(root: Path, count: int) -> None:
    """ImageNet-like JPEGs: 500 x 375, smooth content (random noise would not compress like photos)."""
    rng = np.random.default_rng(1)
    folder = root / "c0"
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(count):
        f = rng.uniform(0.005, 0.05, 3)
        arr = np.stack([127 + 120 * np.sin(xx * f[c] + yy * f[(c + 1) % 3] + i) for c in range(3)], -1)
        arr = arr + rng.normal(0, 8, arr.shape)
        _save_jpeg(np.clip(arr, 0, 255).astype(np.uint8), folder / f"{i:05d}.jpg")


def decode_224(root: Path, count: int, workers: int) -> None:
    write_large_jpegs(root, count)
    cfg = DataConfig(dataset="imagefolder", data_dir=str(root), image_size=224, data_workers=workers)
    train, _, _ = S.imagefolder_sources(root)
    torch.set_num_threads(1)
    S.read_rows(train, torch.arange(min(8, count)), 224)  # warm
    t0 = time.perf_counter()
    S.read_rows(train, torch.arange(count), 224)
    one = count / (time.perf_counter() - t0)
    emit("decode jpeg 500x375 -> 224 px, 1 process", "img_per_s_per_core", one)
    if workers:
        rows = torch.arange(count).repeat(2)
        loader = S.row_loader(train, 224, rows, 32, cfg, persistent=False)
        it = iter(loader)
        next(it)
        t0 = time.perf_counter()
        n = sum(len(b["y"]) for b in it)
        total = n / (time.perf_counter() - t0)
        emit(f"decode jpeg 500x375 -> 224 px, {workers} DataLoader workers", "img_per_s", total, cores=os.cpu_count())
        emit(
            f"decode jpeg 500x375 -> 224 px, {workers} DataLoader workers, per worker",
            "img_per_s_per_core",
            total / workers,
            baseline=one,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10000, help="CIFAR-scale train images")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers of the streaming path")
    ap.add_argument("--steps", type=int, default=30, help="pipeline steps of batch 256")
    ap.add_argument("--large", type=int, default=400, help="224 px JPEGs to decode")
    ap.add_argument("--backbone", default="jepa_convnet_tiny", help="model of the trainer figure")
    ap.add_argument("--quick", action="store_true", help="skip the trainer figure")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cifar"
        source = write_cifar_folder(root, args.images)
        cfg = DataConfig(dataset="imagefolder", data_dir=str(root), image_size=32, data_workers=args.workers)
        splits = load_dataset(cfg)
        view_cfg = config_lib.TrialConfig().views
        view_cfg.recipe = "cifar"
        views = ViewMaker(view_cfg, 32, splits.mean, splits.std, 3)
        steps = min(args.steps, args.images // 256)
        scale = f"{args.images} imgs 32px ({source}), batch 256, 2 views, {args.workers} workers"
        memory = views_per_s_memory(cfg, views, 256, steps)
        emit(f"pipeline in-memory, {scale}", "views_per_s", memory)
        for in_workers in (False, True):
            rate = views_per_s_stream(cfg, views, 256, steps, in_workers)
            where = "augment in workers" if in_workers else "augment in trainer"
            emit(f"pipeline streaming ({where}) vs in-memory, {scale}", "views_per_s", rate, baseline=memory)
        if not args.quick:
            base, eval_base = fit_img_per_s(root, "memory", args.workers, "device", args.backbone)
            emit(f"fit in-memory, {args.backbone}, {scale}", "img_per_s", base)
            emit(f"final evaluation in-memory, {args.backbone}, {scale}", "s_per_10k_images", eval_base)
            for augment in ("device", "workers"):
                rate, eval_s = fit_img_per_s(root, "stream", args.workers, augment, args.backbone)
                where = "augment on device" if augment == "device" else "augment in workers"
                case = f"fit streaming ({where}) vs in-memory, {args.backbone}, {scale}"
                emit(case, "img_per_s", rate, baseline=base)
                if augment == "device":
                    case = f"final evaluation streaming vs in-memory, {args.backbone}, {scale}"
                    emit(case, "s_per_10k_images", eval_s, baseline=eval_base)
        decode_224(Path(tmp) / "large", args.large, args.workers)


if __name__ == "__main__":
    main()
