"""Checkpoints in the DESIGN.md format: a directory with `model.pt` (state dicts, loadable with
`torch.load(..., weights_only=True)`), `config.json` (the resolved config with the loss
convention) and `metrics.json`. Resumable checkpoints add `train_state.pt` (optimizer, schedule,
epoch, RNG). Writes go to a temporary sibling directory that is renamed into place, so a reader
never sees a half-written checkpoint."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jepa_ray import config as config_lib
from jepa_ray.config import TrialConfig

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
TRAIN_STATE_FILE = "train_state.pt"
ACTIVATION_FILE = "activation_rates.json"  # the final checkpoint's per-dimension activation rates of z


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def _json_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def save_checkpoint(directory: str | os.PathLike, *, model: nn.Module | dict, cfg: TrialConfig,
                    metrics: dict[str, Any] | None = None, extra_state: dict[str, dict] | None = None,
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically (temp dir + rename) and return its path.

    extra_state: more state dicts stored in model.pt beside `model` (e.g. the online probe).
    train_state: what resuming needs (optimizer, epoch, RNG); kept out of model.pt."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        state = model if isinstance(model, dict) else unwrap(model).state_dict()
        torch.save({"model": state, **(extra_state or {})}, tmp / MODEL_FILE)
        config_lib.save_json(cfg, tmp / CONFIG_FILE)
        with open(tmp / METRICS_FILE, "w") as f:
            json.dump(_json_safe(metrics or {}), f, indent=2, sort_keys=True)
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE_FILE)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def local_path(path_or_uri: str | os.PathLike) -> Path:
    """A local directory for a checkpoint path, file:// URI or remote URI (s3://, gs://, ...:
    copied to a temporary directory through pyarrow's filesystems)."""
    text = str(path_or_uri)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if "://" not in text:
        return Path(text)
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(text)
    dest = Path(tempfile.mkdtemp(prefix="jepa_ray_ckpt_"))
    pafs.copy_files(root, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return dest


def read_config(path: str | os.PathLike) -> TrialConfig:
    return config_lib.load_json(local_path(path) / CONFIG_FILE)


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    with open(local_path(path) / METRICS_FILE) as f:
        return json.load(f)


def load_state(path: str | os.PathLike, name: str = MODEL_FILE, map_location: str | torch.device = "cpu") -> dict:
    """A state file of a checkpoint, loaded with weights_only=True (no pickled code runs)."""
    return torch.load(local_path(path) / name, map_location=map_location, weights_only=True)


def load_encoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The encoder of a checkpoint in eval mode; forward(x) gives (backbone features, z)."""
    from jepa_ray.model import create_model

    local = local_path(path)
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (local / name).is_file():
            raise FileNotFoundError(f"checkpoint {path}: missing {name} (expected {MODEL_FILE}, {CONFIG_FILE}, {METRICS_FILE})")
    cfg = config_lib.load_json(local / CONFIG_FILE)
    model = create_model(cfg)
    model.load_state_dict(load_state(local, MODEL_FILE, map_location)["model"])
    return model.to(map_location).eval()
