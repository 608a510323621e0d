"""Trainer speed: the input pipeline alone (views/s), and images/s of our training loop (`fit`
through `run_trial`: in-process for one worker, as every one-worker trial trains; under a
TorchTrainer with `--workers N`) against a plain single-process PyTorch loop on the same model,
data, views and loss in the same run.

    python benchmarks/trainer.py                       # digits on CPU, one thread
    python benchmarks/trainer.py --threads 2           # every core of a 2-core machine
    python benchmarks/trainer.py --workers 2           # 2 gloo DDP workers under Ray Train
    python benchmarks/trainer.py --cifar DIR --device cuda --backbone resnet18 --batch 512
    python benchmarks/trainer.py --cifar DIR --backbone jepa_convnet_tiny --batch 256 --no-cifar-stem \
        --max-train 5000 --compare-precision    # CPU: our loop in bf16 against fp32 (goal >= 2x)
    python benchmarks/trainer.py --cifar DIR --backbone jepa_convnet_tiny --batch 256 --no-cifar-stem \
        --max-train 5000 --breakdown            # where a step of our loop goes, phase by phase
    python benchmarks/trainer.py --probe-grid   # the final evaluation's grid of linear heads (goal < 2 s CPU)

Prints one JSON line per case (docs/design.md format).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jepa_ray import config as config_lib  # noqa: E402
from jepa_ray.data import load_dataset  # noqa: E402
from jepa_ray.data.augment import ViewMaker, measure_views_per_second  # noqa: E402
from jepa_ray.model import create_model  # noqa: E402
from jepa_ray.regularizers import create_regularizer, invariance, total_loss  # noqa: E402
from jepa_ray.seeding import step_generator  # noqa: E402


def emit(case: str, metric: str, value: float, device: str, baseline: float | None = None, **extra) -> None:
    row = {"bench": "trainer", "case": case, "metric": metric, "value": round(value, 3)}
    if baseline is not None:
        row.update(baseline=round(baseline, 3), ratio=round(value / baseline, 4))
    row["device"] = device
    row.update(extra)
    print(json.dumps(row), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop_img_per_s(cfg, splits, device: torch.device, steps: int, bf16: bool) -> float:
    """The reference approach written plainly: augment, one forward per view (as the reference
    and our loop), invariance + regularizer, backward, AdamW step; nothing else (no probes, no
    metrics, no reporting)."""
    torch.manual_seed(0)
    model = create_model(cfg).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    reg = create_regularizer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    views = ViewMaker(cfg.views, cfg.data.image_size, splits.mean, splits.std, splits.num_channels)
    x = splits.train_x.to(device)
    batch = cfg.optim.batch_size
    times = []
    for s in range(steps + 3):
        sync(device)
        t0 = time.perf_counter()
        idx = torch.randint(0, x.shape[0], (batch,), device=device)
        vs = views(x[idx], step_generator(device, 0, s, 7))
        if device.type == "cuda":
            vs = [v.contiguous(memory_format=torch.channels_last) for v in vs]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            z = torch.stack([model(v)[1] for v in vs])
        loss = total_loss(invariance(z.float()), reg(z, s), cfg.loss.lambd, cfg.loss.loss_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if s >= 3:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def fit_img_per_s(cfg) -> float:
    """Median over epochs after the first of our loop's own throughput/img_per_s."""
    from jepa_ray.train import checkpoint as ckpt_lib
    from jepa_ray.train import run_trial

    epochs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.system.workers > 1:
            import ray

            ray.init(
                address="local",  # its own instance, even where a cluster runs
                num_cpus=cfg.system.workers * max(1, cfg.system.threads_per_worker) + 1,
                include_dashboard=False,
                log_to_driver=False,
            )
            _, uri = run_trial(cfg, tmp)
            epochs = ckpt_lib.read_history(uri)
            ray.shutdown()
        else:
            run_trial(cfg, tmp, report=epochs.append)
    rates = [m["throughput/img_per_s"] for m in epochs if "throughput/img_per_s" in m][1:]
    return statistics.median(rates)


