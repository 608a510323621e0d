"""End-of-trial evaluation on frozen features: the grid of linear heads on backbone features
(`linear_acc`) and on z (`linear_acc_z`), weighted kNN (`knn_acc`), sparsity of z and of the
backbone features, RankMe, and the closed-form target density."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from jepa_ray import contract as M
from jepa_ray import metrics
from jepa_ray.config.resolve import target_l0_density
from jepa_ray.config.schema import float_list
from jepa_ray.eval import probe

if TYPE_CHECKING:
    from jepa_ray.config import TrialConfig


Batch = tuple[torch.Tensor, torch.Tensor | None]
"""(uint8 images, labels or None) of consecutive images of a split."""


@dataclass(frozen=True)
class Batches:
    """The batches of `rows` images in all (a split, or a shard of one), in order. The count is
    known before the first batch, so that feature extraction fills matrices allocated once."""

    rows: int
    batches: Iterable[Batch]

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)


def tensor_batches(images_u8: torch.Tensor, labels: torch.Tensor | None, batch_size: int) -> Batches:
    """(images, labels) of consecutive rows of in-memory tensors (labels None: None)."""
    n = images_u8.shape[0]
    return Batches(
        n,
        (
            (images_u8[start : start + batch_size], None if labels is None else labels[start : start + batch_size])
            for start in range(0, n, batch_size)
        ),
    )


class FeatureRows:
    """The float32 (rows, d) matrices of backbone features and of z, and the labels, of a split,
    allocated at its first batch (which tells d and the device) and filled in order: a split's
    features are held once. Gathering per-batch pieces in lists and concatenating them held them
    twice at the end."""

    def __init__(self, rows: int) -> None:
        self.rows, self.filled = rows, 0
        self.h: torch.Tensor | None = None
        self.z: torch.Tensor | None = None
        self.y: torch.Tensor | None = None

    def _allocate(self, h: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.h = torch.empty(self.rows, h.shape[1], dtype=torch.float32, device=h.device)
        self.z = torch.empty(self.rows, z.shape[1], dtype=torch.float32, device=z.device)
        if labels is not None:
            self.y = torch.empty(self.rows, dtype=labels.dtype, device=h.device)

    def add(self, h: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Write the next batch's rows (cast to float32 as `Tensor.float` casts)."""
        if self.h is None:
            self._allocate(h, z, labels)
        stop = self.filled + h.shape[0]
        if stop > self.rows:
            raise ValueError(f"the batches hold more than the {self.rows} images they announced")
        self.h[self.filled : stop] = h
        self.z[self.filled : stop] = z
        if self.y is not None:
            self.y[self.filled : stop] = labels
        self.filled = stop

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(h, z, labels or None), once every announced row is written."""
        if self.h is None or self.filled != self.rows:
            raise ValueError(f"the batches held {self.filled} images; they announced {self.rows}")
        return self.h, self.z, self.y


@torch.no_grad()
def extract_batches(
    model: nn.Module,
    batches: Batches,
    normalize,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Backbone features, z and labels of every (uint8 images, labels) batch, in order (eval mode,
    center = the whole image). Only one batch of images is held at a time and the features go
    straight into (batches.rows, d) matrices: a streamed split's memory is its features'."""
    was_training = model.training
    model.eval()
    out = FeatureRows(batches.rows)
    for images, labels in batches:
        x = normalize(images.to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            h, z = model(x)
        out.add(h, z, None if labels is None else labels.to(device))
    model.train(was_training)
    return out.result()


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
    train_batches: Batches,
    test_batches: Batches,
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
