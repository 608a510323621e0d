"""The streaming input path: images stay on disk (an image folder or parquet shards) and each
batch is read, decoded and fitted to the training size in DataLoader worker processes, so a
worker's memory is bounded by a few batches whatever the dataset's size.

The batches are the in-memory path's: the same `BatchIterator` index stream, per (seed, epoch,
rank), each rank decoding only its rows. The DataLoader's sampler yields (epoch, step) keys and
the dataset maps a key to that step's rows, so a run resumed at an epoch boundary reads exactly
the batches the uninterrupted run reads. Augmentation runs on the training device by default
(the in-memory path's `ViewMaker` on the same uint8 batch: the same views bit for bit); with
stream_augment=workers it runs in the data workers on CPU, seeded per global step. A trial's one
persistent loader (`TrialBatches`) also serves the rows of the online test passes and of the
final evaluation, from the same workers.

`source_splits` also serves the in-memory path (`materialize`): both read through the same
sources, so bad images are skipped the same way (jepa_ray.data.sources)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from jepa_ray.data.batches import BatchIterator
from jepa_ray.data.registry import dataset_info
from jepa_ray.data.sources import ImageSource, ParquetSource, class_names, imagefolder_sources, parquet_shards
from jepa_ray.data.splits import SPLIT_SEED, ImageSplits, channel_histograms, stats_from_histograms, stratified_indices
from jepa_ray.errors import ConfigError, UsageError
from jepa_ray.seeding import STREAM_AUGMENT, step_generator

if TYPE_CHECKING:
    from jepa_ray.config import DataConfig
    from jepa_ray.data.augment import ViewMaker

log = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.2
"""An image folder without train/ and test/ folders is split 80/20 (fixed, stratified)."""


@dataclass
class SourceSplits:
    """A dataset as indexed sources (nothing decoded): what the streaming path trains on."""

    train: ImageSource
    test: ImageSource
    num_classes: int
    classes: list[str]
    name: str
    side: int
    """Side of the square uint8 images the sources are read at."""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    num_channels: int = 3

    @property
    def image_size(self) -> int:
        return self.side

    def decoded_bytes(self) -> int:
        """Size of both splits once decoded as uint8 (what the in-memory path would hold)."""
        return (len(self.train) + len(self.test)) * self.num_channels * self.side * self.side


def _holdout(source: ImageSource) -> tuple[ImageSource, ImageSource]:
    """The fixed stratified 80/20 split of `jepa_ray.data.splits.split_holdout`, as index subsets."""
    test_idx = stratified_indices(source.labels, round(HOLDOUT_FRACTION * len(source)))
    is_test = torch.zeros(len(source), dtype=torch.bool)
    is_test[test_idx] = True
    return source.subset(torch.nonzero(~is_test).flatten()), source.subset(test_idx)


def _parquet_sources(root: Path) -> tuple[ImageSource, ImageSource, list[str]]:
    train_files, test_files = parquet_shards(root, "train"), parquet_shards(root, "test")
    if not train_files or not test_files:
        raise ConfigError(
            f"config field 'data_dir' = '{root}' lacks train and test shards; expected train.parquet and "
            f"test.parquet, or train/ and test/ folders of *.parquet files"
        )
    train, test = ParquetSource(train_files), ParquetSource(test_files)
    classes = class_names(train.metadata)
    num_classes = len(classes) if classes else int(max(train.labels.max(), test.labels.max())) + 1
    for name, src in (("train", train), ("test", test)):
        if int(src.labels.min()) < 0 or int(src.labels.max()) >= num_classes:
            raise UsageError(
                f"{root} {name} shards: column 'label' must lie in [0, {num_classes}), "
                f"got [{int(src.labels.min())}, {int(src.labels.max())}]"
            )
    return train, test, classes or [str(i) for i in range(num_classes)]


def source_splits(cfg: DataConfig, *, subsets: bool = True) -> SourceSplits:
    """Index cfg's image folder or parquet shards (reading no pixels but the first image's, for
    image_size=0), then, when `subsets`, keep cfg.max_train_samples / max_test_samples as the
    fixed stratified subsets `load_dataset` keeps."""
    root = Path(cfg.data_dir or "").expanduser()
    if not root.is_dir():
        raise ConfigError(f"config field 'data_dir' = '{root}' is not an existing directory")
    if cfg.dataset == "parquet":
        train, test, classes = _parquet_sources(root)
    elif cfg.dataset == "imagefolder":
        train, test, classes = imagefolder_sources(root)
        if test is None:
            train, test = _holdout(train)
    else:
        raise ConfigError(f"config field 'stream' = 'stream' is not allowed for dataset {cfg.dataset!r}")
    if subsets and 0 < cfg.max_train_samples < len(train):
        train = train.subset(stratified_indices(train.labels, cfg.max_train_samples, seed=SPLIT_SEED))
    if subsets and 0 < cfg.max_test_samples < len(test):
        test = test.subset(stratified_indices(test.labels, cfg.max_test_samples, seed=SPLIT_SEED))
    side = cfg.image_size or train.native_side()
    return SourceSplits(train, test, len(classes), classes, cfg.dataset, side)


def use_stream(cfg: DataConfig, splits: SourceSplits | None = None) -> bool:
    """Whether cfg trains from the streaming path: stream=stream, or stream=auto with a decoded
    size above stream_threshold_gb (the in-memory path holds it once per training worker)."""
    if cfg.stream == "memory" or not dataset_info(cfg.dataset).streamable:
        return False
    if cfg.stream == "stream":
        return True
    splits = splits or source_splits(cfg)
    return splits.decoded_bytes() > cfg.stream_threshold_gb * 1e9


# --------------------------------------------------------------------------------------------
# Reading images


def read_rows(source: ImageSource, rows: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """uint8 images (len(rows), 3, side, side), their int64 labels and, for each unreadable image
    among them (each replaced by the next readable one), "<where>: <why>"."""
    out = torch.empty((len(rows), 3, side, side), dtype=torch.uint8)
    labels = torch.empty(len(rows), dtype=torch.int64)
    bad = []
    for k, i in enumerate(rows.tolist()):
        out[k], labels[k], problem = source.read(i, side)
        if problem:
            bad.append(problem)
    return out, labels, bad


def check_bad(bad: list[str], total: int, max_fraction: float, where: str) -> None:
    """UsageError when more than max_fraction of `total` images were unreadable; a log line otherwise."""
    if len(bad) > max_fraction * total:
        raise UsageError(
            f"{where}: {len(bad)} of {total} images are unreadable or truncated, more than max_bad_fraction="
            f"{max_fraction} (first: {bad[0]}); fix or remove them, or raise max_bad_fraction to skip them"
        )
    if bad:
        log.warning(
            "%s: skipped %d unreadable image(s) of %d, each replaced by the next readable one (first: %s)",
            where,
            len(bad),
            total,
            bad[0],
        )


def sample_stats(source: ImageSource, side: int, count: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of a fixed stratified sample of `count` images (all of them when the
    split is smaller: then exactly `channel_stats` of the in-memory split), one chunk at a time."""
    rows = torch.arange(len(source)) if count >= len(source) else stratified_indices(source.labels, count)
    hist = torch.zeros(3, 256, dtype=torch.float64)
    for start in range(0, len(rows), 256):
        images, _, _ = read_rows(source, rows[start : start + 256], side)
        hist += channel_histograms(images)
    return stats_from_histograms(hist)


