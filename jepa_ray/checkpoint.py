"""Checkpoints in the DESIGN.md format and where a trial keeps them.

A checkpoint is a directory with `model.pt` (state dicts, loadable with
`torch.load(..., weights_only=True)`), `config.json` (the resolved config with the loss
convention), `metrics.json` (the metrics of the epoch it closes) and `history.json` (every
epoch's metrics so far). Resumable checkpoints add `train_state.pt` (optimizer state, epoch,
global step); no RNG state is needed because every random draw is seeded from (seed, step).

`TrialStore` is the one layout of a trial's checkpoints, the same for the command line, an
in-process sweep trial and a multi-worker Ray Train trial, on a local disk or in s3://...:
`TRIAL/checkpoints/epoch-NNNNN/` (resumable, the newest two kept), `TRIAL/checkpoints/LATEST`
(the name of the newest complete one) and `TRIAL/checkpoint/` (the final checkpoint). A reader
never sees a half-written checkpoint: local directories are written beside their place and
renamed into it, remote ones are uploaded whole before LATEST (one small object, replaced
atomically by the store) names them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from jepa_ray import config as config_lib
from jepa_ray.config import TrialConfig

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
TRAIN_STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"  # every epoch's metrics up to the checkpoint (small: read to fill gaps)
PREPROCESSING_FILE = "preprocessing.json"  # mean, std, image size, channels: raw images -> encoder input
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
                    train_state: dict[str, Any] | None = None, history: list[dict] | None = None,
                    extra_files: dict[str, str] | None = None) -> Path:
    """Write a checkpoint directory atomically (temp dir + rename) and return its path.

    extra_state: more state dicts stored in model.pt beside `model` (e.g. the online probes).
    train_state: what resuming needs (optimizer state, epoch, step); kept out of model.pt.
    history: every epoch's metrics so far. extra_files: more small text files (name -> text)."""
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


def has_file(path_or_uri: str | os.PathLike, name: str) -> bool:
    """Whether a checkpoint directory (local or remote) holds the file `name`."""
    text = str(path_or_uri)
    if is_remote(text):
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(text)
        return fs.get_file_info(f"{root.rstrip('/')}/{name}").type == pafs.FileType.File
    return (local_path(text) / name).is_file()


def read_text(path_or_uri: str | os.PathLike, name: str) -> str | None:
    """One small file of a checkpoint directory (local or remote) as text; None if absent."""
    text = str(path_or_uri)
    if is_remote(text):
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(text)
        target = f"{root.rstrip('/')}/{name}"
        if fs.get_file_info(target).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(target) as f:
            return f.read().decode()
    file = local_path(text) / name
    return file.read_text() if file.is_file() else None


def is_remote(path_or_uri: str | os.PathLike) -> bool:
    """True for s3://, gs://, hdfs://, ... (not for plain paths and file:// URIs)."""
    text = str(path_or_uri)
    scheme = text.split("://", 1)[0] if "://" in text else ""
    return bool(scheme) and scheme != "file" and len(scheme) > 1


# --------------------------------------------------------------------------------------------
# Where a trial keeps its checkpoints

EPOCHS_DIR = "checkpoints"
FINAL_DIR = "checkpoint"
LATEST_FILE = "LATEST"
FAILURE_FILE = "failure.txt"
KEEP_EPOCH_CHECKPOINTS = 2


