"""Package namespaces whose names load on first use (PEP 562).

`jepa_ray.train` and `jepa_ray.data` export the training loop and the augmentation, which bring
torch, timm and torchvision; the sweep driver, its MLflow writer process and the Pareto export
only read checkpoint files and dataset metadata from them. Importing a submodule runs its
package's `__init__` first, so an eager `__init__` would load torch (seconds per process start,
hundreds of MB of RSS per process) into processes that never touch a tensor."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def exports(package: str, names_by_module: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], list[str]]:
    """A module-level `__getattr__` for `package` that imports each name from its submodule on
    first use (then caches it in the package), and the names, for `__all__`."""
    module_of = {name: module for module, names in names_by_module.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__, list(module_of)


class _Module:
    """A stand-in for a module that imports it on first attribute access and then puts the
    module itself in the owner's namespace, so later lookups cost nothing."""

    def __init__(self, name: str, owner: str):
        self._name, self._owner = name, owner

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self._name)
        setattr(sys.modules[self._owner], self._name.partition(".")[0], module)
        return getattr(module, attr)


def module(name: str, owner: str) -> Any:
    """`torch = lazy.module("torch", __name__)`: a module-level name for a heavy package that
    loads only when a function first uses it (annotations stay strings)."""
    return _Module(name, owner)