def _read_all(source: ImageSource, side: int, threads: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    chunks = [torch.arange(s, min(s + 512, len(source))) for s in range(0, len(source), 512)]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        parts = list(pool.map(lambda rows: read_rows(source, rows, side), chunks))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), [b for p in parts for b in p[2]]


def materialize(splits: SourceSplits, max_bad_fraction: float) -> ImageSplits:
    """The in-memory path over the same sources: every image decoded once (in threads)."""
    threads = min(8, torch.get_num_threads())
    tr_x, tr_y, tr_bad = _read_all(splits.train, splits.side, threads)
    check_bad(tr_bad, len(splits.train), max_bad_fraction, f"{splits.name} train split")
    te_x, te_y, te_bad = _read_all(splits.test, splits.side, threads)
    check_bad(te_bad, len(splits.test), max_bad_fraction, f"{splits.name} test split")
    return ImageSplits(tr_x, tr_y, te_x, te_y, num_classes=splits.num_classes, classes=splits.classes, name=splits.name)


def open_stream(cfg: DataConfig, splits: SourceSplits | None = None) -> SourceSplits:
    """cfg's sources with their normalization statistics (from cfg.stats_samples train images)."""
    splits = splits or source_splits(cfg)
    mean, std = sample_stats(splits.train, splits.side, cfg.stats_samples)
    return replace(splits, mean=mean, std=std)


# --------------------------------------------------------------------------------------------
# DataLoader datasets


