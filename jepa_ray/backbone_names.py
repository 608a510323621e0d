"""The backbone names a config accepts: timm's model registry (jepa_ray's own models included),
read from a small cache file per timm version, so that validating a config (the sweep driver,
every trial's resolve) does not import timm, torchvision and torch, seconds of CPU and hundreds
of MB in a process that never builds a model. A name the cache does not hold is checked against
timm itself (a model registered since, a typo that gets its close matches), which refreshes the
cache."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import tempfile
from pathlib import Path

from jepa_ray.errors import ConfigError

_OWN_MODELS = Path(__file__).with_name("convnets.py")


@functools.cache
def _cache_name() -> str:
    own = hashlib.sha256(_OWN_MODELS.read_bytes()).hexdigest()[:12]
    return f"timm-{importlib.metadata.version('timm')}-models-{own}.txt"


def cache_path() -> Path:
    """The cache file for the installed timm and this package's own models' file (a change to
    either is a new file)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jepa_ray" / _cache_name()


_read: dict[Path, frozenset[str]] = {}
"""Names read per cache file: a sweep validates a config per trial, the file is read once."""


def _cached_names(path: Path) -> frozenset[str]:
    if path not in _read:
        try:
            _read[path] = frozenset(path.read_text().split())
        except OSError:
            return frozenset()
    return _read[path]


def _write_cache(path: Path, names: list[str]) -> None:
    """Written whole or not at all (temp file and rename); a read-only home only costs speed."""
    _read[path] = frozenset(names)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, delete=False) as f:
            f.write("\n".join(names))
        os.replace(f.name, path)
    except OSError:
        pass


def check_backbone_name(name: str) -> None:
    """Raise ConfigError for a name timm does not know, listing close matches."""
    path = cache_path()
    if name in _cached_names(path):
        return
    import difflib

    import timm

    from jepa_ray import convnets  # noqa: F401  (registers jepa_ray's own models in timm)

    names = timm.list_models()
    _write_cache(path, names)
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models()"
    raise ConfigError(f"config field 'backbone' = {name!r} is not a timm model{hint}")
