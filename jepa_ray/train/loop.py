"""The training loop of one worker, read top to bottom in `fit`: load the data, build the model,
restore from the trial's store, then per epoch the steps, the epoch's metrics, the collapse
guard and a report (with a checkpoint every `checkpoint_every` epochs); at the end the final
evaluation on frozen features and the final checkpoint.

Every random choice of a step (batch order, augmentations, slices, target samples) is drawn
from generators seeded by (seed, epoch or global step) (jepa_ray.seeding), so a run resumed from
an epoch checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from jepa_ray import contract as M
from jepa_ray import distributed as dist_lib
from jepa_ray import metrics as metrics_lib
from jepa_ray.data import ViewMaker
from jepa_ray.eval.evaluate import evaluate_batches, extract_batches
from jepa_ray.model import Preprocess, create_model
from jepa_ray.regularizers import create_regularizer
from jepa_ray.seeding import STREAM_AUGMENT, step_generator
from jepa_ray.train import checkpoint as ckpt_lib
from jepa_ray.train import optim as optim_lib
from jepa_ray.train.faults import Fault
from jepa_ray.train.feed import Feed, open_feed
from jepa_ray.train.guard import check_collapse, check_finite
from jepa_ray.train.step import Runtime, StepStats, TrainModule, runtime, set_threads, train_step

if TYPE_CHECKING:
    from jepa_ray.config import TrialConfig

CheckpointWriter = Callable[[Path], Path]
"""Writes a checkpoint directory at the given path and returns it (`_save` bound to the state)."""


class Reporter(Protocol):
    """Where a worker finds its restore point and sends its per-epoch metrics and checkpoints."""

    def restore_point(self) -> str | None: ...

    def report(self, metrics: dict[str, Any], write: CheckpointWriter | None, *, final: bool) -> None: ...


# --------------------------------------------------------------------------------------------
# The loop


def fit(
    cfg: TrialConfig,
    reporter: Reporter,
    *,
    device: torch.device | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    fault: Fault | None = None,
) -> dict[str, Any]:
    """Train one worker's share of a trial and return its final metrics.

    Prints (rank 0) its device and precision (`auto` resolved), which its checkpoints' config
    records. Call inside an initialized process group for several workers (Ray Train does that).
    Raises TrialFailure on a non-finite loss or a collapse. `fault` is the tests' hook that
    kills this worker at a global step (jepa_ray.train.faults)."""
    set_threads(cfg)
    restored = reporter.restore_point()
    cfg, rt = _start(cfg, restored, device)
    worker = _build(cfg, rt)

    start_epoch, step, history = 0, 0, []
    if restored is not None:
        start_epoch, step, history = _restore(restored, worker.model, worker.optimizer, rt.device)

    for epoch in range(start_epoch, cfg.optim.epochs):
        steps = _train_epoch(worker, epoch, step, fault)
        step = steps.next_step
        epoch_metrics = _epoch_metrics(worker, epoch, steps)
        history.append(epoch_metrics)
        check_collapse(cfg, epoch_metrics)
        if on_epoch is not None:
            on_epoch(epoch_metrics)
        if epoch == cfg.optim.epochs - 1:
            break  # the final report carries the final metrics and checkpoint
        reporter.report(epoch_metrics, _epoch_checkpoint(worker, epoch_metrics, epoch, step, history), final=False)

    return _finish(worker, reporter, step, history)


@dataclass
class _Worker:
    """What one worker trains with, built once: the data, the model (`net` is what a step calls:
    DDP around `model` with several workers, `model` itself with one), its loss and optimizer, and
    the step counts the schedule and the epoch's metrics need."""

    cfg: TrialConfig
    rt: Runtime
    feed: Feed
    views: ViewMaker
    preprocess: Preprocess
    model: TrainModule
    net: nn.Module
    regularizer: nn.Module
    optimizer: torch.optim.Optimizer
    local_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


@dataclass
class _EpochSteps:
    """What an epoch's steps leave: the sums of their statistics (loss, invariance, regularizer,
    z's l0 density, the two probes' right answers; on the device), the last step's terms, the
    global step to continue from, and when the steps began and how long they took."""

    sums: torch.Tensor
    last: StepStats | None
    next_step: int
    started: float
    seconds: float


