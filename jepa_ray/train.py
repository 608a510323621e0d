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
from torch.nn import functional as F

from jepa_ray import checkpoint as ckpt_lib
from jepa_ray import config as config_lib
from jepa_ray import distributed as dist_lib
from jepa_ray import metrics as metrics_lib
from jepa_ray.augment import ViewMaker
from jepa_ray.config import ConfigError, TrialConfig
from jepa_ray.data import BatchIterator, ImageSplits, load_dataset
from jepa_ray.evaluate import evaluate_encoder, extract_features
from jepa_ray.faults import Fault
from jepa_ray import optim as optim_lib
from jepa_ray.model import Preprocess, create_model
from jepa_ray.optim import create_optimizer
from jepa_ray.regularizers import create_regularizer, invariance, total_loss
from jepa_ray.tracking import FINAL_METRICS

EPOCH_METRICS = ("train/loss", "train/invariance", "train/regularizer", "train/l0_density",
                 "online/linear_acc", "online/linear_acc_z", "throughput/img_per_s")
_STREAM_AUGMENT = 100


class TrialFailure(RuntimeError):
    """A trial that cannot produce a useful result (non-finite loss, collapse); not retried."""


CheckpointWriter = Callable[[Path], Path]
"""Writes a checkpoint directory at the given path and returns it (`_save` bound to the state)."""


class Reporter(Protocol):
    """Where a worker finds its restore point and sends its per-epoch metrics and checkpoints."""

    def restore_dir(self) -> Path | None: ...

    def report(self, metrics: dict[str, Any], write: CheckpointWriter | None, *, final: bool) -> None: ...


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def runtime(cfg: TrialConfig, device: torch.device | None = None) -> Runtime:
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
# What one optimizer trains


class TrainModule(nn.Module):
    """The encoder and the online linear probes on detached backbone features (`probe_h`) and on
    z (`probe_z`), trained each step on the global views in the encoder's optimizer, as the
    reference's online classifiers are. DDP wraps this one module, called once per step."""

    def __init__(self, encoder: nn.Module, num_classes: int, joint_views: bool = False):
        super().__init__()
        self.encoder = encoder
        self.probe_h = nn.Linear(encoder.feature_dim, num_classes)
        self.probe_z = nn.Linear(encoder.projector.out_dim, num_classes)
        self.joint_views = joint_views

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor, num_global: int) -> StepOutput:
        """(V, b, F) backbone features and (V, b, D) projections of the views, and the probes'
        cross-entropy on the global views (mean over views, as the reference averages them).
        One encoder forward per view, as the reference (BatchNorm statistics per view), or
        with joint_views one forward of all global views and one of all local views."""
        if self.joint_views:
            groups = [views[:num_global]] + ([views[num_global:]] if len(views) > num_global else [])
        else:
            groups = [[v] for v in views]
        hs, zs = [], []
        for group in groups:
            x = torch.cat(group) if len(group) > 1 else group[0]
            if x.is_cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            h, z = self.encoder(x)
            hs.append(h.view(len(group), -1, h.shape[-1]))
            zs.append(z.view(len(group), -1, z.shape[-1]))
        h, z = torch.cat(hs), torch.cat(zs)
        target = labels.repeat(num_global)
        with torch.autocast(h.device.type, enabled=False):
            logits_h = self.probe_h(dist_lib.full_precision(h[:num_global].detach()).flatten(0, 1))
            logits_z = self.probe_z(dist_lib.full_precision(z[:num_global].detach()).flatten(0, 1))
            probe_loss = F.cross_entropy(logits_h, target) + F.cross_entropy(logits_z, target)
        correct = torch.stack([(logits_h.argmax(1) == target).sum(), (logits_z.argmax(1) == target).sum()])
        return StepOutput(h, z, probe_loss, correct)


@dataclass
class StepOutput:
    h: torch.Tensor
    z: torch.Tensor
    probe_loss: torch.Tensor
    correct: torch.Tensor
    """Right answers of the two probes on this rank's global views (before the step)."""


@dataclass
class StepStats:
    """One step's terms (detached, on the device; read once per epoch)."""

    loss: torch.Tensor
    invariance: torch.Tensor
    regularizer: torch.Tensor
    correct: torch.Tensor
    z: torch.Tensor


