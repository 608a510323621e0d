"""Dataset loaders (digits, parquet, imagefolder, cifar errors), subsets and index streams."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from jepa_ray.config import ConfigError, DataConfig
from jepa_ray.data import (
    BatchIterator,
    ImageSplits,
    channel_stats,
    dataset_names,
    eval_batches,
    load_dataset,
    read_parquet_split,
    register_dataset,
    stratified_indices,
)
from jepa_ray.errors import UsageError

CIFAR10_PARQUET = Path(
    os.environ.get("JEPA_RAY_CIFAR10_PARQUET", Path(__file__).resolve().parents[2] / "shared/data/cifar10")
)


def _class_counts(y: torch.Tensor, num_classes: int) -> np.ndarray:
    return np.bincount(y.numpy(), minlength=num_classes)


def _assert_proportional(part: torch.Tensor, whole: torch.Tensor, num_classes: int) -> None:
    """Each class of `part` is within one sample of its exact share of `whole`."""
    expected = _class_counts(whole, num_classes) * len(part) / len(whole)
    assert np.all(np.abs(_class_counts(part, num_classes) - expected) <= 1.0)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _random_images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_values_and_stats():
    s = load_dataset(DataConfig(dataset="digits"))
    assert s.train_x.shape == (1437, 1, 8, 8) and s.test_x.shape == (360, 1, 8, 8)
    assert s.train_x.dtype == torch.uint8 and s.train_y.dtype == torch.int64
    assert s.num_classes == 10 and s.classes == [str(i) for i in range(10)] and s.name == "digits"
    all_x = torch.cat([s.train_x, s.test_x])
    assert int(all_x.min()) == 0 and int(all_x.max()) == 255
    from sklearn.datasets import load_digits

    raw = load_digits()
    # Same multiset of (image, label) as scikit-learn's 0..16 data scaled by 255/16.
    ref = sorted((tuple(np.rint(im * 255 / 16).astype(int).ravel()), int(t)) for im, t in zip(raw.images, raw.target))
    ours = sorted(
        (tuple(im.ravel().tolist()), int(t)) for im, t in zip(all_x.numpy(), torch.cat([s.train_y, s.test_y]).numpy())
    )
    assert ours == ref
    pixels = s.train_x.double().numpy() / 255.0
    assert s.mean == pytest.approx([pixels.mean()], abs=1e-9)
    assert s.std == pytest.approx([pixels.std()], abs=1e-9)


def test_digits_split_fixed_and_stratified():
    a = load_dataset(DataConfig(dataset="digits"))
    b = load_dataset(DataConfig(dataset="digits"))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    _assert_proportional(a.test_y, torch.cat([a.train_y, a.test_y]), 10)


def test_max_train_samples_subset_is_stratified_fixed_and_drawn_from_train():
    full = load_dataset(DataConfig(dataset="digits"))
    a = load_dataset(DataConfig(dataset="digits", max_train_samples=500))
    b = load_dataset(DataConfig(dataset="digits", max_train_samples=500))
    assert len(a.train_y) == 500 and torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert torch.equal(a.test_x, full.test_x)
    _assert_proportional(a.train_y, full.train_y, 10)
    rows = {(tuple(x.ravel().tolist()), int(y)) for x, y in zip(full.train_x, full.train_y)}
    assert all((tuple(x.ravel().tolist()), int(y)) in rows for x, y in zip(a.train_x, a.train_y))
    assert a.mean != full.mean  # recomputed on the subset
    assert a.mean == pytest.approx(channel_stats(a.train_x)[0])


def test_stratified_indices_counts_against_exact_shares():
    labels = torch.tensor([0] * 7 + [1] * 13 + [2] * 1 + [3] * 29)
    for count in (0, 1, 5, 17, 33, 50):
        idx = stratified_indices(labels, count, seed=3)
        assert len(idx) == count and len(set(idx.tolist())) == count
        assert torch.all(idx[1:] > idx[:-1])
        expected = np.bincount(labels.numpy()) * count / len(labels)
        assert np.all(np.abs(np.bincount(labels[idx].numpy(), minlength=4) - expected) < 1.0)
    with pytest.raises(ValueError, match="count"):
        stratified_indices(labels, 51)


def test_unknown_dataset_names_field_and_allowed():
    with pytest.raises(ConfigError, match=r"'dataset'.*allowed:.*digits.*parquet"):
        load_dataset(DataConfig(dataset="mnist"))


def test_register_dataset_dispatch():
    def tiny(cfg: DataConfig) -> ImageSplits:
        x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
        return ImageSplits(x, torch.tensor([0, 1]), x, torch.tensor([1, 0]), 2, ["a", "b"], "tiny")

    register_dataset("tiny_test_set", native_size=4, needs_dir=False)(tiny)
    try:
        assert "tiny_test_set" in dataset_names()
        s = load_dataset(DataConfig(dataset="tiny_test_set"))
        assert s.name == "tiny" and s.num_channels == 3 and s.image_size == 4
        # One registration is all a new dataset needs: the config accepts it and resolves its size.
        from jepa_ray import config as config_lib

        cfg = config_lib.resolve(config_lib.apply_overrides(config_lib.TrialConfig(), {"dataset": "tiny_test_set"}))
        assert (cfg.data.image_size, cfg.views.recipe) == (4, "imagenet")
    finally:
        from jepa_ray.data import registry

        registry._REGISTRY.pop("tiny_test_set")


def test_image_splits_rejects_bad_labels():
    x = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="train_y"):
        ImageSplits(x, torch.tensor([0, 5]), x, torch.tensor([0, 1]), 2, ["a", "b"], "bad")
    with pytest.raises(ValueError, match="train_x"):
        ImageSplits(x.float(), torch.tensor([0, 1]), x, torch.tensor([0, 1]), 2, ["a", "b"], "bad")


# --------------------------------------------------------------------------------------------
# cifar (never downloads)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_missing_files_without_download_is_a_config_error(tmp_path, name):
    with pytest.raises(ConfigError, match=r"download=true") as err:
        load_dataset(DataConfig(dataset=name, data_dir=str(tmp_path), download=False))
    assert str(tmp_path) in str(err.value)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# parquet


def _write_table(
    path: Path, images: np.ndarray, labels: np.ndarray, metadata: dict | None, struct: bool = False
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = [_png(im) for im in images]
    if struct:
        image_col = pa.array(
            [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(blobs)],
            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    else:
        image_col = pa.array(blobs, type=pa.binary())
    table = pa.table({"image": image_col, "label": pa.array(labels, type=pa.int16())})
    if metadata:
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, path, row_group_size=7)  # several row groups -> chunked columns


@pytest.mark.parametrize("struct", [False, True])
def test_parquet_loader_decodes_exact_pixels_labels_and_classes(tmp_path, struct):
    train, test = _random_images(30, 12, 0), _random_images(10, 12, 1)
    ytr, yte = np.arange(30) % 3, np.arange(10) % 3
    meta = {"classes": json.dumps(["cat", "dog", "eel"])}
    _write_table(tmp_path / "train.parquet", train, ytr, meta, struct)
    _write_table(tmp_path / "test.parquet", test, yte, meta, struct)
    s = load_dataset(DataConfig(dataset="parquet", data_dir=str(tmp_path)))
    assert s.classes == ["cat", "dog", "eel"] and s.num_classes == 3
    assert torch.equal(s.train_x, torch.from_numpy(train).permute(0, 3, 1, 2))
    assert torch.equal(s.test_x, torch.from_numpy(test).permute(0, 3, 1, 2))
    assert s.train_y.tolist() == ytr.tolist() and s.test_y.dtype == torch.int64
    sub = load_dataset(DataConfig(dataset="parquet", data_dir=str(tmp_path), max_train_samples=12))
    assert len(sub.train_y) == 12 and _class_counts(sub.train_y, 3).tolist() == [4, 4, 4]


def test_parquet_class_metadata_forms_and_resize(tmp_path):
    _write_table(
        tmp_path / "train.parquet", _random_images(6, 10, 0), np.array([0, 1, 2, 3, 0, 1]), {"classes": "a, b,c,d"}
    )
    _write_table(tmp_path / "test.parquet", _random_images(4, 10, 1), np.array([3, 2, 1, 0]), None)
    s = load_dataset(DataConfig(dataset="parquet", data_dir=str(tmp_path), image_size=6))
    assert s.classes == ["a", "b", "c", "d"] and s.train_x.shape == (6, 3, 6, 6) and s.test_x.shape == (4, 3, 6, 6)
    _write_table(tmp_path / "train.parquet", _random_images(6, 10, 0), np.array([0, 1, 2, 4, 0, 1]), None)
    s = load_dataset(DataConfig(dataset="parquet", data_dir=str(tmp_path)))
    assert s.classes == ["0", "1", "2", "3", "4"] and s.image_size == 10
    _write_table(tmp_path / "test.parquet", _random_images(1, 10, 1), np.array([5]), {"classes": "a,b,c,d,e"})
    _write_table(tmp_path / "train.parquet", _random_images(1, 10, 1), np.array([0]), {"classes": "a,b,c,d,e"})
    with pytest.raises(UsageError, match=r"test\.parquet: column 'label' must lie in \[0, 5\)"):
        load_dataset(DataConfig(dataset="parquet", data_dir=str(tmp_path)))


def test_parquet_missing_files_names_data_dir(tmp_path):
    _write_table(tmp_path / "train.parquet", _random_images(2, 4, 0), np.array([0, 1]), None)
    with pytest.raises(ConfigError, match=r"data_dir.*test\.parquet"):
        load_dataset(DataConfig(dataset="parquet", data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"data_dir.*not an existing directory"):
        load_dataset(DataConfig(dataset="parquet", data_dir=str(tmp_path / "nope")))


def test_parquet_bad_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"img": [b"x"], "label": [0]}), tmp_path / "t.parquet")
    with pytest.raises(UsageError, match="missing column 'image'"):
        read_parquet_split(tmp_path / "t.parquet")


def test_decode_blobs_thread_pool_keeps_order(monkeypatch):
    """Large sets are decoded by a thread pool: the order must not change."""
    from jepa_ray.data import decode_blobs

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    images = np.random.default_rng(0).integers(0, 256, size=(300, 8, 8, 3), dtype=np.uint8)
    blobs = [torch.frombuffer(bytearray(_png(im)), dtype=torch.uint8) for im in images]
    assert torch.equal(decode_blobs(blobs), torch.from_numpy(images).permute(0, 3, 1, 2))
    blobs[241] = torch.zeros(5, dtype=torch.uint8)
    with pytest.raises(ValueError, match="image 241: cannot decode"):
        decode_blobs(blobs)


@pytest.mark.slow
@pytest.mark.skipif(not (CIFAR10_PARQUET / "test.parquet").is_file(), reason="shared CIFAR-10 parquet absent")
def test_shared_cifar10_parquet_test_split():
    x, y, classes = read_parquet_split(CIFAR10_PARQUET / "test.parquet")
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.uint8
    assert classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert np.bincount(y.numpy()).tolist() == [1000] * 10
    mean, _ = channel_stats(x)
    assert all(0.4 < m < 0.55 for m in mean)  # natural images, not decoding garbage


# --------------------------------------------------------------------------------------------
# imagefolder


def _write_folder(root: Path, per_class: dict[str, np.ndarray]) -> None:
    for cls, images in per_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            (root / cls / f"{i:03d}.png").write_bytes(_png(im))


def test_imagefolder_with_train_and_val_dirs(tmp_path):
    train = {"ant": _random_images(4, 8, 0), "bee": _random_images(3, 8, 1)}
    _write_folder(tmp_path / "train", train)
    _write_folder(tmp_path / "val", {"bee": _random_images(2, 8, 2)})  # a class absent from val is fine
    s = load_dataset(DataConfig(dataset="imagefolder", data_dir=str(tmp_path)))
    assert s.classes == ["ant", "bee"] and s.train_y.tolist() == [0] * 4 + [1] * 3 and s.test_y.tolist() == [1, 1]
    expected = torch.from_numpy(np.concatenate([train["ant"], train["bee"]])).permute(0, 3, 1, 2)
    assert torch.equal(s.train_x, expected)
    resized = load_dataset(DataConfig(dataset="imagefolder", data_dir=str(tmp_path), image_size=5))
    assert resized.train_x.shape == (7, 3, 5, 5) and resized.test_x.shape == (2, 3, 5, 5)


def test_imagefolder_without_splits_is_a_fixed_stratified_80_20_split(tmp_path):
    rng = np.random.default_rng(0)
    # Mixed sizes and a grayscale image: everything becomes RGB of the first image's shorter side.
    per_class = {
        "a": list(_random_images(10, 9, 0)),
        "b": list(_random_images(5, 9, 1)),
        "c": list(_random_images(5, 9, 2)),
    }
    per_class["b"][0] = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    per_class["c"][1] = rng.integers(0, 256, size=(9, 9), dtype=np.uint8)
    _write_folder(tmp_path, per_class)
    a = load_dataset(DataConfig(dataset="imagefolder", data_dir=str(tmp_path)))
    b = load_dataset(DataConfig(dataset="imagefolder", data_dir=str(tmp_path)))
    assert a.train_x.shape == (16, 3, 9, 9) and a.test_x.shape == (4, 3, 9, 9)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_y, b.train_y)
    assert _class_counts(a.test_y, 3).tolist() == [2, 1, 1]


def test_imagefolder_reads_formats_torchvision_cannot_and_names_undecodable_files(tmp_path):
    from PIL import Image

    images = _random_images(3, 6, 0)
    (tmp_path / "a").mkdir()
    for i, fmt in enumerate(("BMP", "TIFF", "PPM")):
        Image.fromarray(images[i]).save(tmp_path / "a" / f"{i}.{fmt.lower()}", format=fmt)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "0.png").write_bytes(_png(images[0]))
    (tmp_path / "b" / "1.png").write_bytes(_png(images[1]))
    s = load_dataset(DataConfig(dataset="imagefolder", data_dir=str(tmp_path)))
    everything = torch.cat([s.train_x, s.test_x])
    for im in images:
        assert any(torch.equal(x, torch.from_numpy(im).permute(2, 0, 1)) for x in everything)
    (tmp_path / "b" / "2.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"2\.png: cannot decode"):
        load_dataset(DataConfig(dataset="imagefolder", data_dir=str(tmp_path)))


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ConfigError, match="no class folders"):
        load_dataset(DataConfig(dataset="imagefolder", data_dir=str(tmp_path)))
    _write_folder(tmp_path / "train", {"a": _random_images(1, 4, 0)})
    _write_folder(tmp_path / "test", {"z": _random_images(1, 4, 0)})
    with pytest.raises(ConfigError, match="classes not in train/: z"):
        load_dataset(DataConfig(dataset="imagefolder", data_dir=str(tmp_path)))


# --------------------------------------------------------------------------------------------
# index streams


def test_batch_iterator_shards_union_equals_global_batch():
    n, batch, world = 103, 16, 2
    single = BatchIterator(n, batch, seed=7)
    ranks = [BatchIterator(n, batch, rank=r, world_size=world, seed=7) for r in range(world)]
    assert len(single) == n // batch == 6 and all(len(it) == 6 for it in ranks)
    for epoch in (0, 3):
        single.set_epoch(epoch)
        for it in ranks:
            it.set_epoch(epoch)
        steps = list(zip(single, *ranks))
        assert len(steps) == 6
        for step, (whole, *shards) in enumerate(steps):
            assert all(len(s) == batch // world and s.dtype == torch.int64 for s in shards)
            assert torch.equal(torch.cat(shards), whole)
            assert torch.equal(whole, ranks[1].global_batch_indices(epoch, step))
        seen = torch.cat([w for w, *_ in steps])
        assert len(set(seen.tolist())) == 6 * batch and int(seen.max()) < n


def test_batch_iterator_epochs():
    it = BatchIterator(50, 10, seed=1)
    first = torch.cat(list(it))
    again = torch.cat(list(BatchIterator(50, 10, seed=1)))
    it.set_epoch(1)
    second = torch.cat(list(it))
    other_seed = torch.cat(list(BatchIterator(50, 10, seed=2)))
    assert torch.equal(first, again)
    assert not torch.equal(first, second) and not torch.equal(first, other_seed)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(50))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(n=10, global_batch_size=5, world_size=2), "global_batch_size"),
        (dict(n=4, global_batch_size=8), "global_batch_size"),
        (dict(n=10, global_batch_size=4, rank=2, world_size=2), "rank"),
    ],
)
def test_batch_iterator_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        BatchIterator(**kwargs)


def test_eval_batches_cover_range_in_order():
    slices = list(eval_batches(10, 4))
    assert [(s.start, s.stop) for s in slices] == [(0, 4), (4, 8), (8, 10)]
    assert list(eval_batches(0, 4)) == []