def _start(cfg: TrialConfig, restored: str | None, device: torch.device | None) -> tuple[TrialConfig, Runtime]:
    """This process's runtime (rank, device, precision: a resumed run keeps its checkpoint's) and
    a copy of cfg saying the precision it trains at, which rank 0 prints."""
    rt = runtime(cfg, device, resumed=ckpt_lib.read_config(restored).system.precision if restored else None)
    cfg = copy.deepcopy(cfg)
    cfg.system.precision = rt.precision  # checkpoints record what trained, not "auto"
    if rt.is_main:
        print(
            f"[jepa_ray] device {rt.device}, precision {rt.precision} ({rt.precision_reason})",
            file=sys.stderr,
            flush=True,
        )
    return cfg, rt


def _build(cfg: TrialConfig, rt: Runtime) -> _Worker:
    """The data feed and its views, the model, the regularizer and the optimizer. The global
    generator is seeded first, so that every rank draws the same initial weights."""
    torch.manual_seed(cfg.system.seed)
    feed, views = open_feed(cfg, rt, lambda mean, std, size, channels: ViewMaker(cfg.views, size, mean, std, channels))
    preprocess = Preprocess(feed.mean, feed.std, feed.image_size, feed.num_channels).to(rt.device)
    model, net = _place_model(cfg, rt, feed.num_classes)
    regularizer = create_regularizer(cfg)
    optimizer = optim_lib.create_optimizer(cfg, model.encoder, nn.ModuleList([model.probe_h, model.probe_z]))
    steps_per_epoch = len(feed.batches)
    return _Worker(
        cfg,
        rt,
        feed,
        views,
        preprocess,
        model,
        net,
        regularizer,
        optimizer,
        local_batch=cfg.optim.batch_size // rt.world_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=cfg.optim.epochs * steps_per_epoch,
        warmup_steps=optim_lib.warmup_steps(cfg, steps_per_epoch),
    )


def _place_model(cfg: TrialConfig, rt: Runtime, num_classes: int) -> tuple[TrainModule, nn.Module]:
    """The encoder with its online probes on the device and, with several workers, the DDP
    wrapper the steps call (its BatchNorms synchronized if `sync_bn`)."""
    model = TrainModule(create_model(cfg), num_classes, cfg.model.joint_view_forward).to(rt.device)
    if rt.device.type == "cuda" and cfg.system.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if rt.world_size == 1:
        return model, model
    if cfg.model.sync_bn:
        model.encoder = dist_lib.convert_sync_batchnorm(model.encoder, rt.device)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return model, net


def _train_epoch(worker: _Worker, epoch: int, step: int, fault: Fault | None) -> _EpochSteps:
    """The steps of one epoch from global step `step`, each at its scheduled learning rate. The
    statistics are summed on the device and read once, at the end of the epoch."""
    cfg, rt = worker.cfg, worker.rt
    worker.net.train()
    sums = torch.zeros(6, dtype=torch.float64, device=rt.device)
    pending, out = None, None
    started = time.perf_counter()
    for x, y in worker.feed.epoch(epoch):
        if fault is not None:
            fault.check(rt.rank, step)
        optim_lib.schedule_step(worker.optimizer, step, worker.total_steps, worker.warmup_steps, cfg)
        x_views = _step_views(worker, x, step)
        out = train_step(worker.net, worker.regularizer, worker.optimizer, x_views, y, step, cfg, rt.autocast_dtype)
        # The finiteness check reads the previous step's loss: reading this step's would make
        # the CPU wait for the GPU every step. A non-finite loss stops the trial one step late.
        check_finite(pending, epoch)
        pending = (step, out.loss, out.invariance, out.regularizer)
        sums += _step_sums(out)
        step += 1
    check_finite(pending, epoch)
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    return _EpochSteps(sums, out, step, started, time.perf_counter() - started)