def train_step(model: nn.Module, regularizer: nn.Module, optimizer: torch.optim.Optimizer,
               views: list[torch.Tensor], labels: torch.Tensor, step: int, cfg: TrialConfig,
               autocast_dtype: torch.dtype | None = None) -> StepStats:
    """One optimization step on a batch of views: forward (a TrainModule, or DDP around one),
    loss = loss_scale * ((1 - lambd) * invariance + lambd * regularizer) plus the probes'
    cross-entropy (which reaches the probes only), backward, optimizer step. The learning rate
    is set beforehand (optim.schedule_step)."""
    num_global = cfg.views.num_views
    device_type = views[0].device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        out = model(views, labels, num_global)
    inv = invariance(dist_lib.full_precision(out.z), num_global)
    reg = regularizer(out.z[:num_global], step)
    loss = total_loss(inv, reg, cfg.loss.lambd, cfg.loss.loss_scale)
    optimizer.zero_grad(set_to_none=True)
    (loss + out.probe_loss).backward()
    if cfg.optim.grad_clip > 0:
        nn.utils.clip_grad_norm_(ckpt_lib.unwrap(model).encoder.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    return StepStats(loss.detach(), inv.detach(), reg.detach(), out.correct, out.z.detach())


# --------------------------------------------------------------------------------------------
# State (what a resumable checkpoint holds)


def _restore(path: Path, model: TrainModule, optimizer, device) -> tuple[int, int, list]:
    state = ckpt_lib.load_state(path, ckpt_lib.MODEL_FILE, device)
    model.encoder.load_state_dict(state["model"])
    model.probe_h.load_state_dict(state["online_probe"])
    model.probe_z.load_state_dict(state["online_probe_z"])
    train = ckpt_lib.load_state(path, ckpt_lib.TRAIN_STATE_FILE, device)
    optimizer.load_state_dict(train["optimizer"])
    return int(train["epoch"]), int(train["step"]), ckpt_lib.read_history(path)


def _save(path: Path, model: TrainModule, cfg, metrics, optimizer, preprocess: Preprocess, epoch, step,
          history) -> Path:
    return ckpt_lib.save_checkpoint(
        path, model=model.encoder, cfg=cfg, metrics=metrics, history=history,
        extra_state={"online_probe": model.probe_h.state_dict(), "online_probe_z": model.probe_z.state_dict()},
        train_state={"epoch": epoch, "step": step, "optimizer": optimizer.state_dict()},
        extra_files={ckpt_lib.PREPROCESSING_FILE: json.dumps(preprocess.spec(), indent=2)})


# --------------------------------------------------------------------------------------------
# The loop


def _sum_over_ranks(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist_lib.is_distributed():
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def _online_test_accuracy(model: TrainModule, test_x: torch.Tensor, test_y: torch.Tensor, preprocess: Preprocess,
                          rt: Runtime, batch_size: int) -> tuple[float, float]:
    """Accuracy of the two online probes on the test split (held on the device), each rank
    taking a strided shard: one encoder pass per epoch gives both."""
    idx = torch.arange(rt.rank, test_x.shape[0], rt.world_size, device=test_x.device)
    h, z = extract_features(model.encoder, test_x[idx], preprocess, batch_size=batch_size, device=rt.device,
                            autocast_dtype=rt.autocast_dtype)
    y = test_y[idx]
    correct = [(model.probe_h(h).argmax(1) == y).sum(), (model.probe_z(z).argmax(1) == y).sum()]
    ch, cz, n = _sum_over_ranks([float(c) for c in correct] + [idx.numel()], rt.device)
    return ch / max(n, 1), cz / max(n, 1)


def fit(cfg: TrialConfig, reporter: Reporter, *, device: torch.device | None = None,
        on_epoch: Callable[[dict], None] | None = None, fault: Fault | None = None) -> dict[str, Any]:
    """Train one worker's share of a trial and return its final metrics.

    Call inside an initialized process group for several workers (Ray Train does that).
    Raises TrialFailure on a non-finite loss or a collapse. `fault` is the tests' hook that
    kills this worker at a global step (jepa_ray.faults)."""
    _threads(cfg)
    rt = runtime(cfg, device)
    torch.manual_seed(cfg.system.seed)  # identical initial weights on every rank

    splits = load_dataset(cfg.data)
    image_size = cfg.data.image_size or splits.image_size
    views = ViewMaker(cfg.views, image_size, splits.mean, splits.std, splits.num_channels)
    preprocess = Preprocess(splits.mean, splits.std, image_size, splits.num_channels).to(rt.device)
    train_x = splits.train_x.to(rt.device)  # uint8, decoded once; augmented on the device
    train_y = splits.train_y.to(rt.device)
    test_x, test_y = splits.test_x.to(rt.device), splits.test_y.to(rt.device)

    model = TrainModule(create_model(cfg), splits.num_classes, cfg.model.joint_view_forward).to(rt.device)
    if rt.device.type == "cuda" and cfg.system.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if rt.world_size > 1:
        if cfg.model.sync_bn:
            model.encoder = dist_lib.convert_sync_batchnorm(model.encoder, rt.device)
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    regularizer = create_regularizer(cfg)
    optimizer = create_optimizer(cfg, model.encoder, nn.ModuleList([model.probe_h, model.probe_z]))

    local_batch = cfg.optim.batch_size // rt.world_size
    if cfg.optim.batch_size > train_x.shape[0]:
        raise ConfigError(f"config field 'batch_size' = {cfg.optim.batch_size} is larger than the "
                          f"training split ({train_x.shape[0]} images); allowed: <= {train_x.shape[0]}")
    batches = BatchIterator(train_x.shape[0], cfg.optim.batch_size, rank=rt.rank,
                            world_size=rt.world_size, seed=cfg.system.seed)
    steps_per_epoch = len(batches)
    total_steps = cfg.optim.epochs * steps_per_epoch
    warmup = optim_lib.warmup_steps(cfg, steps_per_epoch)

    start_epoch, step, history = 0, 0, []
    restored = reporter.restore_dir()
    if restored is not None:
        start_epoch, step, history = _restore(restored, model, optimizer, rt.device)

    num_global = cfg.views.num_views
    for epoch in range(start_epoch, cfg.optim.epochs):
        net.train()
        batches.set_epoch(epoch)
        sums = torch.zeros(6, dtype=torch.float64, device=rt.device)
        pending = None
        t0 = time.perf_counter()
        for idx in torch.stack(list(batches)).to(rt.device):  # one host-to-device copy per epoch
            if fault is not None:
                fault.check(rt.rank, step)
            optim_lib.schedule_step(optimizer, step, total_steps, warmup, cfg)
            # One stream for the whole global batch, each rank keeping its rows: the views do not
            # depend on the number of workers.
            gen = dist_lib.step_generator(rt.device, cfg.system.seed, step, _STREAM_AUGMENT)
            x_views = views(train_x[idx], gen, offset=rt.rank * local_batch, total=cfg.optim.batch_size)
            out = train_step(net, regularizer, optimizer, x_views, train_y[idx], step, cfg, rt.autocast_dtype)
            # The finiteness check reads the previous step's loss: reading this step's would make
            # the CPU wait for the GPU every step. A non-finite loss stops the trial one step late.
            _check_finite(pending, epoch)
            pending = (step, out.loss, out.invariance, out.regularizer)
            sums += torch.cat([torch.stack([out.loss, out.invariance, out.regularizer,
                                            (out.z[0] != 0).float().mean()]), out.correct.float()]).double()
            step += 1
        _check_finite(pending, epoch)
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        seconds = time.perf_counter() - t0
        totals = _sum_over_ranks(sums.tolist() + [seconds], rt.device)
        n_steps = steps_per_epoch * rt.world_size
        online_h, online_z = _online_test_accuracy(model, test_x, test_y, preprocess, rt, local_batch * 2)
        epoch_metrics = {
            "epoch": epoch,
            "train/loss": totals[0] / n_steps,
            "train/invariance": totals[1] / n_steps,
            "train/regularizer": totals[2] / n_steps,
            "train/l0_density": totals[3] / n_steps,
            "online/train_acc": totals[4] / (n_steps * local_batch * num_global),
            "online/train_acc_z": totals[5] / (n_steps * local_batch * num_global),
            "online/linear_acc": online_h,
            "online/linear_acc_z": online_z,
            "train/rank_me": metrics_lib.rank_me(out.z[0].float()),
            "train/lr": optimizer.param_groups[0]["lr"],
            "throughput/img_per_s": steps_per_epoch * cfg.optim.batch_size / (totals[6] / rt.world_size),
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
        reporter.report(epoch_metrics, (lambda d, m=epoch_metrics, e=epoch: _save(
            d, model, cfg, m, optimizer, preprocess, e + 1, step, history)) if due else None, final=False)

    final = dict(history[-1]) if history else {}
    evaluation, rates = final_evaluation(cfg, model.encoder, splits, preprocess, rt)
    final.update(evaluation)

    def save_final(d: Path) -> Path:
        path = _save(d, model, cfg, final, optimizer, preprocess, cfg.optim.epochs, step, history)
        (path / ckpt_lib.ACTIVATION_FILE).write_text(json.dumps(rates))
        return path

    reporter.report(final, save_final, final=True)
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


def final_evaluation(cfg, model, splits: ImageSplits, preprocess: Preprocess, rt: Runtime
                     ) -> tuple[dict, list[float] | None]:
    """Final metrics on frozen features (computed on rank 0 and broadcast to every rank) and,
    on rank 0, the activation rate of each z dimension on the test split."""
    result, rates = [None], None
    if rt.is_main:
        result[0], te_z = evaluate_encoder(cfg, ckpt_lib.unwrap(model), splits, preprocess, device=rt.device,
                                           autocast_dtype=rt.autocast_dtype,
                                           batch_size=max(256, cfg.optim.batch_size))
        rates = metrics_lib.activation_rates(te_z).tolist()
    if dist_lib.is_distributed():
        dist.broadcast_object_list(result, src=0)
    return result[0], rates


# --------------------------------------------------------------------------------------------
# Reporters


class StoreReporter:
    """A worker's reporter: restores from the trial's newest checkpoint (else from
    `resume_from`, the store of an interrupted earlier run of the same trial), and reports by
    letting rank 0 write the checkpoint into the trial's store, then sending the metrics (with
    `checkpoint_uri` on rank 0 when a checkpoint was written) through `send` on every rank.

    The restore point is whatever the store holds, not what Ray Train last registered: a worker
    killed after writing a checkpoint but before the controller polled its report resumes
    after that epoch, so a lost worker costs at most the epoch in flight."""

    def __init__(self, store: ckpt_lib.TrialStore, *, send: Callable[[dict], None] | None = None,
                 resume_from: str | None = None, is_main: bool = True):
        self.store, self.send, self.resume_from, self.is_main = store, send, resume_from, is_main

    def restore_dir(self) -> Path | None:
        uri = self.store.latest() or (resumable_checkpoint(self.resume_from) if self.resume_from else None)
        return ckpt_lib.local_path(uri) if uri else None

    def report(self, metrics: dict[str, Any], write: CheckpointWriter | None, *, final: bool) -> None:
        out = dict(metrics)
        if write is not None and self.is_main:
            out["checkpoint_uri"] = (self.store.save_final(write) if final
                                     else self.store.save_epoch(int(metrics["epoch"]) + 1, write))
        if self.send is not None:
            self.send(out)


class LocalReporter(StoreReporter):
    """An in-process run into the directory `out_dir` (its store); `callback(metrics,
    checkpoint_uri or None)` is called for each report."""

    def __init__(self, out_dir: str | os.PathLike, resume_from: str | None = None,
                 callback: Callable[[dict, str | None], None] | None = None):
        send = (lambda m: callback(m, m.get("checkpoint_uri"))) if callback is not None else None
        super().__init__(ckpt_lib.TrialStore(out_dir), send=send, resume_from=resume_from)


def resumable_checkpoint(uri: str) -> str | None:
    """The checkpoint to resume from in `uri`: the newest of a trial store, or `uri` itself
    when it is a resumable checkpoint directory (what older sweeps recorded)."""
    latest = ckpt_lib.TrialStore(uri).latest()
    if latest is not None:
        return latest
    return uri if ckpt_lib.has_file(uri, ckpt_lib.TRAIN_STATE_FILE) else None


def train_loop_per_worker(loop_config: dict) -> None:
    """The Ray Train worker function: `fit` on this worker's share, reporting through
    ray.train.report (a TuneReportCallback on the controller forwards rank 0's reports to a
    Tune trial). A TrialFailure is recorded in the store by rank 0 and ends the worker
    normally: raising would make Ray Train restart the worker group in vain."""
    import ray.train

    cfg = config_lib.from_dict(loop_config["trial_config"])
    store = ckpt_lib.TrialStore(loop_config["trial_dir"])
    rank = ray.train.get_context().get_world_rank()
    reporter = StoreReporter(store, send=lambda m: ray.train.report(m), resume_from=loop_config.get("resume_from"),
                             is_main=rank == 0)
    try:
        fit(cfg, reporter, fault=loop_config.get("fault"))
    except TrialFailure as err:
        print(f"[jepa_ray] trial failed: {err}", file=sys.stderr, flush=True)
        if rank == 0:
            store.write_failure(str(err))


# --------------------------------------------------------------------------------------------
# Running a trial: the one way, for the command line and the sweep alike


def scaling_config(cfg: TrialConfig):
    from ray.train import ScalingConfig

    use_gpu = cfg.system.gpus_per_worker > 0
    resources = {"CPU": cfg.system.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = cfg.system.gpus_per_worker
    return ScalingConfig(num_workers=cfg.system.workers, use_gpu=use_gpu, resources_per_worker=resources)


def run_trial(cfg: TrialConfig, trial_dir: str, *, resume_from: str | None = None,
              report: Callable[[dict], None] | None = None, fault: Fault | None = None,
              ray_callbacks: list | None = None) -> tuple[dict, str]:
    """Train one trial into the store `trial_dir` and return (final metrics, final checkpoint
    URI). One worker trains in this process (`report` receives every epoch's metrics); several
    train under a TorchTrainer whose run state lives in TRIAL_DIR/ray (its reports reach a
    Tune trial through `ray_callbacks`). Both resume from the store's newest checkpoint, else
    from `resume_from`. Raises TrialFailure when the trial failed or ended without a result."""
    store = ckpt_lib.TrialStore(trial_dir)
    store.clear_failure()
    if cfg.system.workers == 1:
        final = fit(cfg, StoreReporter(store, send=report, resume_from=resume_from), fault=fault)
        return final, store.final()
    _fit_torch_trainer(cfg, store, resume_from, fault, ray_callbacks or [])
    why = store.failure()
    if why is not None:
        raise TrialFailure(why)
    uri = store.final()
    if uri is None:
        raise TrialFailure("the trial ended without final metrics")
    return json.loads(ckpt_lib.read_text(uri, ckpt_lib.METRICS_FILE)), uri


def _fit_torch_trainer(cfg: TrialConfig, store: ckpt_lib.TrialStore, resume_from: str | None,
                       fault: Fault | None, callbacks: list) -> None:
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = cfg.system.gpus_per_worker > 0
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"trial_config": config_lib.to_dict(cfg), "trial_dir": store.uri,
                           "resume_from": resume_from, "fault": fault},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=f"train-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}", storage_path=store.child("ray"),
            failure_config=FailureConfig(max_failures=cfg.system.max_failures), callbacks=callbacks),
    )
    try:
        trainer.fit()
    except Exception as err:  # TrainingFailedError: workers kept failing
        raise TrialFailure(f"training failed: {_one_line(err)}") from err


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
                                description="Train one Rectified LpJEPA / LpJEPA / LeJEPA trial: in this process "
                                            "with one worker, under a Ray Train TorchTrainer (DDP) with several.")
    p.add_argument("--preset", default="digits", help=f"one of: {', '.join(config_lib.PRESETS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by its flat name (e.g. --set mu=-1 --set p=0.5)")
    p.add_argument("--workers", type=int, help="DDP workers (1: train in this process, no Ray)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (0: CPU)")
    p.add_argument("--out", help="directory for the final checkpoint, OUT/checkpoint (required unless --list-keys)")
    p.add_argument("--storage-path", help="where the trial's checkpoints go (default: OUT; s3://... or a shared "
                                          "path for workers on several nodes)")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in OUT (or --storage-path)")
    p.add_argument("--address", help="Ray cluster address for several workers (default: connect if one runs, "
                                     "else start one)")
    p.add_argument("--list-keys", action="store_true", help="print every config key with its doc and exit")
    return p


