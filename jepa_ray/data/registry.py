"""The datasets a trial can name, with what the rest of the package needs to know of each
before loading it: its native image size, its channels, whether it needs a data directory or
can download, and its augmentation recipe. The one list of dataset names: config validation
and the model read it, `load_dataset` dispatches through it. Loaders are named as
"module:function" and imported when a dataset is loaded, so reading the registry is cheap.

A new dataset is one `register_dataset` call (beside its loader) or one entry below."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from jepa_ray.errors import ConfigError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    loader: str | Callable
    """"module:function" (imported on first use) or the loader itself: DataConfig -> ImageSplits."""
    channels: int = 3
    native_size: int = 0
    """Side of the stored images; 0: the dataset's own (the first image's shorter side)."""
    needs_dir: bool = False
    downloadable: bool = False
    recipe: str = "imagenet"
    """The augmentation recipe `recipe=auto` resolves to."""
    streamable: bool = False
    """Has a streaming input path (jepa_ray.data.stream): decoded per batch, memory bounded."""

    def load(self):
        if isinstance(self.loader, str):
            module, function = self.loader.split(":")
            return getattr(importlib.import_module(module), function)
        return self.loader


_LOADERS = "jepa_ray.data.loaders"
_REGISTRY: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("digits", f"{_LOADERS}:load_digits", channels=1, native_size=8, recipe="digits"),
        DatasetInfo("cifar10", f"{_LOADERS}:load_cifar10", native_size=32, downloadable=True, recipe="cifar"),
        DatasetInfo("cifar100", f"{_LOADERS}:load_cifar100", native_size=32, downloadable=True, recipe="cifar"),
        DatasetInfo("imagefolder", f"{_LOADERS}:load_imagefolder", needs_dir=True, streamable=True),
        DatasetInfo("parquet", f"{_LOADERS}:load_parquet", needs_dir=True, streamable=True),
    )
}


def register_dataset(
    name: str, *, channels: int = 3, native_size: int = 0, needs_dir: bool = True, recipe: str = "imagenet"
) -> Callable[[Callable], Callable]:
    """Decorator: make the decorated loader (DataConfig -> ImageSplits) the dataset `name`."""

    def decorate(loader: Callable) -> Callable:
        _REGISTRY[name] = DatasetInfo(
            name, loader, channels=channels, native_size=native_size, needs_dir=needs_dir, recipe=recipe
        )
        return loader

    return decorate


def dataset_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of `name`; ConfigError listing the names otherwise."""
    if name not in _REGISTRY:
        raise ConfigError(f"config field 'dataset' = {name!r} is not allowed; allowed: {' | '.join(_REGISTRY)}")
    return _REGISTRY[name]