def _step_views(worker: _Worker, x: torch.Tensor | list[torch.Tensor], step: int) -> list[torch.Tensor]:
    """The views of a step's batch, drawn from one stream for the whole global batch with each
    rank keeping its rows, so that the views do not depend on the number of workers (unless the
    data workers made them: stream_augment=workers)."""
    if isinstance(x, list):
        return x
    generator = step_generator(worker.rt.device, worker.cfg.system.seed, step, STREAM_AUGMENT)
    offset = worker.rt.rank * worker.local_batch
    return worker.views(x, generator, offset=offset, total=worker.cfg.optim.batch_size)


def _step_sums(out: StepStats) -> torch.Tensor:
    """A step's share of the epoch's sums: loss, invariance, regularizer, the l0 density of the
    first view's z, and the two probes' right answers (float64)."""
    terms = torch.stack([out.loss, out.invariance, out.regularizer, (out.z[0] != 0).float().mean()])
    return torch.cat([terms, out.correct.float()]).double()


def _epoch_metrics(worker: _Worker, epoch: int, steps: _EpochSteps) -> dict[str, Any]:
    """The epoch's metrics, the same on every rank: the step statistics summed over ranks, the
    online probes on the test split, the last step's RankMe and learning rate, throughput and
    seconds (`time/epoch_wall_s` includes the online test evaluation)."""
    cfg, rt = worker.cfg, worker.rt
    totals = dist_lib.sum_over_ranks(steps.sums.tolist() + [steps.seconds], rt.device)
    n_steps = worker.steps_per_epoch * rt.world_size
    global_views = n_steps * worker.local_batch * cfg.views.num_views
    online_h, online_z = _online_test_accuracy(worker.model, worker.feed, worker.preprocess, rt, worker.local_batch * 2)
    return {
        M.EPOCH: epoch,
        M.TRAIN_LOSS: totals[0] / n_steps,
        M.TRAIN_INVARIANCE: totals[1] / n_steps,
        M.TRAIN_REGULARIZER: totals[2] / n_steps,
        M.TRAIN_L0_DENSITY: totals[3] / n_steps,
        M.ONLINE_TRAIN_ACC: totals[4] / global_views,
        M.ONLINE_TRAIN_ACC_Z: totals[5] / global_views,
        M.ONLINE_LINEAR_ACC: online_h,
        M.ONLINE_LINEAR_ACC_Z: online_z,
        M.TRAIN_RANK_ME: metrics_lib.rank_me(steps.last.z[0].float()),
        M.TRAIN_LR: worker.optimizer.param_groups[0]["lr"],
        M.IMG_PER_S: worker.steps_per_epoch * cfg.optim.batch_size / (totals[6] / rt.world_size),
        M.EPOCH_S: steps.seconds,
        M.EPOCH_WALL_S: time.perf_counter() - steps.started,
        M.DATA_SIZES[0]: worker.feed.num_train,
        M.DATA_SIZES[1]: worker.feed.num_test,
    }


@torch.no_grad()
def _online_test_accuracy(
    model: TrainModule, feed: Feed, preprocess: Preprocess, rt: Runtime, batch_size: int
) -> tuple[float, float]:
    """Accuracy of the two online probes on the test split, each rank taking a strided shard:
    one encoder pass per epoch gives both."""
    h, z, y = extract_batches(
        model.encoder,
        feed.test_shard(rt.rank, rt.world_size, batch_size),
        preprocess,
        device=rt.device,
        autocast_dtype=rt.autocast_dtype,
    )
    correct = [(model.probe_h(h).argmax(1) == y).sum(), (model.probe_z(z).argmax(1) == y).sum()]
    ch, cz, n = dist_lib.sum_over_ranks([float(c) for c in correct] + [y.numel()], rt.device)
    return ch / max(n, 1), cz / max(n, 1)


def _epoch_checkpoint(
    worker: _Worker, metrics: dict[str, Any], epoch: int, step: int, history: list[dict[str, Any]]
) -> CheckpointWriter | None:
    """What writes the checkpoint after `epoch` if one is due (every `checkpoint_every` epochs; 0:
    none before the final one), else None. A run resumed from it continues at the next epoch and
    global step `step`."""
    every = worker.cfg.system.checkpoint_every
    if not (every > 0 and (epoch + 1) % every == 0):
        return None
    return lambda path: _save(
        path, worker.model, worker.cfg, metrics, worker.optimizer, worker.preprocess, epoch + 1, step, history
    )


