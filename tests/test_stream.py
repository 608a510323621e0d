"""The streaming input path (jepa_ray.data.stream) on a synthetic image folder the tests write:
mixed modes converted to RGB, bad images skipped and counted, the same batches on 1 and 2 ranks
and across runs and resumes, the in-memory path's batches, statistics and trained weights, and
peak memory that does not grow with the number of images."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from jepa_ray import config as config_lib
from jepa_ray.config import ConfigError, DataConfig
from jepa_ray.data import BatchIterator, channel_stats, load_dataset
from jepa_ray.data import stream as S
from jepa_ray.data.sources import imagefolder_sources
from jepa_ray.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10
SIDE = 12


def write_folder(root: Path, per_class: int, *, side: int = SIDE, seed: int = 0, bad: bool = True) -> dict[str, Path]:
    """root/{train,test}/c<k>/ of small random JPEGs (test: a quarter as many); in train, class 0
    holds grayscale, CMYK and RGBA (PNG) images and, when `bad`, one file of garbage bytes and one
    truncated JPEG. Returns the special files by kind."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    special: dict[str, Path] = {}
    for split, count in (("train", per_class), ("test", max(1, per_class // 4))):
        for c in range(CLASSES):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                arr = (rng.integers(0, 256, (side, side + 3, 3)) // 4 + 40 * (c % 5)).astype(np.uint8)
                img, ext, fmt = Image.fromarray(arr), "jpg", "JPEG"
                if split == "train" and c == 0 and i < 3:
                    kind = ("gray", "cmyk", "rgba")[i]
                    img = img.convert({"gray": "L", "cmyk": "CMYK", "rgba": "RGBA"}[kind])
                    ext, fmt = ("png", "PNG") if kind == "rgba" else ("jpg", "JPEG")
                    special[kind] = folder / f"{i:05d}.{ext}"
                img.save(folder / f"{i:05d}.{ext}", format=fmt, quality=90)
    if bad:
        special["garbage"] = root / "train" / "c0" / "00003.jpg"
        special["garbage"].write_bytes(b"not an image at all" * 4)
        good = io.BytesIO()
        Image.fromarray(np.zeros((side, side, 3), np.uint8) + 77).save(good, format="JPEG")
        special["truncated"] = root / "train" / "c0" / "00004.jpg"
        special["truncated"].write_bytes(good.getvalue()[:200])
    return special


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """2,000 train and 500 test images in 10 classes, 3 of them in other modes, 2 unreadable."""
    root = tmp_path_factory.mktemp("folder")
    return root, write_folder(root, per_class=200)


def data_cfg(root: Path, **kw) -> DataConfig:
    base = dict(dataset="imagefolder", data_dir=str(root), image_size=SIDE, data_workers=0, max_bad_fraction=0.01)
    return DataConfig(**{**base, **kw})


def index(source) -> dict[str, int]:
    return {source.describe(i): i for i in range(len(source))}


# --------------------------------------------------------------------------------------------
# Sources and bad input


def test_mixed_modes_are_read_as_rgb_and_bad_images_replaced_by_the_next(folder):
    root, special = folder
    train, test, classes = imagefolder_sources(root)
    assert (len(train), len(test), len(classes)) == (2000, 500, CLASSES)
    where = index(train)
    for kind in ("gray", "cmyk", "rgba"):
        img, label, problem = train.read(where[str(special[kind])], SIDE)
        assert img.shape == (3, SIDE, SIDE) and img.dtype == torch.uint8 and label == 0 and problem == ""
    gray, _, _ = train.read(where[str(special["gray"])], SIDE)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    bad = where[str(special["garbage"])]
    img, label, problem = train.read(bad, SIDE)
    assert problem.startswith(str(special["garbage"])) and "cannot decode" in problem
    nxt, _, _ = train.read(bad + 2, SIDE)  # the garbage file's next one is truncated too
    assert torch.equal(img, nxt) and label == 0
    assert train.read(where[str(special["truncated"])], SIDE)[2].startswith(str(special["truncated"]))


def test_bad_images_are_counted_and_too_many_are_one_line_error(folder, caplog):
    root, _ = folder
    splits = S.source_splits(data_cfg(root))
    _, _, bad = S.read_rows(splits.train, torch.arange(len(splits.train)), SIDE)
    assert len(bad) == 2
    with caplog.at_level("WARNING"):
        S.check_bad(bad, 2000, 0.01, "train")
    assert "skipped 2 unreadable image(s) of 2000" in caplog.text
    with pytest.raises(UsageError, match=r"^train: 2 of 2000 images are unreadable.*max_bad_fraction") as err:
        S.check_bad(bad, 2000, 0.0005, "train")
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="max_bad_fraction"):
        load_dataset(data_cfg(root, max_bad_fraction=0.0))


def test_a_class_folder_without_images_is_an_error_naming_it(tmp_path):
    write_folder(tmp_path, per_class=2, bad=False)
    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "train" / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=r"class folder '.*train/empty' has no images") as err:
        S.source_splits(data_cfg(tmp_path))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="train/empty"):
        load_dataset(data_cfg(tmp_path, stream="memory"))


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"stream": "disk"}, "stream"),
        ({"stream": "stream", "dataset": "digits", "data_dir": None}, "stream"),
        ({"stream_threshold_gb": 0}, "stream_threshold_gb"),
        ({"data_workers": -1}, "data_workers"),
        ({"prefetch_batches": 0}, "prefetch_batches"),
        ({"stream_augment": "gpu"}, "stream_augment"),
        ({"stats_samples": 0}, "stats_samples"),
        ({"max_bad_fraction": 1.0}, "max_bad_fraction"),
    ],
)
def test_stream_fields_are_validated_naming_the_field(overrides, field, tmp_path):
    base = {"dataset": "imagefolder", "data_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match=rf"^config field '{field}' = .* is not allowed; allowed: ") as err:
        config_lib.resolve(config_lib.apply_overrides(config_lib.TrialConfig(), {**base, **overrides}))
    assert "\n" not in str(err.value)


def test_auto_streams_by_decoded_size(folder):
    root, _ = folder
    splits = S.source_splits(data_cfg(root))
    assert splits.decoded_bytes() == 2500 * 3 * SIDE * SIDE
    assert not S.use_stream(data_cfg(root, stream_threshold_gb=1.0), splits)
    assert S.use_stream(data_cfg(root, stream_threshold_gb=1e-3), splits)
    assert not S.use_stream(data_cfg(root, stream="memory", stream_threshold_gb=1e-9), splits)
    assert S.use_stream(data_cfg(root, stream="stream"), splits)
    assert not S.use_stream(DataConfig(stream="stream"))  # digits has no streaming path


# --------------------------------------------------------------------------------------------
# Batches


def epoch_batches(splits: S.SourceSplits, epoch: int, rank: int, world: int, workers: int = 0) -> list[dict]:
    batches = BatchIterator(len(splits.train), 128, rank=rank, world_size=world, seed=7)
    sampler = S.EpochSteps(len(batches))
    sampler.set_epoch(epoch)
    cfg = DataConfig(data_workers=workers, prefetch_batches=2)
    loader = S.make_loader(S.TrainBatches(splits.train, splits.side, batches), cfg, sampler=sampler, persistent=False)
    return list(loader)


def test_two_ranks_split_each_global_batch_and_their_union_is_the_epoch(folder):
    root, _ = folder
    splits = S.source_splits(data_cfg(root))
    one = epoch_batches(splits, 1, 0, 1)
    halves = [epoch_batches(splits, 1, r, 2, workers=1) for r in range(2)]  # one rank through a worker process
    assert len(one) == len(halves[0]) == len(halves[1]) == 2000 // 128
    for step, whole in enumerate(one):
        assert torch.equal(torch.cat([halves[0][step]["x"], halves[1][step]["x"]]), whole["x"])
        assert torch.equal(torch.cat([halves[0][step]["y"], halves[1][step]["y"]]), whole["y"])
    rows = [BatchIterator(2000, 128, rank=r, world_size=2, seed=7) for r in range(2)]
    for it in rows:
        it.set_epoch(1)
    seen = torch.cat([idx for it in rows for idx in it])
    assert len(seen) == len(set(seen.tolist())) == (2000 // 128) * 128  # no overlap; the epoch less the dropped tail
    assert set(seen.tolist()) <= set(range(2000))


def test_batches_are_deterministic_across_runs_and_a_resume_at_an_epoch_boundary(folder):
    root, _ = folder
    splits = S.source_splits(data_cfg(root))
    run = [epoch_batches(splits, e, 0, 1) for e in range(3)]
    again = [epoch_batches(S.source_splits(data_cfg(root)), e, 0, 1, workers=2) for e in range(3)]
    resumed = [epoch_batches(S.source_splits(data_cfg(root)), e, 0, 1) for e in (1, 2)]  # fresh objects at epoch 1
    for a, b in zip(run, again):
        assert all(torch.equal(x["x"], y["x"]) and torch.equal(x["y"], y["y"]) for x, y in zip(a, b))
    for a, b in zip(run[1:], resumed):
        assert all(torch.equal(x["x"], y["x"]) for x, y in zip(a, b))
    assert not torch.equal(run[0][0]["x"], run[1][0]["x"])  # epochs differ


def test_streamed_batches_and_statistics_are_the_in_memory_paths(folder):
    root, _ = folder
    memory = load_dataset(data_cfg(root, stream="memory"))
    splits = S.open_stream(data_cfg(root, stats_samples=10_000))
    assert (splits.mean, splits.std) == (memory.mean, memory.std) == channel_stats(memory.train_x)
    batches = BatchIterator(2000, 128, seed=7)
    batches.set_epoch(2)
    streamed = epoch_batches(splits, 2, 0, 1)
    for idx, got in zip(batches, streamed):
        assert torch.equal(got["x"], memory.train_x[idx]) and torch.equal(got["y"], memory.train_y[idx])
    sampled = S.sample_stats(splits.train, SIDE, 500)  # a sample: close to, not equal to, the split's
    assert np.allclose(sampled[0], memory.mean, atol=0.02) and np.allclose(sampled[1], memory.std, atol=0.02)


def test_holdout_split_and_subsets_match_the_in_memory_path(tmp_path):
    write_folder(tmp_path / "all", per_class=20, bad=False)
    flat = tmp_path / "all" / "train"  # one folder per class, no split folders: 80/20 holdout
    cfg = data_cfg(flat, max_train_samples=100, max_test_samples=30)
    memory = load_dataset(cfg)
    splits = S.source_splits(cfg)
    x, y, _ = S.read_rows(splits.train, torch.arange(len(splits.train)), SIDE)
    tx, ty, _ = S.read_rows(splits.test, torch.arange(len(splits.test)), SIDE)
    assert torch.equal(x, memory.train_x) and torch.equal(y, memory.train_y)
    assert torch.equal(tx, memory.test_x) and torch.equal(ty, memory.test_y)


def test_parquet_shards_stream_the_rows_in_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("test", 60)):
        (tmp_path / split).mkdir()
        for shard in range(3):
            blobs = []
            for _ in range(n // 3):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3)).astype(np.uint8)).save(buf, format="PNG")
                blobs.append(buf.getvalue())
            labels = [(shard * 7 + i) % CLASSES for i in range(n // 3)]
            pq.write_table(
                pa.table({"image": blobs, "label": labels}), tmp_path / split / f"{shard}.parquet", row_group_size=32
            )
    cfg = DataConfig(dataset="parquet", data_dir=str(tmp_path), data_workers=0)
    memory = load_dataset(cfg)
    splits = S.source_splits(cfg)
    assert (len(splits.train), len(splits.test), splits.num_classes) == (300, 60, CLASSES)
    rows = torch.tensor([299, 0, 150, 31, 32])
    x, y, bad = S.read_rows(splits.train, rows, SIDE)
    assert torch.equal(x, memory.train_x[rows]) and torch.equal(y, memory.train_y[rows]) and bad == []


# --------------------------------------------------------------------------------------------
# Training


def tiny_trial(root: Path, **overrides):
    base = {
        "dataset": "imagefolder",
        "data_dir": str(root),
        "image_size": SIDE,
        "epochs": 2,
        "batch_size": 64,
        "num_slices": 32,
        "proj_dims": "32-32",
        "probe_epochs": 2,
        "warmup_epochs": 0,
        "data_workers": 1,
        "max_bad_fraction": 0.01,
        "checkpoint_every": 1,
        "collapse_guard": False,
    }
    return config_lib.resolve(config_lib.apply_overrides(config_lib.preset("smoke"), {**base, **overrides}))


@pytest.mark.slow
def test_in_memory_and_streaming_training_give_the_same_weights(tmp_path):
    """Same rows, same uint8 images, same statistics, same augmentation stream: the weights are
    equal bit for bit. On CPU, views made in the data workers (stream_augment=workers, a CPU
    generator seeded by the global step) are the device path's views, so they match too. On CUDA
    they could not: the device path draws from a CUDA generator, whose stream differs from the
    CPU one for the same seed (the same distribution, other numbers)."""
    from jepa_ray.train import LocalReporter, fit
    from jepa_ray.train import checkpoint as ckpt_lib

    write_folder(tmp_path / "data", per_class=16, bad=False)
    weights = {}
    for mode, augment in (("memory", "device"), ("stream", "device"), ("stream", "workers")):
        out = tmp_path / f"{mode}-{augment}"
        fit(tiny_trial(tmp_path / "data", stream=mode, stream_augment=augment), LocalReporter(out))
        weights[mode, augment] = ckpt_lib.load_state(out / "checkpoint", ckpt_lib.MODEL_FILE)["model"]
    want = weights["memory", "device"]
    for key, got in weights.items():
        assert got.keys() == want.keys()
        for name, tensor in want.items():
            assert torch.equal(got[name], tensor), f"{key}: {name} differs"


def test_the_final_evaluation_of_a_streamed_split_uses_the_trials_data_workers_and_preallocated_features(
    tmp_path, monkeypatch
):
    """The final evaluation of a streamed trial reads both splits through the data worker that
    served the training (forked once, before the first step: not forked again from the grown
    trainer), writes the features into matrices allocated once at N x d (no per-batch list, no
    concatenation), and gives the in-memory evaluation's metrics bit for bit; with the kNN bank
    and the metrics read 7 rows at a time it gives them again (RankMe to rounding)."""
    import importlib

    from jepa_ray import contract as M
    from jepa_ray import metrics
    from jepa_ray.data import ViewMaker
    from jepa_ray.eval import probe
    from jepa_ray.model import Preprocess, create_model
    from jepa_ray.train import final_evaluation
    from jepa_ray.train.feed import open_feed
    from jepa_ray.train.step import runtime

    E = importlib.import_module("jepa_ray.eval.evaluate")
    write_folder(tmp_path / "data", per_class=16, bad=False)  # 160 train, 40 test images
    cfg = tiny_trial(tmp_path / "data", stream="stream")  # one data worker
    rt = runtime(cfg, torch.device("cpu"))
    feed, _ = open_feed(cfg, rt, lambda mean, std, size, channels: ViewMaker(cfg.views, size, mean, std, channels))
    assert feed.streaming
    torch.manual_seed(0)
    model = create_model(cfg)
    preprocess = Preprocess(feed.mean, feed.std, feed.image_size, feed.num_channels)

    log = tmp_path / "readers"
    real_read_rows = S.read_rows

    def read_rows(source, rows, side):  # the data worker, forked after this patch, inherits it
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real_read_rows(source, rows, side)

    def readers() -> set[int]:
        pids = {int(p) for p in log.read_text().split()}
        log.unlink()
        return pids

    monkeypatch.setattr(S, "read_rows", read_rows)
    assert sum(len(y) for _, y in feed.epoch(0)) == 128  # two steps of 64
    training = readers()
    assert len(training) == 1 and os.getpid() not in training

    allocated, evaluated = [], []
    real_allocate, real_evaluate = E.FeatureRows._allocate, E.evaluate

    def allocate(rows, h, z, labels):
        real_allocate(rows, h, z, labels)
        allocated.append((rows.h, rows.z))

    def evaluate(cfg, *features_and_rest):
        evaluated.append(features_and_rest[:6])
        return real_evaluate(cfg, *features_and_rest)

    monkeypatch.setattr(E.FeatureRows, "_allocate", allocate)
    monkeypatch.setattr(E, "evaluate", evaluate)
    streamed, _ = final_evaluation(cfg, model, feed, preprocess, rt)
    assert readers() == training
    (train_h, train_z), (test_h, test_z) = allocated
    assert [tuple(t.shape) for t in (train_h, train_z, test_h, test_z)] == [(160, 128), (160, 32), (40, 128), (40, 32)]
    tr_h, tr_z, tr_y, te_h, te_z, te_y = evaluated[0]
    assert tr_h is train_h and tr_z is train_z and te_h is test_h and te_z is test_z
    assert tr_y.shape == (160,) and te_y.shape == (40,)

    timing = (M.EVAL_S, M.EVAL_S_PER_10K)
    streamed = {k: v for k, v in streamed.items() if k not in timing}
    batch = max(256, cfg.optim.batch_size)
    memory, _ = E.evaluate_encoder(
        cfg, model, load_dataset(cfg.data), preprocess, device=rt.device, autocast_dtype=None, batch_size=batch
    )
    assert memory == streamed

    for module, name in ((probe, "KNN_BANK_BLOCK"), (probe, "ROW_BLOCK"), (metrics, "ROW_BLOCK")):
        monkeypatch.setattr(module, name, 7)
    blocked, _ = final_evaluation(cfg, model, feed, preprocess, rt)
    feed.close()
    blocked = {k: v for k, v in blocked.items() if k not in timing}
    assert blocked[M.RANK_ME] == pytest.approx(streamed[M.RANK_ME], rel=1e-9)
    assert {**blocked, M.RANK_ME: 0.0} == {**streamed, M.RANK_ME: 0.0}


RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from pathlib import Path
    from jepa_ray.config import DataConfig
    from jepa_ray.data import BatchIterator, load_dataset
    from jepa_ray.data import stream as S

    def vm(key):
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024

    root, mode = Path(sys.argv[1]), sys.argv[2]
    import torchvision.io, PIL.Image, pyarrow  # the libraries' own memory, before the baseline
    base = vm("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    cfg = DataConfig(
        dataset="imagefolder", data_dir=str(root), image_size=64, data_workers=0, stream=mode, stats_samples=512
    )
    if mode == "memory":
        splits = load_dataset(cfg)
    else:
        splits = S.open_stream(cfg)
        batches = BatchIterator(len(splits.train), 64, seed=0)
        train = S.TrainBatches(splits.train, splits.side, batches)
        for x in S.make_loader(train, cfg, sampler=S.EpochSteps(len(batches))):
            pass
        for x in S.row_loader(splits.test, splits.side, torch.arange(len(splits.test)), 64, cfg):
            pass
    print(json.dumps({"peak_mb": vm("VmHWM:") - base}))
    """
)


def peak_rss_mb(root: Path, mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(root), mode],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


@pytest.mark.slow
def test_streaming_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Peak RSS over a whole epoch and a test pass at N = 1,250 and 4N images of 64 px, above the
    RSS after imports (Linux: VmHWM, reset through /proc/self/clear_refs).

    Tolerance 6 MB: what grows with N on the streaming path is its index, a path (~100 bytes), a
    label and a permutation entry (8 bytes each) per image: ~0.12 KB x 3N = 0.5 MB here, plus a
    few MB of allocator noise between runs. The in-memory path on the same folders is the
    control: it must grow by the decoded images it holds, 3N x 12 KB = 46 MB, which shows the
    measurement sees growth of that size. stats_samples is 512 at both sizes: the statistics'
    sample is a fixed cost (at the default 2,048 the small folder, with fewer train images, would
    sample fewer)."""
    small, large = tmp_path / "small", tmp_path / "large"
    write_folder(small, per_class=100, side=64, bad=False)
    write_folder(large, per_class=400, side=64, bad=False)
    stream_small, stream_large = peak_rss_mb(small, "stream"), peak_rss_mb(large, "stream")
    memory_small, memory_large = peak_rss_mb(small, "memory"), peak_rss_mb(large, "memory")
    assert stream_large - stream_small < 6.0, (stream_small, stream_large)
    assert memory_large - memory_small > 35.0, (memory_small, memory_large)


class SimulatedCrash(Exception):
    pass


@pytest.mark.slow
def test_a_streamed_trial_resumed_at_an_epoch_boundary_repeats_the_uninterrupted_one(tmp_path):
    import shutil

    from jepa_ray.train import LocalReporter, fit
    from jepa_ray.train import checkpoint as ckpt_lib
    from jepa_ray.train.store import TrialStore

    write_folder(tmp_path / "data", per_class=16)  # with its two unreadable images
    cfg = tiny_trial(tmp_path / "data", stream="stream", epochs=3, max_bad_fraction=0.02)
    whole = fit(cfg, LocalReporter(tmp_path / "whole"))
    assert whole["time/eval_s"] > 0 and whole["time/eval_s_per_10k"] > 0

    def crash_after_epoch_0(metrics: dict, kept) -> None:
        if metrics["epoch"] == 0:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        fit(cfg, LocalReporter(tmp_path / "crashed", callback=crash_after_epoch_0))
    saved = tmp_path / "saved"
    shutil.copytree(TrialStore(tmp_path / "crashed").latest(), saved)
    trained: list[int] = []
    fit(cfg, LocalReporter(tmp_path / "resumed", resume_from=saved), on_epoch=lambda m: trained.append(m["epoch"]))
    assert trained == [1, 2]
    got = ckpt_lib.load_state(tmp_path / "resumed" / "checkpoint", ckpt_lib.MODEL_FILE)["model"]
    want = ckpt_lib.load_state(tmp_path / "whole" / "checkpoint", ckpt_lib.MODEL_FILE)["model"]
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.slow
def test_a_streamed_trial_with_too_many_bad_images_stops_with_one_line(tmp_path):
    from jepa_ray.train import LocalReporter, fit

    write_folder(tmp_path / "data", per_class=16)
    with pytest.raises(UsageError, match=r"train split \(epoch 0\): \d+ of 160 images are unreadable") as err:
        fit(tiny_trial(tmp_path / "data", stream="stream", max_bad_fraction=0.001), LocalReporter(tmp_path / "out"))
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_sweep_streams_an_image_folder_end_to_end(ray_cluster, tmp_path):
    """The chain a user runs: a sweep over an image folder (mixed modes, two unreadable files)
    with the streaming path forced, two trials to their end, their data and eval time in MLflow."""
    from test_sweep import parent_and_children, run_sweep

    root = tmp_path / "images"
    write_folder(root, per_class=30)
    args = ["--smoke", "--set", "dataset=imagefolder", "--data-dir", str(root)]
    for field in ("stream=stream", f"image_size={SIDE}", "data_workers=1", "max_bad_fraction=0.02", "batch_size=64"):
        args += ["--set", field]
    run = run_sweep(tmp_path / "sweep", *args, address=ray_cluster)
    assert run.returncode == 0, run.output()
    _, children = parent_and_children(run)
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        assert child.data.params["stream"] == "stream" and child.data.params["dataset"] == "imagefolder"
        (dataset,) = child.inputs.dataset_inputs
        assert json.loads(dataset.dataset.profile) == {"train_images": 300, "test_images": 70}
        assert child.data.metrics["time/eval_s_per_10k"] > 0
        assert 0 <= child.data.metrics["l0_density"] <= 1
