"""The dataset loaders the registry names (jepa_ray.data.registry): digits (embedded in
scikit-learn), CIFAR-10/100 (torchvision), parquet image tables and image folders. Each turns a
DataConfig into an `ImageSplits`."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from jepa_ray.data.decode import decode_blobs, fit_square
from jepa_ray.data.sources import class_names
from jepa_ray.data.splits import SPLIT_SEED, ImageSplits
from jepa_ray.data.stream import materialize, source_splits
from jepa_ray.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from jepa_ray.config import DataConfig


def _resolve_dir(cfg: DataConfig, default_name: str | None = None) -> Path:
    if cfg.data_dir:
        return Path(cfg.data_dir).expanduser()
    if default_name is None:
        raise ConfigError(f"config field 'data_dir' is required for dataset {cfg.dataset!r}")
    return Path.home() / ".cache" / "jepa_ray" / default_name


def _require_dir(path: Path, expected: str) -> None:
    if not path.is_dir():
        raise ConfigError(f"config field 'data_dir' = '{path}' is not an existing directory; expected {expected}")


def load_digits(cfg: DataConfig) -> ImageSplits:
    """scikit-learn's embedded 8x8 digits (values 0..16 scaled to 0..255), with the fixed stratified
    80/20 split `train_test_split(stratify=y, test_size=0.2, random_state=0)`: 1,437 / 360."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=0.2, stratify=labels, random_state=SPLIT_SEED)
    splits = ImageSplits(
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te),
        num_classes=10,
        classes=[str(i) for i in range(10)],
        name="digits",
    )
    if cfg.image_size and cfg.image_size != 8:
        splits = replace(
            splits, train_x=fit_square(splits.train_x, cfg.image_size), test_x=fit_square(splits.test_x, cfg.image_size)
        )
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
                f"{cls.base_folder}/"
            ) from None
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        parts[train] = (x, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes))
    (train_x, train_y, classes), (test_x, test_y, _) = parts[True], parts[False]
    if cfg.image_size and cfg.image_size != train_x.shape[-1]:
        train_x, test_x = fit_square(train_x, cfg.image_size), fit_square(test_x, cfg.image_size)
    return ImageSplits(train_x, train_y, test_x, test_y, num_classes=len(classes), classes=classes, name=which)


def load_cifar10(cfg: DataConfig) -> ImageSplits:
    return _load_cifar(cfg, "cifar10")


def load_cifar100(cfg: DataConfig) -> ImageSplits:
    return _load_cifar(cfg, "cifar100")


# --------------------------------------------------------------------------------------------
# Parquet


def _image_blobs(column, path: Path) -> list[torch.Tensor]:
    """Zero-copy views, one per row, into one copy of the column's byte buffer."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_struct(col.type):
        if col.type.get_field_index("bytes") < 0:
            raise UsageError(f"{path}: column 'image' is a struct without a 'bytes' field")
        col = pc.struct_field(col, "bytes")
    if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        raise UsageError(
            f"{path}: column 'image' must hold encoded image bytes (binary or struct {{bytes, path}}), got {col.type}"
        )
    if col.null_count:
        raise UsageError(f"{path}: column 'image' has {col.null_count} null rows")
    col = col.cast(pa.large_binary())
    _, offsets_buf, data_buf = col.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[col.offset : col.offset + len(col) + 1]
    data = torch.from_numpy(np.frombuffer(data_buf, dtype=np.uint8, count=int(offsets[-1])).copy())
    return [data[int(a) : int(b)] for a, b in zip(offsets[:-1], offsets[1:])]


def read_parquet_split(
    path: str | os.PathLike, image_size: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """One parquet image table -> (uint8 images (N, 3, S, S), int64 labels, class names or None).

    Columns: `image` (encoded bytes, or a struct {bytes, path} as Hugging Face exports) and
    `label` (integer); class names come from the schema metadata key `classes`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    table = pq.read_table(path)
    for name in ("image", "label"):
        if name not in table.column_names:
            raise UsageError(f"{path}: missing column '{name}' (have: {', '.join(table.column_names)})")
    if table.num_rows == 0:
        raise UsageError(f"{path}: the table has no rows")
    if not pa.types.is_integer(table.schema.field("label").type):
        raise UsageError(f"{path}: column 'label' must be integer, got {table.schema.field('label').type}")
    labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    images = decode_blobs(_image_blobs(table.column("image"), path), image_size, lambda i: f"{path} row {i}")
    return images, labels, class_names(table.schema.metadata)


def load_parquet(cfg: DataConfig) -> ImageSplits:
    """data_dir/train.parquet and data_dir/test.parquet (see `read_parquet_split`)."""
    root = _resolve_dir(cfg)
    if (root / "train").is_dir() and (root / "test").is_dir():  # shards: read through the streaming sources
        return materialize(source_splits(cfg, subsets=False), cfg.max_bad_fraction)
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
            raise UsageError(
                f"{root / name}: column 'label' must lie in [0, {num_classes}) "
                f"({'the classes metadata' if classes else 'non-negative labels'}), "
                f"got [{int(y.min())}, {int(y.max())}]"
            )
    classes = classes or [str(i) for i in range(num_classes)]
    return ImageSplits(train_x, train_y, test_x, test_y, num_classes=num_classes, classes=classes, name="parquet")


# --------------------------------------------------------------------------------------------
# Image folder


def load_imagefolder(cfg: DataConfig) -> ImageSplits:
    """data_dir/{train,test|val}/<class>/<image> (torchvision ImageFolder layout), or
    data_dir/<class>/<image> split 80/20 (fixed, stratified). Classes come from the train folder;
    images are decoded once to RGB and fitted to cfg.image_size (0: the first image's shorter side).
    Read through the streaming path's sources, so bad images are handled as there
    (jepa_ray.data.sources: unreadable ones skipped and counted, empty class folders an error)."""
    root = _resolve_dir(cfg)
    _require_dir(root, "train/ and test/ (or val/) folders with one folder per class, or one folder per class")
    return materialize(source_splits(cfg, subsets=False), cfg.max_bad_fraction)
