"""Datasets decoded once into memory, and the index streams that feed the trainer.

Every dataset becomes an `ImageSplits`: uint8 image tensors (N, C, S, S) and int64 labels, held in
memory (digits: 1,797 8x8 images; CIFAR: 50,000 32x32 images, 150 MB). Nothing is decoded per
step: the trainer gathers a batch by indexing these tensors (on the training device when they fit)
and `jepa_ray.augment.ViewMaker` augments the whole batch there. Distributed sharding is done by
`BatchIterator` from a permutation every rank computes identically, so no DataLoader and no
DistributedSampler are involved.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from jepa_ray.config import DATASETS, ConfigError, DataConfig

_SPLIT_SEED = 0
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
                raise ValueError(f"{split}_y: expected int64 labels of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"{split}_y: labels must lie in [0, {self.num_classes}), got "
                                 f"[{int(y.min())}, {int(y.max())}]")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(f"train_x and test_x image shapes differ: {tuple(self.train_x.shape[1:])} "
                             f"vs {tuple(self.test_x.shape[1:])}")
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
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1).cpu(), minlength=256).double()
        p = hist / hist.sum()
        mean = float((p * levels).sum())
        var = float((p * (levels - mean).square()).sum())
        means.append(mean)
        stds.append(max(var ** 0.5, 1e-6))
    return tuple(means), tuple(stds)


# --------------------------------------------------------------------------------------------
# Registry

Loader = Callable[[DataConfig], ImageSplits]
_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: make `load_dataset` dispatch `cfg.dataset == name` to the decorated loader.
    (A new name must also be added to jepa_ray.config.DATASETS for config validation to accept it.)"""

    def decorate(loader: Loader) -> Loader:
        _LOADERS[name] = loader
        return loader

    return decorate


def registered_datasets() -> tuple[str, ...]:
    return tuple(_LOADERS)


def load_dataset(cfg: DataConfig) -> ImageSplits:
    """Decode the dataset named by cfg.dataset into memory, then apply cfg.max_train_samples and
    cfg.max_test_samples as fixed stratified subsets of the splits."""
    if cfg.dataset not in _LOADERS:
        allowed = " | ".join(sorted(set(_LOADERS) | set(DATASETS)))
        raise ConfigError(f"config field 'dataset' = {cfg.dataset!r} is not allowed; allowed: {allowed}")
    splits = _LOADERS[cfg.dataset](cfg)
    if 0 < cfg.max_train_samples < len(splits.train_y):
        keep = stratified_indices(splits.train_y, cfg.max_train_samples, seed=_SPLIT_SEED)
        splits = splits.subset_train(keep)
    if 0 < cfg.max_test_samples < len(splits.test_y):
        keep = stratified_indices(splits.test_y, cfg.max_test_samples, seed=_SPLIT_SEED)
        splits = replace(splits, test_x=splits.test_x[keep], test_y=splits.test_y[keep])
    return splits


def stratified_indices(labels: torch.Tensor, count: int, seed: int = _SPLIT_SEED) -> torch.Tensor:
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


def _split_holdout(x: torch.Tensor, y: torch.Tensor, test_fraction: float) -> tuple[torch.Tensor, ...]:
    """A fixed stratified train/test split of one labelled set."""
    test_idx = stratified_indices(y, round(test_fraction * len(y)))
    is_test = torch.zeros(len(y), dtype=torch.bool)
    is_test[test_idx] = True
    return x[~is_test], y[~is_test], x[is_test], y[is_test]


def _resolve_dir(cfg: DataConfig, default_name: str | None = None) -> Path:
    if cfg.data_dir:
        return Path(cfg.data_dir).expanduser()
    if default_name is None:
        raise ConfigError(f"config field 'data_dir' is required for dataset {cfg.dataset!r}")
    return Path.home() / ".cache" / "jepa_ray" / default_name


def _require_dir(path: Path, expected: str) -> None:
    if not path.is_dir():
        raise ConfigError(f"config field 'data_dir' = '{path}' is not an existing directory; expected {expected}")


# --------------------------------------------------------------------------------------------
# Loaders