RUNTIME_KEYS = frozenset({"workers", "gpus_per_worker", "cpus_per_worker", "threads_per_worker", "max_failures",
                          "checkpoint_every", "channels_last"})
"""Config keys a resumed run may change: where and how it runs, not what it trains (batches
and augmentations do not depend on the number of workers)."""


def check_resumable(store: ckpt_lib.TrialStore, cfg: TrialConfig, resume: bool) -> str | None:
    """The checkpoint a run into `store` resumes from (None: a fresh run). ConfigError when the
    store already holds a run and --resume was not given (it would be overwritten), when
    --resume finds nothing to resume, or when the config differs from the recorded one in
    what it trains."""
    latest, final = store.latest(), store.final()
    if not resume:
        if final or latest:
            what = "a finished trial" if final else "an unfinished trial"
            raise ConfigError(f"--out/--storage-path {store.uri} already holds {what}; pass --resume to "
                              "continue an unfinished one, or choose another directory")
        return None
    if final:
        raise ConfigError(f"--resume: {store.uri} holds a finished trial ({final}); nothing to resume")
    if not latest:
        raise ConfigError(f"--resume: no checkpoint to resume in {store.uri}; run without --resume")
    recorded = config_lib.flatten(ckpt_lib.read_config(latest))
    given = config_lib.flatten(cfg)
    changed = sorted(k for k in given if k not in RUNTIME_KEYS and str(given[k]) != str(recorded.get(k)))
    if changed:
        diff = ", ".join(f"{k}={given[k]} (recorded: {recorded.get(k)})" for k in changed)
        raise ConfigError(f"--resume: the config differs from the run being resumed in {diff}; "
                          f"only {', '.join(sorted(RUNTIME_KEYS))} may change")
    return latest