class WorkerAugment:
    """The views of a streamed batch made in the data worker: the in-memory path's ViewMaker on a
    CPU generator seeded by the global step, this rank's rows of the global batch."""

    def __init__(self, views: ViewMaker, seed: int, steps_per_epoch: int, offset: int, total: int):
        self.views, self.seed, self.steps_per_epoch = views, seed, steps_per_epoch
        self.offset, self.total = offset, total

    def __call__(self, x: torch.Tensor, epoch: int, step: int) -> list[torch.Tensor]:
        gen = step_generator("cpu", self.seed, epoch * self.steps_per_epoch + step, STREAM_AUGMENT)
        return self.views(x, gen, offset=self.offset, total=self.total)


class EpochSteps(Sampler):
    """The (epoch, step) keys of one epoch, in order; set_epoch picks the epoch."""

    def __init__(self, steps: int):
        self.steps, self.epoch = steps, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, s) for s in range(self.steps))


class TrainBatches(Dataset):
    """(epoch, step) -> this rank's batch {"x": uint8 images or views, "y": labels, "bad": [problems]}."""

    def __init__(self, source: ImageSource, side: int, batches: BatchIterator, augment: WorkerAugment | None = None):
        self.source, self.side, self.batches, self.augment = source, side, batches, augment

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, step = key
        x, y, bad = read_rows(self.source, self.batches.local_batch_indices(epoch, step), self.side)
        return {"x": self.augment(x, epoch, step) if self.augment else x, "y": y, "bad": bad}


class RowBatches(Dataset):
    """Batch k of fixed `rows` of a source, in order (evaluation and feature extraction)."""

    def __init__(self, source: ImageSource, side: int, rows: torch.Tensor, batch_size: int):
        self.source, self.side, self.rows, self.batch_size = source, side, rows, batch_size

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __getitem__(self, k: int) -> dict[str, Any]:
        rows = self.rows[k * self.batch_size : (k + 1) * self.batch_size]
        x, y, bad = read_rows(self.source, rows, self.side)
        return {"x": x, "y": y, "bad": bad}


class RowsKey(NamedTuple):
    """The key of an evaluation batch: rows `rows` (a range: start, stop, stride) of split `split`,
    in order."""

    split: str
    rows: range


def row_keys(split: str, rows: range, batch_size: int) -> list[RowsKey]:
    """The keys of `rows` of `split` in order, batch_size rows a batch (the last one shorter)."""
    return [RowsKey(split, rows[k : k + batch_size]) for k in range(0, len(rows), batch_size)]


class PassKeys(Sampler):
    """The keys of the pass a persistent loader serves next (a training epoch, the online test
    pass, a split of the final evaluation), set before each pass; one pass at a time."""

    def __init__(self) -> None:
        self.keys: list[tuple] = []

    def set(self, keys: list[tuple]) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.keys)


class TrialBatches(Dataset):
    """Every batch of a streamed trial by its key, so that one persistent DataLoader, and one set
    of data worker processes, serves the whole trial: an (epoch, step) key is this rank's training
    batch (`TrainBatches`), a `RowsKey` a batch of fixed rows of the train or test split (the
    online test pass and the final evaluation), {"x": uint8 images, "y": labels, "bad": [problems]}.

    Why one set: a DataLoader forks its workers when its pass begins, and a forked worker keeps
    every page the trainer had then, however much of it the trainer frees later. Workers forked
    once, before the first step, hold a small trainer's pages; the final evaluation's own
    workers, forked after training, held ~350 MB each (64 px, the default trial on CPU)."""

    def __init__(self, train: TrainBatches, splits: dict[str, ImageSource], side: int):
        self.train, self.splits, self.side = train, splits, side

    def __getitem__(self, key: tuple) -> dict[str, Any]:
        if isinstance(key, RowsKey):
            x, y, bad = read_rows(
                self.splits[key.split], torch.arange(key.rows.start, key.rows.stop, key.rows.step), self.side
            )
            return {"x": x, "y": y, "bad": bad}
        return self.train[key]


def make_loader(
    dataset: Dataset, cfg: DataConfig, *, sampler: Sampler | None = None, pin: bool = False, persistent: bool = True
) -> DataLoader:
    """A DataLoader of whole batches (batch_size=None) from cfg.data_workers processes, each
    keeping cfg.prefetch_batches ready: at most workers x prefetch decoded batches in memory."""
    workers = cfg.data_workers
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        prefetch_factor=cfg.prefetch_batches if workers else None,
        persistent_workers=persistent and workers > 0,
        pin_memory=pin,
    )


def row_loader(
    source: ImageSource, side: int, rows: torch.Tensor, batch_size: int, cfg: DataConfig, **kw
) -> DataLoader:
    """Batches of `rows` of `source`, in order, decoded in cfg.data_workers processes."""
    return make_loader(RowBatches(source, side, rows, batch_size), cfg, **kw)
