"""Checkpoints in the format of docs/design.md, and the exported encoder.

A checkpoint is a directory with `model.pt` (state dicts, loadable with
`torch.load(..., weights_only=True)`), `config.json` (the resolved config with the loss
convention), `metrics.json` (the metrics of the epoch it closes), `history.json` (every epoch's
metrics so far) and `preprocessing.json` (what turns raw images into the encoder's input).
Resumable checkpoints add `train_state.pt` (optimizer state, epoch, global step); no RNG state
is needed because every random draw is seeded from (seed, step) (jepa_ray.seeding).

Reads work on a local directory or a remote URI (s3://, gs://, ...) file by file: nothing
downloads a whole checkpoint to read one file. Where checkpoints live is jepa_ray.train.store's.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jepa_ray.config import TrialConfig, from_dict, save_json
from jepa_ray.data.registry import dataset_info
from jepa_ray.errors import writing

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported where tensors are read or written: the sweep driver, its MLflow writer and the
# Pareto export read checkpoints' JSON files only, and stay free of torch (seconds per start,
# hundreds of MB per process).

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
TRAIN_STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"  # every epoch's metrics up to the checkpoint (small: read to fill gaps)
PREPROCESSING_FILE = "preprocessing.json"  # mean, std, image size, channels: raw images -> encoder input
ACTIVATION_FILE = "activation_rates.json"  # the final checkpoint's per-dimension activation rates of z
EXPORT_FILES = (MODEL_FILE, CONFIG_FILE, METRICS_FILE, PREPROCESSING_FILE)
"""What an exported encoder needs (the first two are required)."""


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
        if hasattr(v, "item") and not isinstance(v, (int, float)):  # a 0-d tensor or numpy scalar
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    model: nn.Module | dict,
    cfg: TrialConfig,
    metrics: dict[str, Any] | None = None,
    extra_state: dict[str, dict] | None = None,
    train_state: dict[str, Any] | None = None,
    history: list[dict] | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (temp dir + rename) and return its path.

    extra_state: more state dicts stored in model.pt beside `model` (e.g. the online probes).
    train_state: what resuming needs (optimizer state, epoch, step); kept out of model.pt.
    history: every epoch's metrics so far. extra_files: more small text files (name -> text).
    A full device raises StorageFull naming `directory` (jepa_ray.errors), nothing left behind."""
    directory = Path(directory)
    with writing(directory):
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        try:
            state = model if isinstance(model, dict) else unwrap(model).state_dict()
            _save_torch({"model": state, **(extra_state or {})}, tmp / MODEL_FILE)
            save_json(cfg, tmp / CONFIG_FILE)
            with open(tmp / METRICS_FILE, "w") as f:
                json.dump(_json_safe(metrics or {}), f, indent=2, sort_keys=True)
            if train_state is not None:
                _save_torch(train_state, tmp / TRAIN_STATE_FILE)
            if history is not None:
                (tmp / HISTORY_FILE).write_text(json.dumps([_json_safe(m) for m in history]))
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
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


def _save_torch(obj: Any, path: Path) -> None:
    """torch.save through a Python file: a failing write then raises its OSError (ENOSPC, which
    `writing` turns into StorageFull) instead of only torch's "unexpected pos" RuntimeError."""
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)


# --------------------------------------------------------------------------------------------
# Reading, local or remote, one file at a time


def is_remote(path_or_uri: str | os.PathLike) -> bool:
    """True for s3://, gs://, hdfs://, ... (not for plain paths and file:// URIs)."""
    text = str(path_or_uri)
    scheme = text.split("://", 1)[0] if "://" in text else ""
    return bool(scheme) and scheme != "file" and len(scheme) > 1


def local_dir(path_or_uri: str | os.PathLike) -> Path:
    """The directory of a local path or file:// URI (ValueError for a remote URI)."""
    text = str(path_or_uri)
    if is_remote(text):
        raise ValueError(f"{text} is remote: read its files with read_bytes / read_text")
    return Path(text.removeprefix("file://"))


def _remote(uri: str, name: str):
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    return pafs, fs, f"{root.rstrip('/')}/{name}"


def has_file(path_or_uri: str | os.PathLike, name: str) -> bool:
    """Whether a checkpoint directory (local or remote) holds the file `name`."""
    if is_remote(path_or_uri):
        pafs, fs, target = _remote(str(path_or_uri), name)
        return fs.get_file_info(target).type == pafs.FileType.File
    return (local_dir(path_or_uri) / name).is_file()