@register_dataset("digits")
def load_digits(cfg: DataConfig) -> ImageSplits:
    """scikit-learn's embedded 8x8 digits (values 0..16 scaled to 0..255), with the fixed stratified
    80/20 split `train_test_split(stratify=y, test_size=0.2, random_state=0)`: 1,437 / 360."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=0.2, stratify=labels,
                                              random_state=_SPLIT_SEED)
    splits = ImageSplits(torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te),
                         torch.from_numpy(y_te), num_classes=10, classes=[str(i) for i in range(10)],
                         name="digits")
    if cfg.image_size and cfg.image_size != 8:
        splits = replace(splits, train_x=fit_square(splits.train_x, cfg.image_size),
                         test_x=fit_square(splits.test_x, cfg.image_size))
    return splits


def _load_cifar(cfg: DataConfig, which: str) -> ImageSplits:
    """torchvision's CIFAR arrays, converted without PIL; downloads only when cfg.download."""
    from torchvision import datasets

    root = _resolve_dir(cfg, which)
    cls = datasets.CIFAR10 if which == "cifar10" else datasets.CIFAR100
    if cfg.download:
        root.mkdir(parents=True, exist_ok=True)
    parts = {}
    for train in (True, False):
        try:
            ds = cls(root=str(root), train=train, download=cfg.download)
        except RuntimeError as err:
            raise ConfigError(
                f"dataset {which!r}: no readable CIFAR files in data_dir '{root}' ({err}); set download=true "
                f"(`--set download=true`) to fetch them, or point data_dir at a directory holding "
                f"{cls.base_folder}/") from None
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        parts[train] = (x, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes))
    (train_x, train_y, classes), (test_x, test_y, _) = parts[True], parts[False]
    if cfg.image_size and cfg.image_size != train_x.shape[-1]:
        train_x, test_x = fit_square(train_x, cfg.image_size), fit_square(test_x, cfg.image_size)
    return ImageSplits(train_x, train_y, test_x, test_y, num_classes=len(classes), classes=classes, name=which)


@register_dataset("cifar10")
def load_cifar10(cfg: DataConfig) -> ImageSplits:
    return _load_cifar(cfg, "cifar10")


@register_dataset("cifar100")
def load_cifar100(cfg: DataConfig) -> ImageSplits:
    return _load_cifar(cfg, "cifar100")


# --------------------------------------------------------------------------------------------
# Decoding encoded images (parquet, imagefolder)

def _decode_workers(pixels: int, n: int) -> int:
    """Decoding threads: small images are GIL-bound past a few threads. Measured on 16 idle
    cores (serial -> best pool): 10k 32x32 JPEGs 0.43 s -> 0.24 s (2 threads), 2k 224x224
    1.25 s -> 0.17 s (8 threads). Capped by torch's thread count, which follows the CPUs Ray
    gives a worker."""
    cap = 2 if pixels < 64 * 64 else 4 if pixels < 96 * 96 else 8
    return 1 if n < 256 else max(1, min(cap, torch.get_num_threads()))


