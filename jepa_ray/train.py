"""One trial: the JEPA training loop of one worker (read top to bottom in `fit`), the
TorchTrainer that runs it on N workers, and `python -m jepa_ray.train`.

Every random choice of a step (batch order, augmentations, slices, target samples) is drawn
from generators seeded by (seed, epoch or global step), so a run resumed from an epoch
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist
from torch import nn

from jepa_ray import checkpoint as ckpt_lib
from jepa_ray import config as config_lib
from jepa_ray import distributed as dist_lib
from jepa_ray import metrics as metrics_lib
from jepa_ray.augment import ViewMaker
from jepa_ray.config import ConfigError, TrialConfig
from jepa_ray.data import BatchIterator, ImageSplits, load_dataset
from jepa_ray.evaluate import evaluate_encoder, extract_features
from jepa_ray.model import create_model
from jepa_ray.optim import create_optimizer, lr_at, peak_lr, set_lr
from jepa_ray.probe import OnlineProbe
from jepa_ray.regularizers import create_regularizer, invariance, total_loss
from jepa_ray.tracking import FINAL_METRICS

EPOCH_METRICS = ("train/loss", "train/invariance", "train/regularizer", "train/l0_density",
                 "online/linear_acc", "throughput/img_per_s")
_STREAM_AUGMENT = 100


class TrialFailure(RuntimeError):
    """A trial that cannot produce a useful result (non-finite loss, collapse); not retried."""


class Reporter(Protocol):
    """Where a worker sends its per-epoch metrics and checkpoints (Ray Train, Tune or a test)."""

    def restore_dir(self) -> Path | None: ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _runtime(cfg: TrialConfig, device: torch.device | None = None) -> Runtime:
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() and \
            cfg.system.gpus_per_worker > 0 else torch.device("cpu")
    precision = cfg.system.precision
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return Runtime(dist_lib.rank(), dist_lib.world_size(), device, torch.bfloat16 if bf16 else None)


def _threads(cfg: TrialConfig) -> None:
    n = cfg.system.threads_per_worker or max(1, math.ceil(cfg.system.cpus_per_worker))
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------
# State (what a resumable checkpoint holds)


def _train_state(epoch: int, step: int, optimizer, probe: OnlineProbe, history: list) -> dict:
    return {"epoch": epoch, "step": step, "optimizer": optimizer.state_dict(),
            "probe_optimizer": probe.optimizer.state_dict(), "history": json.dumps(history)}


def _restore(path: Path, model: nn.Module, optimizer, probe: OnlineProbe, device) -> tuple[int, int, list]:
    state = ckpt_lib.load_state(path, ckpt_lib.MODEL_FILE, device)
    ckpt_lib.unwrap(model).load_state_dict(state["model"])
    probe.load_state_dict(state["online_probe"])
    train = ckpt_lib.load_state(path, ckpt_lib.TRAIN_STATE_FILE, device)
    optimizer.load_state_dict(train["optimizer"])
    probe.optimizer.load_state_dict(train["probe_optimizer"])
    return int(train["epoch"]), int(train["step"]), json.loads(train["history"])


def _save(path: Path, model, cfg, metrics, optimizer, probe, epoch, step, history) -> Path:
    return ckpt_lib.save_checkpoint(
        path, model=model, cfg=cfg, metrics=metrics,
        extra_state={"online_probe": probe.state_dict()},
        train_state=_train_state(epoch, step, optimizer, probe, history))


# --------------------------------------------------------------------------------------------
# The loop


class Normalizer:
    """uint8 images -> normalized float32 at the training resolution (evaluation input)."""

    def __init__(self, mean, std, image_size: int):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.image_size = image_size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0)
        if x.shape[-1] != self.image_size:
            x = nn.functional.interpolate(x, size=self.image_size, mode="bilinear", antialias=True,
                                          align_corners=False)
        if self.mean.device != x.device:  # moved once, not on every batch
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x - self.mean) / self.std


def _sum_over_ranks(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist_lib.is_distributed():
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def _online_test_accuracy(model, probe, splits: ImageSplits, normalize: Normalizer, rt: Runtime,
                          batch_size: int) -> float:
    """Online probe accuracy on the test split, each rank taking a strided shard."""
    idx = torch.arange(rt.rank, splits.test_x.shape[0], rt.world_size)
    h, _ = extract_features(ckpt_lib.unwrap(model), splits.test_x[idx], normalize,
                            batch_size=batch_size, device=rt.device, autocast_dtype=rt.autocast_dtype)
    correct = (probe(h).argmax(1).cpu() == splits.test_y[idx]).sum().item()
    c, n = _sum_over_ranks([correct, idx.numel()], rt.device)
    return c / max(n, 1)


def fit(cfg: TrialConfig, reporter: Reporter, *, device: torch.device | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train one worker's share of a trial and return its final metrics.

    Call inside an initialized process group for several workers (Ray Train does that).
    Raises TrialFailure on a non-finite loss."""
    _threads(cfg)
    rt = _runtime(cfg, device)
    torch.manual_seed(cfg.system.seed)  # identical initial weights on every rank

    splits = load_dataset(cfg.data)
    image_size = cfg.data.image_size or splits.image_size
    views = ViewMaker(cfg.views, image_size, splits.mean, splits.std, splits.num_channels)
    normalize = Normalizer(splits.mean, splits.std, image_size)
    train_x = splits.train_x.to(rt.device)  # uint8, decoded once; augmented on the device
    train_y = splits.train_y.to(rt.device)

    model = create_model(cfg).to(rt.device)
    if rt.device.type == "cuda" and cfg.system.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if rt.world_size > 1:
        if cfg.model.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    regularizer = create_regularizer(cfg)
    optimizer = create_optimizer(cfg, model)
    probe = OnlineProbe(ckpt_lib.unwrap(model).feature_dim, splits.num_classes).to(rt.device)
    probe.make_optimizer(cfg.eval.online_probe_lr)

    local_batch = cfg.optim.batch_size // rt.world_size
    if cfg.optim.batch_size > train_x.shape[0]:
        raise ConfigError(f"config field 'batch_size' = {cfg.optim.batch_size} is larger than the "
                          f"training split ({train_x.shape[0]} images); allowed: <= {train_x.shape[0]}")
    batches = BatchIterator(train_x.shape[0], cfg.optim.batch_size, rank=rt.rank,
                            world_size=rt.world_size, seed=cfg.system.seed)
    steps_per_epoch = len(batches)
    total_steps = cfg.optim.epochs * steps_per_epoch
    warmup_steps = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    peak = peak_lr(cfg)

    start_epoch, step, history = 0, 0, []
    restored = reporter.restore_dir()
    if restored is not None:
        start_epoch, step, history = _restore(restored, model, optimizer, probe, rt.device)

    for epoch in range(start_epoch, cfg.optim.epochs):
        if epoch == cfg.system.fail_at_epoch and start_epoch < epoch and rt.is_main:
            # Fault injection: die like a lost worker (no exception, no cleanup), once: the
            # restarted group resumes at this epoch from the checkpoint, so start_epoch == epoch.
            # The controller collects reports by polling the workers; wait for two polls so the
            # previous epoch's checkpoint is registered before this worker dies.
            time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)) + 1)
            print(f"[jepa_ray] fault injection: rank 0 exits at the start of epoch {epoch}", flush=True)
            os._exit(17)
        model.train()
        batches.set_epoch(epoch)
        sums = torch.zeros(5, dtype=torch.float64, device=rt.device)
        pending = None
        t0 = time.perf_counter()
        for idx in torch.stack(list(batches)).to(rt.device):  # one host-to-device copy per epoch
            set_lr(optimizer, lr_at(step, total_steps, warmup_steps, peak, cfg.optim.min_lr_ratio))
            gen = dist_lib.step_generator(rt.device, cfg.system.seed, step, _STREAM_AUGMENT + rt.rank)
            x_views = views(train_x[idx], gen)  # list of V normalized (b, C, H, W)
            num_global = cfg.views.num_views
            with torch.autocast(rt.device.type, dtype=rt.autocast_dtype or torch.bfloat16,
                                enabled=rt.autocast_dtype is not None):
                h, z = _forward_views(model, x_views, num_global)
            inv = invariance(z.float(), num_global)
            reg = regularizer(z[:num_global], step)
            loss = total_loss(inv, reg, cfg.loss.lambd)
            # The finiteness check reads the previous step's loss: reading this step's would make
            # the CPU wait for the GPU every step. A non-finite loss stops the trial one step late.
            _check_finite(pending, epoch)
            pending = (step, loss.detach(), inv.detach(), reg.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            labels = train_y[idx]
            _, correct = probe.step_tensors(h[0], labels)
            with torch.no_grad():
                sums += torch.stack([loss.detach(), inv.detach(), reg.detach(), (z[0] != 0).float().mean(),
                                     correct.float()]).double()
            step += 1
        _check_finite(pending, epoch)
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        seconds = time.perf_counter() - t0
        totals = _sum_over_ranks(sums.tolist() + [seconds], rt.device)
        n_steps = steps_per_epoch * rt.world_size
        epoch_metrics = {
            "epoch": epoch,
            "train/loss": totals[0] / n_steps,
            "train/invariance": totals[1] / n_steps,
            "train/regularizer": totals[2] / n_steps,
            "train/l0_density": totals[3] / n_steps,
            "online/train_acc": totals[4] / (n_steps * local_batch),
            "online/linear_acc": _online_test_accuracy(model, probe, splits, normalize, rt, local_batch * 2),
            "train/rank_me": metrics_lib.rank_me(z[0].detach().float()),
            "train/lr": optimizer.param_groups[0]["lr"],
            "throughput/img_per_s": steps_per_epoch * cfg.optim.batch_size / (totals[5] / rt.world_size),
            "time/epoch_s": seconds,
        }
        history.append(epoch_metrics)
        collapse = collapse_reason(cfg, epoch_metrics)
        if collapse:
            raise TrialFailure(f"collapse at epoch {epoch}: {collapse}")
        if on_epoch is not None:
            on_epoch(epoch_metrics)
        last = epoch == cfg.optim.epochs - 1
        due = cfg.system.checkpoint_every > 0 and (epoch + 1) % cfg.system.checkpoint_every == 0
        if last:
            break  # the final report carries the final metrics and checkpoint
        _report(reporter, rt, epoch_metrics, due, lambda d: _save(
            d, model, cfg, epoch_metrics, optimizer, probe, epoch + 1, step, history))

    final = dict(history[-1]) if history else {}
    evaluation, rates = _final_evaluation(cfg, model, splits, normalize, rt)
    final.update(evaluation)

    def save_final(d: Path) -> Path:
        path = _save(d, model, cfg, final, optimizer, probe, cfg.optim.epochs, step, history)
        (path / ckpt_lib.ACTIVATION_FILE).write_text(json.dumps(rates))
        return path

    _report(reporter, rt, final, True, save_final)
    return final


def _check_finite(pending, epoch: int) -> None:
    """Raise TrialFailure if the recorded (step, loss, invariance, regularizer) is not finite."""
    if pending is None:
        return
    step, loss, inv, reg = pending
    if not torch.isfinite(loss):
        raise TrialFailure(f"non-finite loss at epoch {epoch} step {step}: "
                           f"invariance={inv.item():.4g} regularizer={reg.item():.4g}")


def collapse_reason(cfg: TrialConfig, m: dict) -> str | None:
    """Why a trial is hopeless after the warm-up (None while it is not): z all zeros or far
    sparser than its target, z never sparse although the target is, or an effective rank
    near 1."""
    s = cfg.system
    if not s.collapse_guard or m["epoch"] + 1 <= s.collapse_warmup_epochs:
        return None
    density = m["train/l0_density"]
    if density <= 1e-4:
        return f"train/l0_density={density:.2g}: z is all zeros (dead projector)"
    from jepa_ray.evaluate import target_l0_density

    target = target_l0_density(cfg)
    if density >= 0.9999 and target < 0.9:
        return f"train/l0_density={density:.4f}: z never sparse although the target density is {target:.3f}"
    if cfg.target.target == "rgg" and density < s.collapse_min_density_ratio * target:
        return (f"train/l0_density={density:.4f} is below {s.collapse_min_density_ratio:g} x the target density "
                f"{target:.3f}: z is collapsing to all zeros")
    if m["train/rank_me"] < s.collapse_min_rank:
        return f"train/rank_me={m['train/rank_me']:.3f} < {s.collapse_min_rank}: representation collapsed"
    return None


def _forward_views(model, x_views: list[torch.Tensor], num_global: int):
    """One forward per resolution (global views batched together, local views together);
    returns (V, b, F) backbone features and (V, b, D) projections."""
    hs, zs = [], []
    groups = [x_views[:num_global]] + ([x_views[num_global:]] if len(x_views) > num_global else [])
    for group in groups:
        x = torch.cat(group)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        h, z = model(x)
        hs.append(h.view(len(group), -1, h.shape[-1]))
        zs.append(z.view(len(group), -1, z.shape[-1]))
    return torch.cat(hs), torch.cat(zs)


def _report(reporter: Reporter, rt: Runtime, metrics: dict, with_checkpoint: bool, save) -> None:
    """Rank 0 writes the checkpoint into a temporary directory; every rank reports."""
    if not with_checkpoint:
        reporter.report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="jepa_ray_ckpt_") as tmp:
        path = save(Path(tmp) / "checkpoint") if rt.is_main else None
        reporter.report(metrics, path)