def read_bytes(path_or_uri: str | os.PathLike, name: str) -> bytes:
    """One file of a checkpoint directory; FileNotFoundError naming it when absent."""
    if is_remote(path_or_uri):
        pafs, fs, target = _remote(str(path_or_uri), name)
        if fs.get_file_info(target).type != pafs.FileType.File:
            raise FileNotFoundError(f"{path_or_uri}: no {name}")
        with fs.open_input_stream(target) as f:
            return f.read()
    file = local_dir(path_or_uri) / name
    if not file.is_file():
        raise FileNotFoundError(f"{path_or_uri}: no {name}")
    return file.read_bytes()


def read_text(path_or_uri: str | os.PathLike, name: str) -> str | None:
    """One small file of a checkpoint directory (local or remote) as text; None if absent."""
    try:
        return read_bytes(path_or_uri, name).decode()
    except FileNotFoundError:
        return None


def copy_files(path_or_uri: str | os.PathLike, dest: Path, names: tuple[str, ...]) -> list[str]:
    """Copy the named files of a checkpoint that exist into `dest`; returns those copied."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names:
        try:
            (dest / name).write_bytes(read_bytes(path_or_uri, name))
        except FileNotFoundError:
            continue
        copied.append(name)
    return copied


def load_state(path: str | os.PathLike, name: str = MODEL_FILE, map_location: str | torch.device = "cpu") -> dict:
    """A state file of a checkpoint, loaded with weights_only=True (no pickled code runs)."""
    import torch

    if is_remote(path):
        return torch.load(io.BytesIO(read_bytes(path, name)), map_location=map_location, weights_only=True)
    file = local_dir(path) / name
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no {name}")
    return torch.load(file, map_location=map_location, weights_only=True)


def damage(path: str | os.PathLike) -> str | None:
    """Why a resumable checkpoint cannot be restored (a file missing, truncated or corrupt: a
    disk that filled or a bad block after it was written), or None when it reads back whole.
    The state files are zip archives whose members carry CRCs: checked without unpickling."""
    import zipfile

    try:
        for name in (MODEL_FILE, TRAIN_STATE_FILE):
            with zipfile.ZipFile(io.BytesIO(read_bytes(path, name))) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"{name}: {bad} fails its CRC"
        for name in (CONFIG_FILE, METRICS_FILE):
            json.loads(read_bytes(path, name))
        if has_file(path, HISTORY_FILE):
            json.loads(read_bytes(path, HISTORY_FILE))
    except FileNotFoundError as err:
        return str(err).rsplit(": ", 1)[-1]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def read_config(path: str | os.PathLike) -> TrialConfig:
    cfg = from_dict(json.loads(read_bytes(path, CONFIG_FILE)))
    if not cfg.data.channels:  # written before configs recorded their channels: the dataset's
        cfg.data.channels = dataset_info(cfg.data.dataset).channels
    return cfg


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(read_bytes(path, METRICS_FILE))


def read_history(path: str | os.PathLike) -> list[dict]:
    """Every epoch's metrics recorded in a checkpoint (`history.json`, read alone even from
    remote storage; checkpoints written before it existed kept the history in train_state.pt)."""
    text = read_text(path, HISTORY_FILE)
    if text is not None:
        return json.loads(text)
    try:
        return json.loads(load_state(path, TRAIN_STATE_FILE).get("history", "[]"))
    except FileNotFoundError:
        return []


def load_encoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The encoder of a checkpoint in eval mode; forward(images) gives (backbone features, z).

    It takes raw images, uint8 (0..255) or floats in [0, 1], (B, C, H, W): the checkpoint's
    preprocessing (the training split's mean and std, the input size) is applied inside.
    Checkpoints written before preprocessing.json existed load with a warning: their encoder
    takes images normalized as its training data was."""
    from jepa_ray.model import Preprocess, create_model  # torch, timm: only loading an encoder needs the model

    for name in (MODEL_FILE, CONFIG_FILE):
        if not has_file(path, name):
            raise FileNotFoundError(
                f"checkpoint {path}: missing {name} (expected {MODEL_FILE}, {CONFIG_FILE}, {METRICS_FILE})"
            )
    model = create_model(read_config(path))
    model.load_state_dict(load_state(path, MODEL_FILE, map_location)["model"])
    spec = read_text(path, PREPROCESSING_FILE)
    if spec is not None:
        spec = json.loads(spec)
        model.preprocess = Preprocess(spec["mean"], spec["std"], spec["image_size"], spec["channels"])
    else:
        warnings.warn(
            f"checkpoint {path} has no {PREPROCESSING_FILE} (written before checkpoints carried their "
            "preprocessing): its mean, std, image_size and channels are unknown, so the encoder takes "
            "images already normalized as its training data was, not raw ones",
            UserWarning,
            stacklevel=2,
        )
    return model.to(map_location).eval()
