"""Where a trial keeps its checkpoints: one layout for the command line, an in-process sweep
trial and a multi-worker Ray Train trial, on a local disk or in s3://...:

    TRIAL/checkpoints/epoch-NNNNN/   resumable checkpoints, the newest two kept
    TRIAL/checkpoints/LATEST         the name of the newest complete one
    TRIAL/checkpoint/                the final checkpoint
    TRIAL/failure.txt                why a multi-worker trial failed (written by rank 0)

A reader never sees a half-written checkpoint: local directories are written beside their
place and renamed into it, remote ones are uploaded whole before LATEST (one small object,
replaced whole) names them. The restore point of a trial is what its store holds, not what Ray
Train last registered, so a worker killed after a checkpoint loses at most the epoch in flight.
A write that finds the disk full raises StorageFull naming what it was writing, and leaves the
store as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from jepa_ray.errors import one_line, writing
from jepa_ray.train.checkpoint import METRICS_FILE, TRAIN_STATE_FILE, damage, has_file, is_remote

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

    def restorable(self, say: Callable[[str], None] | None = None) -> str | None:
        """The newest resumable checkpoint that reads back whole: LATEST's, else the newest kept
        before it, saying so in one line through `say` (None when there is none to restore)."""
        latest = self.latest()
        if latest is None:
            return None
        newest = latest.rsplit("/", 1)[1]
        older = sorted((n for n in self._epoch_dirs() if n < newest), reverse=True)
        why = ""
        for uri in [latest] + [self.child(f"{EPOCHS_DIR}/{n}") for n in older]:
            damaged = damage(uri)
            if damaged is None:
                if why and say is not None:
                    say(f"warning: checkpoint {latest} cannot be restored ({why}); resuming from {uri}")
                return uri
            why = why or one_line(damaged, 200)
        if say is not None:
            say(f"warning: no checkpoint in {self.uri} can be restored ({why}); the trial starts over")
        return None

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
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                tmp.write_text(text)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

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
            return [
                i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("epoch-")
            ]
        base = Path(self.child(EPOCHS_DIR))
        return [p.name for p in base.glob("epoch-*") if p.is_dir()] if base.is_dir() else []


def resumable_checkpoint(uri: str) -> str | None:
    """The newest checkpoint in `uri` (what a trial's LATEST names, for its history), or `uri`
    itself when it is a resumable checkpoint directory (what older sweeps recorded)."""
    latest = TrialStore(uri).latest()
    if latest is not None:
        return latest
    return uri if has_file(uri, TRAIN_STATE_FILE) else None


def restorable_checkpoint(uri: str, say: Callable[[str], None] | None = None) -> str | None:
    """The checkpoint to restore training from in `uri`: the newest that reads back whole of a
    trial store (see TrialStore.restorable), or `uri` itself when it is a resumable checkpoint
    directory (what older sweeps recorded)."""
    restorable = TrialStore(uri).restorable(say)
    if restorable is not None:
        return restorable
    return uri if has_file(uri, TRAIN_STATE_FILE) and damage(uri) is None else None
