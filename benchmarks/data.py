"""Input-path speed: the streaming path (jepa_ray.data.stream: decode in DataLoader workers)
against the in-memory path (decode once, gather per step) on the same images and views.

    python benchmarks/data.py                      # CIFAR scale (the shared parquet if present) + 224 px decode
    python benchmarks/data.py --images 4000 --workers 1 --quick
    python benchmarks/data.py --eval-memory --images 800,6400   # peak memory of a streamed trial

Figures (one JSON line each, docs/design.md format):
- pipeline views/s, streaming (augmented on the training process, or in the data workers) vs in
  memory, at CIFAR scale (32 px, batch 256, 2 views);
- trainer img/s of `fit` (epoch 2, after the workers start) streaming vs in memory, the model
  training in the same process: the figure that says whether streaming keeps a model fed;
- decoded images/s per core at 224 px (JPEG decode, RGB, shorter side to 224, center crop) in
  one process, and over `--workers` DataLoader processes;
- with `--eval-memory`: the peak memory of a one-epoch trial streamed from a synthetic 64 px image
  folder, training and final evaluation separately, at each `--images` count: PSS summed over
  the trial's processes (the trainer and its DataLoader workers, sampled every 20 ms; with the
  median of the samples and the most processes at once), and the trainer's own peak RSS (VmHWM,
  exact). What grows with the number of images is what the trial holds per image. Then the
  final evaluation's compute alone (features of a fake encoder, probes, kNN, metrics) at each
  `--feature-rows` count: exact peaks, free of the trial's noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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


def write_synthetic_folder(root: Path, count: int, side: int = 32) -> None:
    """root/{train,test}/c<k>/ of `count` train and count // 5 (at least 10) test random JPEGs of
    side x side pixels in 10 classes."""
    rng = np.random.default_rng(0)
    for split, n in {"train": count, "test": max(count // 5, 10)}.items():
        for i in range(n):
            folder = root / split / f"c{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            _save_jpeg(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), folder / f"{i:06d}.jpg")


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
    write_synthetic_folder(root, count)
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


# --------------------------------------------------------------------------------------------
# Peak memory of a streamed trial against the number of images (--eval-memory)

MEMORY_SIDE = 64
"""Side of the synthetic JPEGs and of the trial's images in the memory figure."""

MEMORY_SAMPLE_S = 0.02
"""Default seconds between two samples of the trial's PSS (its peaks last longer than this). Each
sample walks the page tables of every process of the trial (/proc/PID/smaps_rollup): at 20 ms
that is about as much kernel CPU as the trial's own; --memory-sample-s trades it for precision."""


def _tree_pids(pid: int) -> list[int]:
    """pid and every process below it (Linux: /proc/PID/task/TID/children), parents first."""
    pids, k = [pid], 0
    while k < len(pids):
        for task in Path(f"/proc/{pids[k]}/task").glob("*"):
            try:
                pids += [int(c) for c in (task / "children").read_text().split()]
            except OSError:  # the thread or the process ended
                pass
        k += 1
    return pids


def _tree_pss_kb(pid: int) -> tuple[int, int]:
    """PSS summed over pid and its descendants, in kB, and how many processes that is: pages
    shared between the trainer and its forked DataLoader workers are counted once, split between
    them (RSS would count them in each)."""
    total, count = 0, 0
    for p in _tree_pids(pid):
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
        count += 1
    return total, count


def _vm_kb(key: str) -> int:
    """A line of /proc/self/status (VmRSS:, VmHWM:), in kB."""
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))