def step_breakdown(cfg, steps: int) -> dict[str, float]:
    """Median milliseconds per phase of our loop's step, built as `fit` builds it (feed, views,
    TrainModule with its probes, regularizer, optimizer) and timed phase by phase: the batch from
    the feed, the augmentations, the forward (encoder and the probes), invariance + regularizer,
    backward, optimizer step; and the regularizer alone (forward + backward on a copy of z: its
    projections, sorts and target draws, the part of `backward` that is the regularizer's).
    The per-epoch online test evaluation is timed once over the whole test shard."""
    from jepa_ray.model import Preprocess
    from jepa_ray.seeding import STREAM_AUGMENT
    from jepa_ray.train import optim as optim_lib
    from jepa_ray.train.feed import open_feed
    from jepa_ray.train.loop import _online_test_accuracy
    from jepa_ray.train.step import TrainModule, runtime

    rt = runtime(cfg)
    torch.manual_seed(0)
    feed, views = open_feed(cfg, rt, lambda mean, std, size, ch: ViewMaker(cfg.views, size, mean, std, ch))
    model = TrainModule(create_model(cfg), feed.num_classes, cfg.model.joint_view_forward).to(rt.device)
    reg = create_regularizer(cfg)
    opt = optim_lib.create_optimizer(cfg, model.encoder, torch.nn.ModuleList([model.probe_h, model.probe_z]))
    num_global = cfg.views.num_views
    phases: dict[str, list[float]] = {
        k: [] for k in ("data", "views", "forward", "loss", "backward", "optimizer", "regularizer alone")
    }
    device, dtype = rt.device, rt.autocast_dtype
    batches = iter(())
    epoch = 0

    def mark(name: str, t: float) -> float:
        sync(device)
        now = time.perf_counter()
        phases[name].append(now - t)
        return now

    for s in range(steps + 3):
        sync(device)
        t = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            batches, epoch = iter(feed.epoch(epoch)), epoch + 1
            x, y = next(batches)
        t = mark("data", t)
        vs = views(x, step_generator(device, 0, s, STREAM_AUGMENT))
        t = mark("views", t)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = model(vs, y, num_global)
        t = mark("forward", t)
        loss = total_loss(invariance(out.z.float(), num_global), reg(out.z[:num_global], s), cfg.loss.lambd, 1.0)
        t = mark("loss", t)
        opt.zero_grad(set_to_none=True)
        (loss + out.probe_loss).backward()
        t = mark("backward", t)
        opt.step()
        t = mark("optimizer", t)
        z = out.z[:num_global].detach().clone().requires_grad_(True)
        reg(z, s).backward()
        mark("regularizer alone", t)
    result = {k: 1e3 * statistics.median(v[3:]) for k, v in phases.items()}
    preprocess = Preprocess(feed.mean, feed.std, feed.image_size, feed.num_channels).to(device)
    t = time.perf_counter()
    _online_test_accuracy(model, feed, preprocess, rt, cfg.optim.batch_size * 2)
    result["online test eval per epoch"] = 1e3 * (time.perf_counter() - t)
    result["steps per epoch"] = len(feed.batches)
    feed.close()
    return result


