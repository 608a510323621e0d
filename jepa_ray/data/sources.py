"""Indexed image sources read one image at a time: an image folder (a file per image) or a set of
parquet shards (encoded bytes in an `image` column, an integer `label` column). Only the index
(paths or row offsets, and the labels) is held; an image is read and decoded when asked for, so
memory does not grow with the number of images beyond a few bytes of index per image.

Bad input is handled here, the same way for the in-memory and the streaming paths:
- an image that does not decode (unreadable, truncated, not an image) is replaced by the next
  readable image of the split (index i + 1, i + 2, ... modulo n) with that image's label, and
  counted: the batches keep their size and stay a function of (seed, epoch, rank) alone;
- grayscale, CMYK, RGBA and palette images are converted to RGB by the decoder;
- a class folder with no image is an error naming the folder.
"""

from __future__ import annotations

import bisect
import json
import os
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from jepa_ray.data.decode import decode_blob, fit_square
from jepa_ray.errors import ConfigError, UsageError

MAX_SUBSTITUTES = 64
"""How many following images are tried for an unreadable one before the read fails: a run of 64
unreadable images in a row means the split itself is broken."""


class ImageSource:
    """n encoded images with int64 labels, read by index. Subclasses implement `blob` and `describe`."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def blob(self, i: int) -> torch.Tensor:
        """The encoded bytes of image i as a 1-D uint8 tensor."""
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """Where image i lives (a file, a shard row), for messages."""
        raise NotImplementedError

    def read(self, i: int, side: int) -> tuple[torch.Tensor, int, str]:
        """Image i decoded to RGB uint8 (3, side, side) (shorter side resized, center crop), its
        label, and "" or, when image i is unreadable, "<where>: <why>" (it was then replaced by
        the next readable image, see the module doc)."""
        n, problem = len(self), ""
        for skipped in range(min(MAX_SUBSTITUTES, n)):
            j = (i + skipped) % n
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
                    img = decode_blob(self.blob(j))
            except (ValueError, OSError) as err:
                problem = problem or f"{self.describe(j)}: {err}"
                continue
            if side and img.shape[-2:] != (side, side):
                img = fit_square(img[None], side)[0]
            return img, int(self.labels[j]), problem
        raise UsageError(f"{problem} (and the {MAX_SUBSTITUTES - 1} images after it are unreadable too)")

    def native_side(self) -> int:
        """The shorter side of the first readable image (the in-memory path's size for image_size=0)."""
        img, _, _ = self.read(0, 0)
        return int(min(img.shape[-2:]))

    def subset(self, indices: torch.Tensor) -> ImageSource:
        """A view on rows `indices` of this source (a fixed stratified subset)."""
        return SubsetSource(self, indices)


class SubsetSource(ImageSource):
    def __init__(self, base: ImageSource, indices: torch.Tensor):
        self.base, self.indices = base, indices.long()
        self.labels = base.labels[self.indices]

    def read(self, i: int, side: int) -> tuple[torch.Tensor, int, str]:
        """The base's read, so an unreadable image gets the substitute it gets in the full split."""
        return self.base.read(int(self.indices[i]), side)

    def blob(self, i: int) -> torch.Tensor:
        return self.base.blob(int(self.indices[i]))

    def describe(self, i: int) -> str:
        return self.base.describe(int(self.indices[i]))


# --------------------------------------------------------------------------------------------
# Image folders


class FolderSource(ImageSource):
    """One file per image; paths are kept as one numpy byte-string array (no Python object per file)."""

    def __init__(self, paths: list[str], labels: list[int]):
        self.paths = np.array([os.fsencode(p) for p in paths])
        self.labels = torch.tensor(labels, dtype=torch.int64)

    def blob(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.fromfile(os.fsdecode(self.paths[i]), dtype=np.uint8))

    def describe(self, i: int) -> str:
        return os.fsdecode(self.paths[i])


def class_dirs(root: Path) -> list[str]:
    """Class folder names under root, sorted (hidden folders left out)."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: Path) -> list[str]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMG_EXTENSIONS)]
    return out


def scan_folder(root: Path, class_to_idx: dict[str, int]) -> FolderSource:
    """Every image file under root/<class>/ (recursively, sorted: the order is fixed). A class
    folder present with no image file is a ConfigError naming it."""
    paths, labels = [], []
    for name in class_dirs(root):
        if name not in class_to_idx:
            continue
        files = _image_files(root / name)
        if not files:
            raise ConfigError(
                f"config field 'data_dir': class folder '{root / name}' has no images; "
                f"allowed: at least one image file per class folder (remove the folder or add images)"
            )
        paths += files
        labels += [class_to_idx[name]] * len(files)
    if not paths:
        raise ConfigError(f"config field 'data_dir': no images in class folders of '{root}'")
    return FolderSource(paths, labels)


def imagefolder_sources(root: Path) -> tuple[ImageSource, ImageSource | None, list[str]]:
    """(train, test or None, classes) of root/{train,test|val}/<class>/ or, with no split folders,
    (all, None, classes) of root/<class>/ (the caller splits it)."""
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes = class_dirs(root / "train")
        unknown = sorted(set(class_dirs(test_dir)) - set(classes))
        if unknown:
            raise ConfigError(
                f"config field 'data_dir' = '{root}': {test_dir.name}/ has classes not in train/: {', '.join(unknown)}"
            )
        class_to_idx = {c: i for i, c in enumerate(classes)}
        return scan_folder(root / "train", class_to_idx), scan_folder(test_dir, class_to_idx), classes
    classes = class_dirs(root)
    if not classes:
        raise ConfigError(
            f"config field 'data_dir' = '{root}' has no class folders; expected train/ and test/ (or val/) "
            f"folders with one folder per class, or one folder per class"
        )
    return scan_folder(root, {c: i for i, c in enumerate(classes)}), None, classes


# --------------------------------------------------------------------------------------------
# Parquet shards


def class_names(metadata: dict[bytes, bytes] | None) -> list[str] | None:
    """Class names from the schema metadata key `classes`: a JSON list or a comma-separated string."""
    raw = (metadata or {}).get(b"classes")
    if raw is None:
        return None
    text = raw.decode("utf-8").strip()
    if text.startswith("["):
        return [str(c) for c in json.loads(text)]
    return [c.strip() for c in text.split(",")]


class ParquetSource(ImageSource):
    """Rows of parquet shards (in file order), read a row group at a time. Each process keeps the
    last `cache_groups` row groups it read: random access costs one row-group read per image
    unless the shards are written with small row groups (a few hundred rows)."""

    def __init__(self, files: list[Path], cache_groups: int = 4):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.files, self.cache_groups = [str(f) for f in files], cache_groups
        self.starts: list[int] = []  # first global row of each (file, row group)
        self.groups: list[tuple[int, int]] = []
        labels, total = [], 0
        for k, f in enumerate(self.files):
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            for col in ("image", "label"):
                if col not in names:
                    raise UsageError(f"{f}: missing column '{col}' (have: {', '.join(names)})")
            if not pa.types.is_integer(pf.schema_arrow.field("label").type):
                raise UsageError(f"{f}: column 'label' must be integer, got {pf.schema_arrow.field('label').type}")
            for g in range(pf.num_row_groups):
                self.starts.append(total)
                self.groups.append((k, g))
                total += pf.metadata.row_group(g).num_rows
            labels.append(pf.read(columns=["label"]).column("label").to_numpy().astype(np.int64))
            if k == 0:
                self.metadata = pf.schema_arrow.metadata
        if total == 0:
            raise UsageError(f"{self.files[0]}: the shards have no rows")
        self.labels = torch.from_numpy(np.concatenate(labels))
        self._cache: OrderedDict[int, list] = OrderedDict()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()  # each worker process reads its own row groups
        return state

    def _locate(self, i: int) -> tuple[int, int]:
        g = bisect.bisect_right(self.starts, i) - 1
        return g, i - self.starts[g]

    def _group(self, g: int) -> list:
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        import pyarrow.parquet as pq

        k, rg = self.groups[g]
        col = pq.ParquetFile(self.files[k]).read_row_group(rg, columns=["image"]).column("image").to_pylist()
        self._cache[g] = col
        while len(self._cache) > self.cache_groups:
            self._cache.popitem(last=False)
        return col

    def blob(self, i: int) -> torch.Tensor:
        g, r = self._locate(i)
        value = self._group(g)[r]
        if isinstance(value, dict):
            value = value.get("bytes")
        if not value:
            return torch.empty(0, dtype=torch.uint8)
        return torch.frombuffer(bytearray(value), dtype=torch.uint8)

    def describe(self, i: int) -> str:
        g, r = self._locate(i)
        k, rg = self.groups[g]
        return f"{self.files[k]} row group {rg} row {r}"


def parquet_shards(root: Path, split: str) -> list[Path]:
    """root/<split>/*.parquet (sorted) or root/<split>.parquet; [] when neither exists."""
    if (root / split).is_dir():
        return sorted((root / split).glob("*.parquet"))
    return [root / f"{split}.parquet"] if (root / f"{split}.parquet").is_file() else []