class TrialStore:
    """The checkpoints of one trial under `uri` (a directory or s3://..., gs://...): see the
    module docstring for the layout. Only one process writes (rank 0); any may read."""

    def __init__(self, uri: str | os.PathLike):
        text = str(uri)
        self.remote = is_remote(text)
        self.uri = text.rstrip("/") if self.remote else str(Path(text.removeprefix("file://")).resolve())
        self._filesystem = None

    def child(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def save_epoch(self, epochs_done: int, write: Callable[[Path], Path]) -> str:
        """Write the resumable checkpoint after `epochs_done` epochs, point LATEST at it and
        drop all but the newest KEEP_EPOCH_CHECKPOINTS; returns its URI."""
        name = f"{EPOCHS_DIR}/epoch-{epochs_done:05d}"
        uri = self._write(name, write)
        self._write_small(f"{EPOCHS_DIR}/{LATEST_FILE}", name.split("/", 1)[1])
        self._prune()
        return uri

    def save_final(self, write: Callable[[Path], Path]) -> str:
        """Write the final checkpoint (`TRIAL/checkpoint`); returns its URI."""
        return self._write(FINAL_DIR, write)

    def latest(self) -> str | None:
        """The URI of the newest complete resumable checkpoint, or None."""
        name = self._read_small(f"{EPOCHS_DIR}/{LATEST_FILE}")
        return self.child(f"{EPOCHS_DIR}/{name.strip()}") if name else None

    def final(self) -> str | None:
        """The URI of the final checkpoint when the trial finished, else None."""
        return self.child(FINAL_DIR) if self._read_small(f"{FINAL_DIR}/{METRICS_FILE}") is not None else None

    def write_failure(self, why: str) -> None:
        self._write_small(FAILURE_FILE, why)

    def failure(self) -> str | None:
        """Why the trial failed, when a worker recorded it (multi-worker trials)."""
        return self._read_small(FAILURE_FILE)

    def clear_failure(self) -> None:
        if self.remote:
            fs, root = self._fs()
            if fs.get_file_info(f"{root}/{FAILURE_FILE}").type == self._pafs().FileType.File:
                fs.delete_file(f"{root}/{FAILURE_FILE}")
        else:
            Path(self.child(FAILURE_FILE)).unlink(missing_ok=True)

    # ---------------------------------------------------------------------------------------

    def _pafs(self):
        import pyarrow.fs as pafs

        return pafs

    def _fs(self):
        if self._filesystem is None:  # resolved once: an S3 filesystem is costly to build
            self._filesystem = self._pafs().FileSystem.from_uri(self.uri)
        return self._filesystem

    def _write(self, name: str, write: Callable[[Path], Path]) -> str:
        if not self.remote:
            return str(write(Path(self.child(name))))  # save_checkpoint renames into place
        pafs = self._pafs()
        fs, root = self._fs()
        target = f"{root}/{name}"
        with tempfile.TemporaryDirectory(prefix="jepa_ray_ckpt_") as tmp:
            local = write(Path(tmp) / "checkpoint")
            if fs.get_file_info(target).type != pafs.FileType.NotFound:
                fs.delete_dir(target)  # a restarted trial writes the same epoch again
            fs.create_dir(target, recursive=True)
            pafs.copy_files(str(local), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        return self.child(name)

    def _write_small(self, name: str, text: str) -> None:
        if self.remote:
            fs, root = self._fs()
            fs.create_dir(f"{root}/{name.rsplit('/', 1)[0]}" if "/" in name else root, recursive=True)
            with fs.open_output_stream(f"{root}/{name}") as f:  # one PUT: replaced whole
                f.write(text.encode())
            return
        path = Path(self.child(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(text)
        os.replace(tmp, path)

    def _read_small(self, name: str) -> str | None:
        if self.remote:
            pafs = self._pafs()
            fs, root = self._fs()
            if fs.get_file_info(f"{root}/{name}").type != pafs.FileType.File:
                return None
            with fs.open_input_stream(f"{root}/{name}") as f:
                return f.read().decode()
        path = Path(self.child(name))
        return path.read_text() if path.is_file() else None

    def _prune(self) -> None:
        names = sorted(self._epoch_dirs())
        for name in names[:-KEEP_EPOCH_CHECKPOINTS]:
            if self.remote:
                fs, root = self._fs()
                fs.delete_dir(f"{root}/{EPOCHS_DIR}/{name}")
            else:
                shutil.rmtree(self.child(f"{EPOCHS_DIR}/{name}"), ignore_errors=True)

    def _epoch_dirs(self) -> list[str]:
        if self.remote:
            pafs = self._pafs()
            fs, root = self._fs()
            infos = fs.get_file_info(pafs.FileSelector(f"{root}/{EPOCHS_DIR}", allow_not_found=True))
            return [i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("epoch-")]
        base = Path(self.child(EPOCHS_DIR))
        return [p.name for p in base.glob("epoch-*") if p.is_dir()] if base.is_dir() else []


def read_config(path: str | os.PathLike) -> TrialConfig:
    return config_lib.load_json(local_path(path) / CONFIG_FILE)


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    with open(local_path(path) / METRICS_FILE) as f:
        return json.load(f)


def load_state(path: str | os.PathLike, name: str = MODEL_FILE, map_location: str | torch.device = "cpu") -> dict:
    """A state file of a checkpoint, loaded with weights_only=True (no pickled code runs)."""
    return torch.load(local_path(path) / name, map_location=map_location, weights_only=True)


def load_encoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The encoder of a checkpoint in eval mode; forward(images) gives (backbone features, z).

    It takes raw images, uint8 (0..255) or floats in [0, 1], (B, C, H, W): the checkpoint's
    preprocessing (the training split's mean and std, the input size) is applied inside.
    Checkpoints written before preprocessing.json existed load with a warning: their encoder
    takes images normalized as its training data was."""
    import warnings

    from jepa_ray.model import Preprocess, create_model

    local = local_path(path)
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (local / name).is_file():
            raise FileNotFoundError(f"checkpoint {path}: missing {name} (expected {MODEL_FILE}, {CONFIG_FILE}, {METRICS_FILE})")
    cfg = config_lib.load_json(local / CONFIG_FILE)
    model = create_model(cfg)
    model.load_state_dict(load_state(local, MODEL_FILE, map_location)["model"])
    if (local / PREPROCESSING_FILE).is_file():
        spec = json.loads((local / PREPROCESSING_FILE).read_text())
        model.preprocess = Preprocess(spec["mean"], spec["std"], spec["image_size"], spec["channels"])
    else:
        warnings.warn(f"checkpoint {path} has no {PREPROCESSING_FILE} (written before checkpoints carried their "
                      "preprocessing): its mean, std, image_size and channels are unknown, so the encoder takes "
                      "images already normalized as its training data was, not raw ones", UserWarning, stacklevel=2)
    return model.to(map_location).eval()
