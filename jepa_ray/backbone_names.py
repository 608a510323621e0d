"""The backbone names a config accepts: timm's model registry (jepa_ray's own models included),
read from a small cache file per timm version, so that validating a config (the sweep driver,
every trial's resolve) does not import timm, torchvision and torch, seconds of CPU and hundreds
of MB in a process that never builds a model. A name the cache does not hold is checked against
timm itself (a model registered since, a typo that gets its close matches), which refreshes the
cache."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from pathlib import Path

from jepa_ray.errors import ConfigError

_OWN_MODELS = Path(__file__).with_name("convnets.py")


def cache_path() -> Path:
    """The cache file for the installed timm and this package's own models' file (a change to
    either is a new file)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jepa_ray"
    own = hashlib.sha256(_OWN_MODELS.read_bytes()).hexdigest()[:12]
    return root / f"timm-{importlib.metadata.version('timm')}-models-{own}.txt"


def _cached_names() -> frozenset[str]:
    try:
        return frozenset(cache_path().read_text().split())
    except OSError:
        return frozenset()


def _write_cache(names: list[str]) -> None:
    """Written whole or not at all (temp file and rename); a read-only home only costs speed."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, delete=False) as f:
            f.write("\n".join(names))
        os.replace(f.name, path)
    except OSError:
        pass


def check_backbone_name(name: str) -> None:
    """Raise ConfigError for a name timm does not know, listing close matches."""
    if name in _cached_names():
        return
    import difflib

    import timm

    from jepa_ray import convnets  # noqa: F401  (registers jepa_ray's own models in timm)

    names = timm.list_models()
    _write_cache(names)
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models()"
    raise ConfigError(f"config field 'backbone' = {name!r} is not a timm model{hint}")