def decode_blob(blob: torch.Tensor) -> torch.Tensor:
    """One encoded image (1-D uint8 tensor) -> uint8 RGB tensor (3, H, W). torchvision's decoder
    reads JPEG/PNG/GIF/WebP; other formats (BMP, TIFF, PPM, ...) fall back to PIL."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(blob, mode=ImageReadMode.RGB)
    except RuntimeError:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(blob.numpy().tobytes())) as img:
                arr = np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot decode {len(blob)} bytes as an image ({err})") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def decode_blobs(blobs: list[torch.Tensor], image_size: int = 0,
                 describe: Callable[[int], str] = lambda i: f"image {i}") -> torch.Tensor:
    """Decode encoded images into one uint8 tensor (N, 3, S, S); see `stack_square` for S.
    A failure raises ValueError naming `describe(index)` (a file or a table row)."""
    if not blobs:
        raise ValueError("decode_blobs: no images")

    def decode_range(start: int, stop: int) -> list[torch.Tensor]:
        out = []
        for i in range(start, stop):
            try:
                out.append(decode_blob(blobs[i]))
            except ValueError as err:
                raise ValueError(f"{describe(i)}: {err}") from None
        return out

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec (one warning per call).
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        images = decode_range(0, 1)
        workers = _decode_workers(images[0].shape[-1] * images[0].shape[-2], len(blobs))
        if workers > 1:
            chunk = -(-len(blobs) // (4 * workers))
            with ThreadPoolExecutor(workers) as pool:
                parts = pool.map(lambda i: decode_range(i, min(i + chunk, len(blobs))), range(1, len(blobs), chunk))
                images += [img for part in parts for img in part]
        else:
            images += decode_range(1, len(blobs))
    return stack_square(images, image_size)


def stack_square(images: list[torch.Tensor], image_size: int = 0) -> torch.Tensor:
    """Stack (C, H, W) uint8 images into (N, C, S, S). S = image_size, or when 0 the shorter side
    of the first image; images of another size or shape are resized (shorter side to S,
    antialiased) and center-cropped to S x S."""
    side = image_size or min(images[0].shape[-2:])
    out = torch.empty((len(images), images[0].shape[0], side, side), dtype=torch.uint8)
    for i, img in enumerate(images):
        out[i] = img if img.shape[-2:] == (side, side) else fit_square(img[None], side)[0]
    return out


def fit_square(x: torch.Tensor, side: int) -> torch.Tensor:
    """Resize uint8 images (N, C, H, W) so the shorter side is `side` (bilinear, antialiased), then
    center-crop to side x side."""
    from torchvision.transforms.v2 import functional as TF

    if x.shape[-2:] != (side, side):
        if min(x.shape[-2:]) != side:
            x = TF.resize(x, [side], antialias=True)
        x = TF.center_crop(x, [side, side])
    return x


# --------------------------------------------------------------------------------------------
# Parquet


def _class_names(metadata: dict[bytes, bytes] | None) -> list[str] | None:
    """Class names from the schema metadata key `classes`: a JSON list or a comma-separated string."""
    raw = (metadata or {}).get(b"classes")
    if raw is None:
        return None
    text = raw.decode("utf-8").strip()
    if text.startswith("["):
        return [str(c) for c in json.loads(text)]
    return [c.strip() for c in text.split(",")]


def _image_blobs(column, path: Path) -> list[torch.Tensor]:
    """Zero-copy views, one per row, into one copy of the column's byte buffer."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_struct(col.type):
        if col.type.get_field_index("bytes") < 0:
            raise ConfigError(f"{path}: column 'image' is a struct without a 'bytes' field")
        col = pc.struct_field(col, "bytes")
    if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        raise ConfigError(f"{path}: column 'image' must hold encoded image bytes (binary or struct "
                          f"{{bytes, path}}), got {col.type}")
    if col.null_count:
        raise ConfigError(f"{path}: column 'image' has {col.null_count} null rows")
    col = col.cast(pa.large_binary())
    _, offsets_buf, data_buf = col.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[col.offset:col.offset + len(col) + 1]
    data = torch.from_numpy(np.frombuffer(data_buf, dtype=np.uint8, count=int(offsets[-1])).copy())
    return [data[int(a):int(b)] for a, b in zip(offsets[:-1], offsets[1:])]


