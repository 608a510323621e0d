"""The trial store (jepa_ray.train.store.TrialStore): the one layout of a trial's checkpoints, on
a local disk (atomic renames) and on remote storage (whole upload, then the LATEST object),
exercised here through pyarrow's in-memory `mock://` filesystem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jepa_ray import config as config_lib
from jepa_ray.train import checkpoint as ckpt_lib
from jepa_ray.train.store import TrialStore


def writer(tag: str, epoch: int):
    """A checkpoint writer that records which epoch wrote it."""

    def write(path: Path) -> Path:
        return ckpt_lib.save_checkpoint(
            path,
            model={},
            cfg=config_lib.TrialConfig(),
            metrics={"epoch": epoch},
            history=[{"epoch": e, "tag": tag} for e in range(epoch + 1)],
        )

    return write


@pytest.fixture(params=["local", "remote"])
def store(request, tmp_path) -> TrialStore:
    return TrialStore(tmp_path / "trial" if request.param == "local" else "mock:///bucket/trial")


def metrics_of(store: TrialStore, uri: str) -> dict:
    if store.remote:
        fs, root = store._fs()
        with fs.open_input_stream(f"{root}/{uri[len(store.uri) + 1 :]}/{ckpt_lib.METRICS_FILE}") as f:
            return json.loads(f.read())
    return json.loads((Path(uri) / ckpt_lib.METRICS_FILE).read_text())


def test_latest_names_the_newest_epoch_and_only_two_are_kept(store):
    assert store.latest() is None and store.final() is None
    for epoch in range(4):
        uri = store.save_epoch(epoch + 1, writer("a", epoch))
        assert store.latest() == uri == store.child(f"checkpoints/epoch-{epoch + 1:05d}")
        assert metrics_of(store, uri) == {"epoch": epoch}
    assert sorted(store._epoch_dirs()) == ["epoch-00003", "epoch-00004"]
    assert store.final() is None
    final = store.save_final(writer("a", 3))
    assert store.final() == final == store.child("checkpoint")


def test_a_restarted_trial_rewrites_an_epoch_in_place(store):
    store.save_epoch(1, writer("first", 0))
    store.save_epoch(2, writer("first", 1))
    again = store.save_epoch(2, writer("second", 1))  # died before LATEST moved on: trained again
    assert store.latest() == again and sorted(store._epoch_dirs()) == ["epoch-00001", "epoch-00002"]


def test_failure_is_recorded_and_cleared(store):
    assert store.failure() is None
    store.write_failure("collapse at epoch 3: z is all zeros")
    assert store.failure() == "collapse at epoch 3: z is all zeros"
    store.clear_failure()
    assert store.failure() is None


def test_history_is_read_alone_and_from_older_checkpoints(tmp_path):
    store = TrialStore(tmp_path)
    uri = store.save_epoch(3, writer("x", 2))
    assert [m["epoch"] for m in ckpt_lib.read_history(uri)] == [0, 1, 2]
    import torch

    old = tmp_path / "old"  # a checkpoint of an earlier version: the history inside train_state.pt
    old.mkdir()
    torch.save({"history": json.dumps([{"epoch": 0}])}, old / ckpt_lib.TRAIN_STATE_FILE)
    assert ckpt_lib.read_history(old) == [{"epoch": 0}]
    assert ckpt_lib.read_history(tmp_path / "nothing-here") == []


def test_remote_detection():
    assert ckpt_lib.is_remote("s3://bucket/x") and ckpt_lib.is_remote("gs://b/y")
    assert not ckpt_lib.is_remote("/tmp/x") and not ckpt_lib.is_remote("file:///tmp/x")
    assert not ckpt_lib.is_remote("C://windows")  # a drive letter