def _print_epoch(cfg: TrialConfig, metrics: dict) -> None:
    if "linear_acc" in metrics:
        return
    print(f"epoch {metrics['epoch'] + 1}/{cfg.optim.epochs}: loss {metrics['train/loss']:.4g} "
          f"l0 {metrics['train/l0_density']:.3f} online acc {metrics['online/linear_acc']:.3f} "
          f"({metrics['throughput/img_per_s']:.0f} img/s)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list_keys:
        for key in config_lib.LEAVES:
            print(f"{key:20s} {config_lib.field_doc(key)}")
        return 0
    from jepa_ray import faults

    try:
        if not args.out:
            raise ConfigError("--out is required: a directory for the final checkpoint")
        cfg = build_config(args.preset, args.set, args.workers, args.gpus_per_worker)
        out = Path(args.out).resolve()
        store = ckpt_lib.TrialStore(args.storage_path or out)
        check_resumable(store, cfg, args.resume)
        fault = faults.from_env()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    multi = cfg.system.workers > 1
    if args.address and not multi:
        print("note: --address is not used: a one-worker trial trains in this process", file=sys.stderr)
    if multi:
        from jepa_ray import cluster

        try:
            cluster.connect(args.address, num_cpus=max(2, math.ceil(cfg.system.workers * cfg.system.cpus_per_worker)))
            cluster.check_trial_fits(cluster.trial_demand(cfg, in_tune=False), cluster.capacity())
            cluster.check_storage_path(store.uri, cluster.max_node_count())
        except ConfigError as err:  # nothing fits, an --address that does not answer: bad input
            print(f"error: {err}", file=sys.stderr)
            _shutdown_ray()
            return 2
    out.mkdir(parents=True, exist_ok=True)
    try:
        metrics, checkpoint = run_trial(cfg, store.uri, fault=fault, report=lambda m: _print_epoch(cfg, m))
    except TrialFailure as err:
        print(f"error: trial failed: {err}", file=sys.stderr)
        return 1
    finally:
        if multi:
            _shutdown_ray()
    final_dir = out / ckpt_lib.FINAL_DIR
    if Path(ckpt_lib.local_path(checkpoint)).resolve() != final_dir:
        if final_dir.exists():
            shutil.rmtree(final_dir)
        shutil.copytree(ckpt_lib.local_path(checkpoint), final_dir)
    shown = {k: metrics[k] for k in FINAL_METRICS if k in metrics}
    print(json.dumps({"checkpoint": str(final_dir), **shown}, indent=2))
    return 0


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
