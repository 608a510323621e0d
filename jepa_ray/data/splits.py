"""A dataset in memory (`ImageSplits`: uint8 images and int64 labels of the train and test
splits), the one stratified subset rule, and `load_dataset`, which loads through the registry.

Every dataset is decoded once into memory (digits: 1,797 8x8 images; CIFAR: 50,000 32x32 images,
150 MB). Nothing is decoded per step: the trainer gathers a batch by indexing these tensors (on
the training device when they fit) and `jepa_ray.data.augment.ViewMaker` augments the whole batch
there."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from jepa_ray.data.registry import dataset_info

if TYPE_CHECKING:
    from jepa_ray.config import DataConfig

SPLIT_SEED = 0
"""Seed of every fixed split and subset: they never depend on the trial seed, so all trials of a
sweep see the same train and test images."""


@dataclass
class ImageSplits:
    """A dataset in memory: uint8 images (N, C, S, S), int64 labels in [0, num_classes).

    `mean` and `std` are per-channel statistics of train_x scaled to [0, 1] (for normalization);
    they are computed from train_x when left empty.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    classes: list[str]
    name: str
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise ValueError(f"{split}_x: expected a uint8 tensor (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(
                    f"{split}_y: expected int64 labels of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}"
                )
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(
                    f"{split}_y: labels must lie in [0, {self.num_classes}), got [{int(y.min())}, {int(y.max())}]"
                )
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(
                f"train_x and test_x image shapes differ: {tuple(self.train_x.shape[1:])} "
                f"vs {tuple(self.test_x.shape[1:])}"
            )
        if len(self.classes) != self.num_classes:
            raise ValueError(f"classes: expected {self.num_classes} names, got {len(self.classes)}")
        if not self.mean or not self.std:
            self.mean, self.std = channel_stats(self.train_x)

    @property
    def num_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Side of the stored (square) images."""
        return int(self.train_x.shape[-1])

    def subset_train(self, indices: torch.Tensor) -> ImageSplits:
        """Keep only these train rows; mean/std are recomputed from them."""
        return replace(self, train_x=self.train_x[indices], train_y=self.train_y[indices], mean=(), std=())


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1]. Computed exactly from a
    256-bin histogram per channel: no float copy of a 50k-image set is ever made."""
    if x.shape[0] == 0:
        raise ValueError("channel_stats: no images")
    return stats_from_histograms(channel_histograms(x))


def channel_histograms(x: torch.Tensor) -> torch.Tensor:
    """(C, 256) float64 counts of each uint8 level per channel; sums of these over chunks of a
    split give the split's (so streamed statistics equal the in-memory ones)."""
    return torch.stack([torch.bincount(x[:, c].reshape(-1).cpu(), minlength=256) for c in range(x.shape[1])]).double()


def stats_from_histograms(hist: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on [0, 1] from (C, 256) level counts."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(hist.shape[0]):
        p = hist[c] / hist[c].sum()
        mean = float((p * levels).sum())
        var = float((p * (levels - mean).square()).sum())
        means.append(mean)
        stds.append(max(var**0.5, 1e-6))
    return tuple(means), tuple(stds)


def load_dataset(cfg: DataConfig) -> ImageSplits:
    """Decode the dataset named by cfg.dataset into memory, then apply cfg.max_train_samples and
    cfg.max_test_samples as fixed stratified subsets of the splits."""
    splits = dataset_info(cfg.dataset).load()(cfg)
    if 0 < cfg.max_train_samples < len(splits.train_y):
        keep = stratified_indices(splits.train_y, cfg.max_train_samples, seed=SPLIT_SEED)
        splits = splits.subset_train(keep)
    if 0 < cfg.max_test_samples < len(splits.test_y):
        keep = stratified_indices(splits.test_y, cfg.max_test_samples, seed=SPLIT_SEED)
        splits = replace(splits, test_x=splits.test_x[keep], test_y=splits.test_y[keep])
    return splits


def stratified_indices(labels: torch.Tensor, count: int, seed: int = SPLIT_SEED) -> torch.Tensor:
    """Sorted indices of `count` rows whose class counts are proportional to those of `labels`
    (largest-remainder rounding, so each class is within one sample of its exact share); the rows
    of each class are the first ones of a permutation seeded by `seed`."""
    n = len(labels)
    if not 0 <= count <= n:
        raise ValueError(f"count: expected 0 <= count <= {n}, got {count}")
    classes, class_counts = torch.unique(labels, return_counts=True)
    quota = class_counts.double() * count / n
    take = quota.floor().long()
    leftover = count - int(take.sum())
    # Ties in the fractional part go to the lower class index (stable sort), so the result is fixed.
    order = torch.sort(quota - take.double(), descending=True, stable=True).indices
    take[order[:leftover]] += 1
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for cls, k in zip(classes.tolist(), take.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.sort(torch.cat(chosen)).values


def split_holdout(x: torch.Tensor, y: torch.Tensor, test_fraction: float) -> tuple[torch.Tensor, ...]:
    """A fixed stratified train/test split of one labelled set."""
    test_idx = stratified_indices(y, round(test_fraction * len(y)))
    is_test = torch.zeros(len(y), dtype=torch.bool)
    is_test[test_idx] = True
    return x[~is_test], y[~is_test], x[is_test], y[is_test]