def _finish(worker: _Worker, reporter: Reporter, step: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch's metrics with the final evaluation's, reported with the final checkpoint
    (which adds the activation rates of z)."""
    final = dict(history[-1]) if history else {}
    if not worker.rt.is_main:
        worker.feed.close()  # only rank 0 evaluates; its data workers serve the evaluation
    evaluation, rates = final_evaluation(worker.cfg, worker.model.encoder, worker.feed, worker.preprocess, worker.rt)
    worker.feed.close()
    final.update(evaluation)

    def save_final(path: Path) -> Path:
        saved = _save(
            path,
            worker.model,
            worker.cfg,
            final,
            worker.optimizer,
            worker.preprocess,
            worker.cfg.optim.epochs,
            step,
            history,
        )
        (saved / ckpt_lib.ACTIVATION_FILE).write_text(json.dumps(rates))
        return saved

    reporter.report(final, save_final, final=True)
    return final


def final_evaluation(
    cfg: TrialConfig, model: nn.Module, feed: Feed, preprocess: Preprocess, rt: Runtime
) -> tuple[dict, list[float] | None]:
    """Final metrics on frozen features (computed on rank 0 and broadcast to every rank) and,
    on rank 0, the activation rate of each z dimension on the test split. The features are
    extracted a batch at a time (streamed splits are never held as images); `time/eval_s` is the
    whole evaluation and `time/eval_s_per_10k` that per 10,000 images of both splits. The
    features are extracted in fp32 whatever the training precision: probes on bf16 features
    read lower (a random-init encoder's z probes at 0.314 in bf16 against 0.390 in fp32 on
    CIFAR-10), and the final metrics must compare across precisions."""
    result, rates = [None], None
    if rt.is_main:
        t0 = time.perf_counter()
        batch_size = max(256, cfg.optim.batch_size)
        result[0], te_z = evaluate_batches(
            cfg,
            ckpt_lib.unwrap(model),
            feed.split("train", batch_size),
            feed.split("test", batch_size),
            feed.num_classes,
            preprocess,
            device=rt.device,
            autocast_dtype=None,
        )
        rates = metrics_lib.activation_rates(te_z).tolist()
        seconds = time.perf_counter() - t0
        result[0][M.EVAL_S] = seconds
        result[0][M.EVAL_S_PER_10K] = seconds * 1e4 / max(feed.num_train + feed.num_test, 1)
    if dist_lib.is_distributed():
        dist.broadcast_object_list(result, src=0)
    return result[0], rates


# --------------------------------------------------------------------------------------------
# State (what a resumable checkpoint holds)


def _restore(
    path: str, model: TrainModule, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[int, int, list[dict[str, Any]]]:
    """Load the encoder, the probes and the optimizer from a checkpoint; the epoch and global step
    to continue from and the history so far."""
    state = ckpt_lib.load_state(path, ckpt_lib.MODEL_FILE, device)
    model.encoder.load_state_dict(state["model"])
    model.probe_h.load_state_dict(state["online_probe"])
    model.probe_z.load_state_dict(state["online_probe_z"])
    train = ckpt_lib.load_state(path, ckpt_lib.TRAIN_STATE_FILE, device)
    optimizer.load_state_dict(train["optimizer"])
    return int(train["epoch"]), int(train["step"]), ckpt_lib.read_history(path)


def _save(
    path: Path,
    model: TrainModule,
    cfg: TrialConfig,
    metrics: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    preprocess: Preprocess,
    epoch: int,
    step: int,
    history: list[dict[str, Any]],
) -> Path:
    """Write a checkpoint at `path` that a run resumes from at `epoch` and global step `step`."""
    return ckpt_lib.save_checkpoint(
        path,
        model=model.encoder,
        cfg=cfg,
        metrics=metrics,
        history=history,
        extra_state={"online_probe": model.probe_h.state_dict(), "online_probe_z": model.probe_z.state_dict()},
        train_state={"epoch": epoch, "step": step, "optimizer": optimizer.state_dict()},
        extra_files={ckpt_lib.PREPROCESSING_FILE: json.dumps(preprocess.spec(), indent=2)},
    )