def read_parquet_split(path: str | os.PathLike, image_size: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """One parquet image table -> (uint8 images (N, 3, S, S), int64 labels, class names or None).

    Columns: `image` (encoded bytes, or a struct {bytes, path} as Hugging Face exports) and
    `label` (integer); class names come from the schema metadata key `classes`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    table = pq.read_table(path)
    for name in ("image", "label"):
        if name not in table.column_names:
            raise ConfigError(f"{path}: missing column '{name}' (have: {', '.join(table.column_names)})")
    if table.num_rows == 0:
        raise ConfigError(f"{path}: the table has no rows")
    if not pa.types.is_integer(table.schema.field("label").type):
        raise ConfigError(f"{path}: column 'label' must be integer, got {table.schema.field('label').type}")
    labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    images = decode_blobs(_image_blobs(table.column("image"), path), image_size, lambda i: f"{path} row {i}")
    return images, labels, _class_names(table.schema.metadata)


@register_dataset("parquet")
def load_parquet(cfg: DataConfig) -> ImageSplits:
    """data_dir/train.parquet and data_dir/test.parquet (see `read_parquet_split`)."""
    root = _resolve_dir(cfg)
    expected = "a directory holding train.parquet and test.parquet"
    _require_dir(root, expected)
    missing = [f for f in ("train.parquet", "test.parquet") if not (root / f).is_file()]
    if missing:
        raise ConfigError(f"config field 'data_dir' = '{root}' lacks {', '.join(missing)}; expected {expected}")
    train_x, train_y, classes = read_parquet_split(root / "train.parquet", cfg.image_size)
    test_x, test_y, _ = read_parquet_split(root / "test.parquet", cfg.image_size or train_x.shape[-1])
    num_classes = len(classes) if classes else int(max(train_y.max(), test_y.max())) + 1
    for name, y in (("train.parquet", train_y), ("test.parquet", test_y)):
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise ConfigError(f"{root / name}: column 'label' must lie in [0, {num_classes}) "
                              f"({'the classes metadata' if classes else 'non-negative labels'}), "
                              f"got [{int(y.min())}, {int(y.max())}]")
    classes = classes or [str(i) for i in range(num_classes)]
    return ImageSplits(train_x, train_y, test_x, test_y, num_classes=num_classes, classes=classes, name="parquet")


# --------------------------------------------------------------------------------------------
# Image folder


def _read_folder(root: Path, class_to_idx: dict[str, int], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise ConfigError(f"config field 'data_dir': no images ({', '.join(IMG_EXTENSIONS)}) in class folders of '{root}'")
    blobs = [torch.from_numpy(np.fromfile(p, dtype=np.uint8)) for p, _ in samples]
    labels = torch.tensor([c for _, c in samples], dtype=torch.int64)
    return decode_blobs(blobs, image_size, lambda i: samples[i][0]), labels


def _class_dirs(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


@register_dataset("imagefolder")
def load_imagefolder(cfg: DataConfig) -> ImageSplits:
    """data_dir/{train,test|val}/<class>/<image> (torchvision ImageFolder layout), or
    data_dir/<class>/<image> split 80/20 (fixed, stratified). Classes come from the train folder;
    images are decoded once to RGB and fitted to cfg.image_size (0: the first image's shorter side)."""
    root = _resolve_dir(cfg)
    expected = "train/ and test/ (or val/) folders with one folder per class, or one folder per class"
    _require_dir(root, expected)
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes = _class_dirs(root / "train")
        unknown = sorted(set(_class_dirs(test_dir)) - set(classes))
        if unknown:
            raise ConfigError(f"config field 'data_dir' = '{root}': {test_dir.name}/ has classes not in train/: {', '.join(unknown)}")
        class_to_idx = {c: i for i, c in enumerate(classes)}
        train_x, train_y = _read_folder(root / "train", class_to_idx, cfg.image_size)
        test_x, test_y = _read_folder(test_dir, class_to_idx, train_x.shape[-1])
    else:
        classes = _class_dirs(root)
        if not classes:
            raise ConfigError(f"config field 'data_dir' = '{root}' has no class folders; expected {expected}")
        x, y = _read_folder(root, {c: i for i, c in enumerate(classes)}, cfg.image_size)
        train_x, train_y, test_x, test_y = _split_holdout(x, y, test_fraction=0.2)
    return ImageSplits(train_x, train_y, test_x, test_y, num_classes=len(classes), classes=classes, name="imagefolder")


# --------------------------------------------------------------------------------------------
# Index streams


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 64-bit seed for (seed, epoch), identical on every rank."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])


class BatchIterator:
    """Shuffled mini-batch indices of a train split for one rank of `world_size`.

    Each epoch draws one permutation of range(n) seeded by (seed, epoch), the same on every rank;
    step s uses rows [s*B, (s+1)*B) of it as the global batch and rank r takes its slice
    [r*B/W, (r+1)*B/W). The incomplete last batch is dropped so every rank runs the same number of
    steps (a collective would otherwise hang).
    """

    def __init__(self, n: int, global_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        if world_size < 1:
            raise ValueError(f"world_size: expected >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError(f"global_batch_size: expected a positive multiple of world_size={world_size}, "
                             f"got {global_batch_size}")
        if global_batch_size > n:
            raise ValueError(f"global_batch_size: expected <= the number of samples n={n}, got {global_batch_size}")
        self.n, self.global_batch_size = n, global_batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.local_batch_size = global_batch_size // world_size
        self.epoch = 0
        self._cached: tuple[int, torch.Tensor] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.global_batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != epoch:
            gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            self._cached = (epoch, torch.randperm(self.n, generator=gen))
        return self._cached[1]

    def global_batch_indices(self, epoch: int, step: int) -> torch.Tensor:
        """The indices of the whole global batch of (epoch, step), as a single process sees it."""
        if not 0 <= step < len(self):
            raise ValueError(f"step: expected 0 <= step < {len(self)}, got {step}")
        start = step * self.global_batch_size
        return self.permutation(epoch)[start:start + self.global_batch_size]

    def local_batch_indices(self, epoch: int, step: int) -> torch.Tensor:
        start = self.rank * self.local_batch_size
        return self.global_batch_indices(epoch, step)[start:start + self.local_batch_size]

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch = self.epoch
        for step in range(len(self)):
            yield self.local_batch_indices(epoch, step)


def eval_batches(n: int, batch_size: int) -> Iterator[slice]:
    """Contiguous slices covering range(n) in order (feature extraction: views, not copies)."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
