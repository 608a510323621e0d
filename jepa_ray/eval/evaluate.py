"""End-of-trial evaluation on frozen features: the grid of linear heads on backbone features
(`linear_acc`) and on z (`linear_acc_z`), weighted kNN (`knn_acc`), sparsity of z and of the
backbone features, RankMe, and the closed-form target density."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from jepa_ray import contract as M
from jepa_ray import metrics, targets
from jepa_ray.config.schema import float_list
from jepa_ray.eval import probe

if TYPE_CHECKING:
    from jepa_ray.config import TrialConfig


def tensor_batches(images_u8: torch.Tensor, labels: torch.Tensor | None, batch_size: int) -> Iterator[tuple]:
    """(images, labels) of consecutive rows of in-memory tensors (labels None: None)."""
    for start in range(0, images_u8.shape[0], batch_size):
        stop = start + batch_size
        yield images_u8[start:stop], None if labels is None else labels[start:stop]


@torch.no_grad()
def extract_batches(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    normalize,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Backbone features, z and labels of every (uint8 images, labels) batch, in order (eval mode,
    center = the whole image). Only one batch of images is held at a time: the features of a
    streamed split are gathered, never its images."""
    was_training = model.training
    model.eval()
    feats, zs, ys = [], [], []
    for images, labels in batches:
        x = normalize(images.to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            h, z = model(x)
        feats.append(h.float())
        zs.append(z.float())
        if labels is not None:
            ys.append(labels.to(device))
    model.train(was_training)
    return torch.cat(feats), torch.cat(zs), torch.cat(ys) if ys else None


def extract_features(
    model: nn.Module,
    images_u8: torch.Tensor,
    normalize,
    *,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features and z of every image of an in-memory tensor (see `extract_batches`)."""
    h, z, _ = extract_batches(
        model, tensor_batches(images_u8, None, batch_size), normalize, device=device, autocast_dtype=autocast_dtype
    )
    return h, z


def target_l0_density(cfg: TrialConfig) -> float:
    """Closed-form fraction of non-zero coordinates of the target (1 for a continuous one)."""
    return targets.get_target(cfg.target.target).l0_density(cfg.target.p, cfg.target.mu, cfg.target.sigma)


def evaluate(
    cfg: TrialConfig,
    train_h: torch.Tensor,
    train_z: torch.Tensor,
    train_y: torch.Tensor,
    test_h: torch.Tensor,
    test_z: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    device: torch.device,
) -> dict[str, float]:
    """The docs/design.md final metrics from cached features of the train and test splits."""
    e = cfg.eval
    grid = dict(
        lrs=float_list(e.probe_lrs),
        wds=float_list(e.probe_wds),
        epochs=e.probe_epochs,
        val_fraction=e.val_fraction,
        seed=cfg.system.seed,
        device=device,
        num_classes=num_classes,
    )
    on_h = probe.fit_linear_grid(train_h, train_y, test_h, test_y, **grid)
    on_z = probe.fit_linear_grid(train_z, train_y, test_z, test_y, **grid)
    z_summary = metrics.summary(test_z)
    return {
        M.LINEAR_ACC: on_h["test_acc"],
        M.LINEAR_ACC_Z: on_z["test_acc"],
        M.KNN_ACC: probe.knn_accuracy(
            train_h, train_y, test_h, test_y, k=e.knn_k, temperature=e.knn_temperature, num_classes=num_classes
        ),
        M.L0_DENSITY: z_summary["l0_density"],
        M.TARGET_L0_DENSITY: target_l0_density(cfg),
        M.L0_DENSITY_BACKBONE: metrics.l0_density(test_h),
        M.RANK_ME: z_summary["rank_me"],
        M.L1_SPARSITY: z_summary["l1_sparsity"],
        M.DEAD_FRACTION: z_summary["dead_fraction"],
        M.ALWAYS_ACTIVE_FRACTION: z_summary["always_active_fraction"],
        M.PROBE_BEST_LR: on_h["best_lr"],
        M.PROBE_BEST_WD: on_h["best_wd"],
    }


def evaluate_encoder(
    cfg: TrialConfig,
    model: nn.Module,
    splits,
    normalize,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    batch_size: int = 512,
) -> tuple[dict[str, float], torch.Tensor]:
    """`evaluate` on the frozen features of both splits of `splits` (an ImageSplits); also
    returns z of the test split."""
    return evaluate_batches(
        cfg,
        model,
        tensor_batches(splits.train_x, splits.train_y, batch_size),
        tensor_batches(splits.test_x, splits.test_y, batch_size),
        splits.num_classes,
        normalize,
        device=device,
        autocast_dtype=autocast_dtype,
    )


def evaluate_batches(
    cfg: TrialConfig,
    model: nn.Module,
    train_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    test_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    normalize,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> tuple[dict[str, float], torch.Tensor]:
    """`evaluate` on the frozen features of two streams of (uint8 images, labels) batches (one
    split after the other, a batch of images at a time); also returns z of the test split."""
    kw = dict(device=device, autocast_dtype=autocast_dtype)
    tr_h, tr_z, tr_y = extract_batches(model, train_batches, normalize, **kw)
    te_h, te_z, te_y = extract_batches(model, test_batches, normalize, **kw)
    result = evaluate(cfg, tr_h, tr_z, tr_y, te_h, te_z, te_y, num_classes, device)
    return result, te_z
