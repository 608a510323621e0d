"""Where one worker's images come from: the in-memory splits held on the training device (small
datasets), or the streaming path (jepa_ray.data.stream: batches decoded in DataLoader workers,
memory bounded). Both yield the same batches, the `BatchIterator` rows of (seed, epoch, rank),
and `open_feed` picks one by the data config (`stream`: auto | memory | stream)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from jepa_ray.data import BatchIterator, ImageSplits, ViewMaker, dataset_info, load_dataset
from jepa_ray.data import stream as stream_lib
from jepa_ray.errors import ConfigError
from jepa_ray.eval.evaluate import Batches, tensor_batches

if TYPE_CHECKING:
    from jepa_ray.config import TrialConfig
    from jepa_ray.train.step import Runtime

Batch = tuple[Any, torch.Tensor]
"""(uint8 images on the device, or the list of their views; labels on the device)."""


def _batch_iterator(cfg: TrialConfig, n: int, rt: Runtime) -> BatchIterator:
    if cfg.optim.batch_size > n:
        raise ConfigError(
            f"config field 'batch_size' = {cfg.optim.batch_size} is larger than the "
            f"training split ({n} images); allowed: <= {n}"
        )
    return BatchIterator(n, cfg.optim.batch_size, rank=rt.rank, world_size=rt.world_size, seed=cfg.system.seed)


class MemoryFeed:
    """Both splits decoded once and held on the training device; a batch is an index gather."""

    streaming = False

    def __init__(self, cfg: TrialConfig, splits: ImageSplits, rt: Runtime):
        self.splits, self.device = splits, rt.device
        self.train_x, self.train_y = splits.train_x.to(rt.device), splits.train_y.to(rt.device)
        self.test_x, self.test_y = splits.test_x.to(rt.device), splits.test_y.to(rt.device)
        self.batches = _batch_iterator(cfg, self.train_x.shape[0], rt)
        self.num_classes, self.num_channels, self.image_size = (
            splits.num_classes,
            splits.num_channels,
            splits.image_size,
        )
        self.mean, self.std = splits.mean, splits.std
        self.num_train, self.num_test = len(splits.train_y), len(splits.test_y)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        self.batches.set_epoch(epoch)
        for idx in torch.stack(list(self.batches)).to(self.device):  # one host-to-device copy per epoch
            yield self.train_x[idx], self.train_y[idx]

    def test_shard(self, rank: int, world_size: int, batch_size: int) -> Batches:
        """Every world_size-th test image from `rank` on (the online probes' strided shard)."""
        idx = torch.arange(rank, self.num_test, world_size, device=self.device)
        return tensor_batches(self.test_x[idx], self.test_y[idx], batch_size)

    def split(self, name: str, batch_size: int) -> Batches:
        """The whole train or test split in order (final evaluation)."""
        x, y = (
            (self.splits.train_x, self.splits.train_y) if name == "train" else (self.splits.test_x, self.splits.test_y)
        )
        return tensor_batches(x, y, batch_size)

    def close(self) -> None:
        pass


class StreamFeed:
    """Batches read and decoded per step by DataLoader worker processes; unreadable images are
    replaced and counted, and more than max_bad_fraction of the split stops the trial with one
    line as soon as the count passes it. One persistent loader serves every pass of the trial
    (the training epochs, the online test passes, the final evaluation), one pass at a time: its
    workers start before the first step and are not forked again from a trainer that has grown
    (jepa_ray.data.stream.TrialBatches says why)."""

    streaming = True

    def __init__(self, cfg: TrialConfig, splits: stream_lib.SourceSplits, rt: Runtime, views: ViewMaker | None = None):
        self.cfg, self.splits, self.device = cfg.data, splits, rt.device
        self.batches = _batch_iterator(cfg, len(splits.train), rt)
        self.num_classes, self.num_channels, self.image_size = splits.num_classes, splits.num_channels, splits.side
        self.mean, self.std = splits.mean, splits.std
        self.num_train, self.num_test = len(splits.train), len(splits.test)
        augment = None
        if cfg.data.stream_augment == "workers" and views is not None:
            local = self.batches.local_batch_size
            augment = stream_lib.WorkerAugment(
                views, cfg.system.seed, len(self.batches), rt.rank * local, cfg.optim.batch_size
            )
        self.augments_in_workers = augment is not None
        self.passes = stream_lib.PassKeys()
        dataset = stream_lib.TrialBatches(
            stream_lib.TrainBatches(splits.train, splits.side, self.batches, augment),
            {"train": splits.train, "test": splits.test},
            splits.side,
        )
        self.pin = rt.device.type == "cuda"
        self.loader = stream_lib.make_loader(dataset, cfg.data, sampler=self.passes, pin=self.pin)
        self.logged_bad = False

    def _to_device(self, x: Any) -> Any:
        if isinstance(x, list):
            return [v.to(self.device, non_blocking=True) for v in x]
        return x.to(self.device, non_blocking=True)

    def _serve(self, keys: list[tuple]) -> Iterator[dict[str, Any]]:
        """The batches of `keys`, from the trial's loader (the keys are set when the pass begins)."""
        if self.loader is None:
            raise RuntimeError("the feed is closed: its data workers have stopped")
        self.passes.set(keys)
        yield from self.loader

    def epoch(self, epoch: int) -> Iterator[Batch]:
        bad: list[str] = []
        where = f"{self.splits.name} train split (epoch {epoch})"
        for batch in self._serve([(epoch, step) for step in range(len(self.batches))]):
            bad += batch["bad"]
            if len(bad) > self.cfg.max_bad_fraction * self.num_train:
                stream_lib.check_bad(bad, self.num_train, self.cfg.max_bad_fraction, where)
            yield self._to_device(batch["x"]), batch["y"].to(self.device, non_blocking=True)
        if not self.logged_bad:  # once per run: every epoch meets the same files
            stream_lib.check_bad(bad, self.num_train, self.cfg.max_bad_fraction, where)
            self.logged_bad = True

    def _rows(self, split: str, rows: range, batch_size: int) -> Batches:
        """`rows` of a split in order, decoded by the trial's data workers."""
        serve = self._serve(stream_lib.row_keys(split, rows, batch_size))
        to_device = (
            (batch["x"].to(self.device, non_blocking=True), batch["y"].to(self.device, non_blocking=True))
            for batch in serve
        )
        return Batches(len(rows), to_device)

    def test_shard(self, rank: int, world_size: int, batch_size: int) -> Batches:
        """Every world_size-th test image from `rank` on (the online probes' strided shard)."""
        return self._rows("test", range(rank, self.num_test, world_size), batch_size)

    def split(self, name: str, batch_size: int) -> Batches:
        """The whole train or test split in order (final evaluation)."""
        return self._rows(name, range(self.num_train if name == "train" else self.num_test), batch_size)

    def close(self) -> None:
        """Stop the trial's data worker processes (after its last pass)."""
        self.loader = None


Feed = MemoryFeed | StreamFeed


def open_feed(cfg: TrialConfig, rt: Runtime, make_views) -> tuple[Feed, ViewMaker]:
    """The feed cfg.data asks for and the ViewMaker built from its statistics (`make_views(mean,
    std, image_size, channels)`): stream=memory or a small dataset in memory, else streaming."""
    indexed = None
    if cfg.data.stream != "memory" and dataset_info(cfg.data.dataset).streamable:
        indexed = stream_lib.source_splits(cfg.data)  # an index only: no image is decoded
    if indexed is not None and stream_lib.use_stream(cfg.data, indexed):
        splits = stream_lib.open_stream(cfg.data, indexed)
        views = make_views(splits.mean, splits.std, splits.side, splits.num_channels)
        return StreamFeed(cfg, splits, rt, views), views
    splits = load_dataset(cfg.data)
    image_size = cfg.data.image_size or splits.image_size
    views = make_views(splits.mean, splits.std, image_size, splits.num_channels)
    feed = MemoryFeed(cfg, splits, rt)
    feed.image_size = image_size
    return feed, views