def memory_trial_child(root: str, phase_file: str) -> None:
    """Run in the trial's own process: a one-epoch default trial streamed from `root` at 64 px,
    writing "eval" to `phase_file` when the training ends (the last epoch's metrics are in) and
    "done" when `fit` returns; prints the trainer's peak RSS of each phase (VmHWM, reset between
    the phases through /proc/self/clear_refs)."""
    from jepa_ray.train import LocalReporter, fit

    overrides = {
        "dataset": "imagefolder",
        "data_dir": root,
        "image_size": MEMORY_SIDE,
        "stream": "stream",
        "epochs": 1,
        "collapse_guard": False,
    }
    cfg = config_lib.resolve(config_lib.apply_overrides(config_lib.TrialConfig(), overrides))
    peaks: dict[str, float] = {}

    def end_of_training(metrics: dict) -> None:
        peaks["train_rss_mb"] = _vm_kb("VmHWM:") / 1024
        Path(phase_file).write_text("eval")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS, so that the next peak is the evaluation's

    with tempfile.TemporaryDirectory() as out:
        final = fit(cfg, LocalReporter(Path(out)), on_epoch=end_of_training)
    peaks["eval_rss_mb"] = _vm_kb("VmHWM:") / 1024
    Path(phase_file).write_text("done")
    print(json.dumps({**peaks, "eval_s": final["time/eval_s"], "linear_acc": final["linear_acc"]}), flush=True)