def _final_evaluation(cfg, model, splits: ImageSplits, normalize: Normalizer, rt: Runtime
                      ) -> tuple[dict, list[float] | None]:
    """Final metrics on frozen features (computed on rank 0 and broadcast to every rank) and,
    on rank 0, the activation rate of each z dimension on the test split."""
    result, rates = [None], None
    if rt.is_main:
        result[0], te_z = evaluate_encoder(cfg, ckpt_lib.unwrap(model), splits, normalize, device=rt.device,
                                           autocast_dtype=rt.autocast_dtype,
                                           batch_size=max(256, cfg.optim.batch_size))
        rates = metrics_lib.activation_rates(te_z).tolist()
    if dist_lib.is_distributed():
        dist.broadcast_object_list(result, src=0)
    return result[0], rates


# --------------------------------------------------------------------------------------------
# Reporters


class LocalReporter:
    """In-process runs (one worker, no Ray Train): checkpoints are copied into `out_dir`
    (the latest one as `checkpoint/`), and `callback(metrics, checkpoint_dir)` is called."""

    def __init__(self, out_dir: Path, resume_from: Path | None = None,
                 callback: Callable[[dict, Path | None], None] | None = None):
        self.out_dir, self.resume_from, self.callback = Path(out_dir), resume_from, callback

    def restore_dir(self) -> Path | None:
        return self.resume_from

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        kept = None
        if checkpoint_dir is not None:
            kept = self.out_dir / "checkpoint"
            tmp = self.out_dir / ".checkpoint.copy"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(checkpoint_dir, tmp)
            if kept.exists():
                shutil.rmtree(kept)
            tmp.rename(kept)
        if self.callback is not None:
            self.callback(metrics, kept)