def probe_grid_cpu_s(repeats: int = 3) -> list[float]:
    """CPU seconds of the final evaluation's grid of linear heads at a fixed size: 1,300 x 512
    features, 12 heads (4 learning rates x 3 weight decays), 10 classes, 50 epochs, one thread
    (CPU time, so that a loaded machine does not decide)."""
    from jepa_ray.eval.probe import fit_linear_grid

    g = torch.Generator().manual_seed(6)
    x = torch.randn(1800, 512, generator=g)
    y = (x @ torch.randn(512, 10, generator=g)).argmax(dim=1)
    seconds = []
    for _ in range(repeats):
        start = time.process_time()
        fit_linear_grid(
            x[:1300], y[:1300], x[1300:], y[1300:], lrs=[0.3, 0.1, 0.03, 0.01], wds=[0.0, 1e-4, 1e-3], epochs=50
        )
        seconds.append(time.process_time() - start)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cifar", help="directory with CIFAR-10 train.parquet/test.parquet (else digits)")
    p.add_argument("--backbone", default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--max-train", type=int, default=0, help="cap on training images per epoch")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=1, help="DDP workers of our loop (>1: under a TorchTrainer)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of both loops (default 1: the one CPU a sweep trial's worker gets; "
        "with every core busy, Ray's own processes take time from the training threads)",
    )
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="of both loops")
    p.add_argument("--no-cifar-stem", action="store_true", help="with --cifar: the backbone's own stem")
    p.add_argument(
        "--compare-precision", action="store_true", help="also our loop at fp32 and at bf16, and their ratio"
    )
    p.add_argument("--breakdown", action="store_true", help="only: milliseconds per phase of one step of our loop")
    p.add_argument("--probe-grid", action="store_true", help="only: CPU seconds of the grid of linear heads")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.probe_grid:
        seconds = probe_grid_cpu_s()
        emit(
            "grid of linear heads: 1300 x 512, 12 heads, 10 classes, 50 epochs, 1 thread",
            "cpu_s",
            statistics.median(seconds),
            "cpu",
            runs=[round(t, 3) for t in seconds],
            goal="< 2",
        )
        return
    overrides = {
        "epochs": args.epochs,
        "warmup_epochs": 0,
        "collapse_guard": False,
        "threads_per_worker": args.threads,
        "probe_epochs": 1,
        "gpus_per_worker": 1 if device.type == "cuda" else 0,
        "max_train_samples": args.max_train,
        "workers": args.workers,
    }
    if args.cifar:
        overrides.update(
            dataset="parquet",
            data_dir=args.cifar,
            recipe="cifar",
            backbone="resnet18",
            cifar_stem=not args.no_cifar_stem,
            proj_dims="512-512-512",
            num_slices=1024,
            batch_size=512,
        )
    if args.backbone:
        overrides["backbone"] = args.backbone
    if args.batch:
        overrides["batch_size"] = args.batch
    overrides["precision"] = args.precision
    cfg = config_lib.resolve(config_lib.apply_overrides(config_lib.preset("digits"), overrides))
    from jepa_ray.train.step import resolve_precision

    precision, _ = resolve_precision(args.precision, device)
    splits = load_dataset(cfg.data)
    if not cfg.data.image_size:
        cfg.data.image_size = splits.image_size
    shape = (
        f"{cfg.data.dataset} {cfg.model.backbone} B={cfg.optim.batch_size} V={cfg.views.num_views} "
        f"{cfg.data.image_size}px"
    )
    threads = "" if device.type == "cuda" else f" {args.threads} thread{'s' if args.threads > 1 else ''}"
    label = f"{shape} {precision}{threads}"

    if args.breakdown:
        parts = step_breakdown(cfg, args.steps)
        step_ms = sum(v for k, v in parts.items() if k in ("data", "views", "forward", "loss", "backward", "optimizer"))
        for name, ms in parts.items():
            if name == "steps per epoch":
                continue
            emit(f"step breakdown {label}: {name}", "ms", ms, device.type, share_of_step=round(ms / step_ms, 3))
        emit(f"step breakdown {label}: step", "ms", step_ms, device.type, steps_per_epoch=parts["steps per epoch"])
        return

    maker = ViewMaker(cfg.views, cfg.data.image_size, splits.mean, splits.std, splits.num_channels)
    vps = measure_views_per_second(maker, splits.train_x.to(device), cfg.optim.batch_size, repeats=args.steps)
    emit(f"input pipeline {label}", "views_per_s", vps, device.type)

    plain = plain_loop_img_per_s(cfg, splits, device, args.steps, bf16=precision == "bf16")
    emit(f"plain loop {label}", "img_per_s", plain, device.type, views_per_s=round(plain * cfg.views.num_views, 1))

    ours = fit_img_per_s(cfg)
    where = f"TorchTrainer {cfg.system.workers} workers" if cfg.system.workers > 1 else "in-process"
    emit(
        f"jepa_ray fit ({where}) vs plain loop {label}",
        "img_per_s",
        ours,
        device.type,
        baseline=plain,
        views_per_s=round(ours * cfg.views.num_views, 1),
    )
    if args.compare_precision:
        rates = {}
        for variant in ("fp32", "bf16"):
            cfg.system.precision = variant
            rates[variant] = fit_img_per_s(cfg)
        emit(
            f"jepa_ray fit bf16 vs fp32 {shape}{threads}",
            "img_per_s",
            rates["bf16"],
            device.type,
            baseline=rates["fp32"],
        )


if __name__ == "__main__":
    main()