def trial_peaks(root: Path, phase_file: Path, sample_s: float = MEMORY_SAMPLE_S) -> dict[str, float]:
    """Run `memory_trial_child` on the image folder `root` in a subprocess and sample the PSS of
    its process tree every `sample_s`. Per phase (train, eval), in MB: the peak, the median
    of the samples (the level the phase holds, where the peak adds one batch's transient), the
    most processes at once, and the trainer's own peak RSS."""
    phase_file.write_text("train")
    cmd = [sys.executable, __file__, "--memory-trial-child", str(root), str(phase_file)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    samples: dict[str, list[int]] = {"train": [], "eval": []}
    processes = {"train": 0, "eval": 0}
    while child.poll() is None:
        phase = phase_file.read_text()
        if phase in samples:
            pss_kb, count = _tree_pss_kb(child.pid)
            samples[phase].append(pss_kb)
            processes[phase] = max(processes[phase], count)
        time.sleep(sample_s)
    out = child.stdout.read()
    if child.returncode != 0:
        raise RuntimeError(f"the memory trial failed (exit {child.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    for phase, kb in samples.items():
        result[f"{phase}_pss_mb"] = max(kb) / 1024
        result[f"{phase}_median_pss_mb"] = statistics.median(kb) / 1024
        result[f"{phase}_processes"] = processes[phase]
    return result


class _FakeEncoder(torch.nn.Module):
    """(h, z) of the default trial's widths (128, 256) from a 10 x 10 image: features without the
    cost of a real encoder."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(1)
        return flat[:, :128] * 1.0, torch.relu(flat[:, :256] - 0.5)


def memory_features_child(rows: str) -> None:
    """Run in its own process: the final evaluation's compute on `rows` train and rows // 5 test
    images of a fake encoder (no decoding, no data workers): the trainer's peak RSS above its RSS
    before each step (VmHWM reset through /proc/self/clear_refs), for the features of the train
    split and for `evaluate` (probes of one epoch: their memory does not depend on the epochs)."""
    from jepa_ray.eval.evaluate import evaluate, extract_batches, tensor_batches

    torch.set_num_threads(1)
    n_train, n_test = int(rows), int(rows) // 5
    g = torch.Generator().manual_seed(0)
    images = {n: torch.randint(0, 256, (n, 3, 10, 10), dtype=torch.uint8, generator=g) for n in (n_train, n_test)}
    cfg = config_lib.resolve(config_lib.TrialConfig())
    cfg.eval.probe_epochs = 1
    peaks: dict[str, float] = {}

    def step(name: str, fn, *args, **kw):
        before = _vm_kb("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        out = fn(*args, **kw)
        peaks[name] = (_vm_kb("VmHWM:") - before) / 1024
        return out

    kw = {"device": torch.device("cpu"), "autocast_dtype": None}
    features = []
    for n, name in ((n_train, "extract_train_mb"), (n_test, "extract_test_mb")):
        batches = tensor_batches(images.pop(n), torch.arange(n) % 10, 256)
        features.append(step(name, extract_batches, _FakeEncoder(), batches, lambda x: x.float() / 255, **kw))
    (tr_h, tr_z, tr_y), (te_h, te_z, te_y) = features
    step("evaluate_mb", evaluate, cfg, tr_h, tr_z, tr_y, te_h, te_z, te_y, 10, torch.device("cpu"))
    peaks["features_mb"] = sum(t.numel() * 4 for t in (tr_h, tr_z, te_h, te_z)) / 2**20
    print(json.dumps(peaks), flush=True)


def features_peaks(rows: int) -> dict[str, float]:
    """`memory_features_child` in a fresh process (so that no earlier step's freed memory hides a peak)."""
    cmd = [sys.executable, __file__, "--memory-features-child", str(rows)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def eval_memory(counts: list[int], feature_rows: list[int], sample_s: float = MEMORY_SAMPLE_S) -> None:
    """One JSON line per phase (training, final evaluation) and image count: the peak PSS of a
    streamed one-epoch trial, then per phase the growth per 1,000 train images between the
    smallest and the largest count (what the trial holds per image); then, per count of
    `feature_rows`, the final evaluation's compute alone on a fake encoder's features (exact
    peaks, no sampling: what it holds per image beyond the features)."""
    torch.set_num_threads(1)
    for rows in feature_rows:
        peaks = features_peaks(rows)
        features = {"features_mb": round(peaks["features_mb"], 1)}
        scale = f"{rows} + {rows // 5} rows of 128 + 256 features (fake encoder)"
        emit(f"evaluation compute, train split's features, {scale}", "peak_mb", peaks["extract_train_mb"], **features)
        emit(f"evaluation compute, probes + kNN + metrics, {scale}", "peak_mb", peaks["evaluate_mb"], **features)
    rows = {}
    for count in counts:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            write_synthetic_folder(root / "data", count, MEMORY_SIDE)
            rows[count] = trial_peaks(root / "data", root / "phase", sample_s)
        scale = f"{count} + {max(count // 5, 10)} synthetic imgs {MEMORY_SIDE}px, default trial, 1 epoch"
        for phase, name in (("train", "training"), ("eval", "final evaluation")):
            row = rows[count]
            extra = {
                "images": count,
                "median_pss_mb": round(row[f"{phase}_median_pss_mb"], 1),
                "processes": row[f"{phase}_processes"],
                "trainer_peak_rss_mb": round(row[f"{phase}_rss_mb"], 1),
                "sample_s": sample_s,
            }
            emit(f"peak memory, {name}, streamed, {scale}", "pss_mb", rows[count][f"{phase}_pss_mb"], **extra)
    lo, hi = min(counts), max(counts)
    if hi > lo:
        for phase, name in (("train", "training"), ("eval", "final evaluation")):
            growth = (rows[hi][f"{phase}_pss_mb"] - rows[lo][f"{phase}_pss_mb"]) * 1000 / (hi - lo)
            emit(f"peak memory growth, {name}, streamed, {lo} -> {hi} train imgs", "pss_mb_per_1k_images", growth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--images", default="10000", help="CIFAR-scale train images (--eval-memory: comma-separated counts)"
    )
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers of the streaming path")
    ap.add_argument("--steps", type=int, default=30, help="pipeline steps of batch 256")
    ap.add_argument("--large", type=int, default=400, help="224 px JPEGs to decode")
    ap.add_argument("--backbone", default="jepa_convnet_tiny", help="model of the trainer figure")
    ap.add_argument("--quick", action="store_true", help="skip the trainer figure")
    ap.add_argument(
        "--eval-memory", action="store_true", help="only the peak memory of a streamed trial at each --images count"
    )
    ap.add_argument(
        "--feature-rows", default="6400,25600", help="--eval-memory: train rows of the evaluation-compute figure"
    )
    ap.add_argument(
        "--memory-sample-s",
        type=float,
        default=MEMORY_SAMPLE_S,
        help="--eval-memory: seconds between two samples of the trial's PSS",
    )
    ap.add_argument("--memory-trial-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--memory-features-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_trial_child:
        memory_trial_child(*args.memory_trial_child)
        return
    if args.memory_features_child:
        memory_features_child(args.memory_features_child)
        return
    counts = [int(c) for c in args.images.split(",")]
    if args.eval_memory:
        if not args.memory_sample_s > 0:
            ap.error(f"--memory-sample-s {args.memory_sample_s}: allowed: seconds > 0")
        eval_memory(counts, [int(r) for r in args.feature_rows.split(",")], args.memory_sample_s)
        return
    args.images = counts[0]
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