class RayTrainReporter:
    """Inside a Ray Train worker: ray.train.report with the checkpoint of rank 0; per-epoch
    metrics also go to `progress` (a ray.util.queue.Queue) so a Tune trial can stream them."""

    def __init__(self, progress=None):
        self.progress = progress

    def restore_dir(self) -> Path | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        return Path(checkpoint.to_directory())

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        if self.progress is not None and ray.train.get_context().get_world_rank() == 0:
            self.progress.put(dict(metrics))
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(loop_config: dict) -> None:
    """The Ray Train worker function."""
    cfg = config_lib.from_dict(loop_config["trial_config"])
    reporter = RayTrainReporter(loop_config.get("progress"))
    try:
        fit(cfg, reporter)
    except TrialFailure as err:
        # A deterministic failure: report it (with a checkpoint, so Ray keeps the metrics)
        # instead of raising, which would make Ray Train restart the worker group in vain.
        print(f"[jepa_ray] trial failed: {err}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            marker = None
            if ray_rank() == 0:
                marker = Path(tmp) / "failure"
                marker.mkdir()
                (marker / "failure.txt").write_text(str(err))
            reporter.report({"failure": str(err)}, marker)


def ray_rank() -> int:
    import ray.train

    return ray.train.get_context().get_world_rank()


# --------------------------------------------------------------------------------------------
# Running a trial


def scaling_config(cfg: TrialConfig):
    from ray.train import ScalingConfig

    use_gpu = cfg.system.gpus_per_worker > 0
    resources = {"CPU": cfg.system.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = cfg.system.gpus_per_worker
    return ScalingConfig(num_workers=cfg.system.workers, use_gpu=use_gpu, resources_per_worker=resources)


def run_trial(cfg: TrialConfig, *, storage_path: str, name: str, progress=None,
              callbacks: list | None = None) -> tuple[dict, str | None]:
    """Fit one trial with a TorchTrainer; return (final metrics, final checkpoint path).
    Raises TrialFailure when the trial reported a failure or ended without a result."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = cfg.system.gpus_per_worker > 0
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"trial_config": config_lib.to_dict(cfg), "progress": progress},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=name, storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.system.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or [],
        ),
    )
    try:
        result = trainer.fit()
    except Exception as err:  # TrainingFailedError: workers kept failing
        raise TrialFailure(f"training failed: {_one_line(err)}") from err
    metrics = dict(result.metrics or {})
    if "failure" in metrics:
        raise TrialFailure(metrics["failure"])
    if "linear_acc" not in metrics:
        raise TrialFailure("the trial ended without final metrics")
    return metrics, (result.checkpoint.path if result.checkpoint else None)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[-1] if text else type(err).__name__)[:500]


# --------------------------------------------------------------------------------------------
# Command line


def build_config(preset: str | None, sets: list[str], workers: int | None = None,
                 gpus_per_worker: float | None = None) -> TrialConfig:
    """Preset + --set overrides + CLI shortcuts, resolved and validated."""
    cfg = config_lib.preset(preset or "digits")
    overrides = config_lib.parse_set_args(sets)
    if workers is not None:
        overrides["workers"] = workers
    if gpus_per_worker is not None:
        overrides["gpus_per_worker"] = gpus_per_worker
    return config_lib.resolve(config_lib.apply_overrides(cfg, overrides))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jepa_ray.train",
                                description="Train one Rectified LpJEPA / LpJEPA / LeJEPA trial with Ray Train.")
    p.add_argument("--preset", default="digits", help=f"one of: {', '.join(config_lib.PRESETS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by its flat name (e.g. --set mu=-1 --set p=0.5)")
    p.add_argument("--workers", type=int, help="Ray Train workers (DDP processes)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (0: CPU)")
    p.add_argument("--out", help="directory for the final checkpoint (required unless --list-keys)")
    p.add_argument("--storage-path", help="Ray Train storage (default: OUT/ray)")
    p.add_argument("--address", help="Ray cluster address (default: connect if one runs, else start one)")
    p.add_argument("--list-keys", action="store_true", help="print every config key with its doc and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list_keys:
        for key in config_lib.LEAVES:
            print(f"{key:20s} {config_lib.field_doc(key)}")
        return 0
    try:
        if not args.out:
            raise ConfigError("--out is required: a directory for the final checkpoint")
        cfg = build_config(args.preset, args.set, args.workers, args.gpus_per_worker)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import ray

    from jepa_ray.cluster import connect

    try:
        connect(args.address, num_cpus=max(2, math.ceil(cfg.system.workers * cfg.system.cpus_per_worker) + 1))
    except ConfigError as err:  # an --address that does not answer: bad input, exit 2 like the config
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        metrics, checkpoint = run_trial(cfg, storage_path=args.storage_path or str(out / "ray"), name="train")
    except TrialFailure as err:
        print(f"error: trial failed: {err}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    final_dir = out / "checkpoint"
    if final_dir.exists():
        shutil.rmtree(final_dir)
    shutil.copytree(ckpt_lib.local_path(checkpoint), final_dir)
    shown = {k: metrics[k] for k in FINAL_METRICS if k in metrics}
    print(json.dumps({"checkpoint": str(final_dir), **shown}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
