"""A trained checkpoint carries its preprocessing: `jepa_ray.load_encoder(path)` takes raw images
(uint8, or floats in [0, 1]) and gives the features the trainer's own evaluation computed for the
same images; checkpoints written before preprocessing.json existed still load, with a warning."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

import jepa_ray
from jepa_ray import config as config_lib
from jepa_ray import metrics
from jepa_ray.data import load_dataset
from jepa_ray.eval import probe
from jepa_ray.model import Preprocess
from jepa_ray.train import LocalReporter, fit
from jepa_ray.train import checkpoint as ckpt_lib


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    cfg = config_lib.resolve(config_lib.apply_overrides(config_lib.preset("smoke"), {"epochs": 2}))
    final = fit(cfg, LocalReporter(out))
    return cfg, final, out / "checkpoint"


def test_checkpoint_records_the_training_splits_statistics(trained):
    cfg, _, checkpoint = trained
    spec = json.loads((checkpoint / ckpt_lib.PREPROCESSING_FILE).read_text())
    splits = load_dataset(cfg.data)
    assert spec["mean"] == pytest.approx(list(splits.mean)) and spec["std"] == pytest.approx(list(splits.std))
    assert (spec["image_size"], spec["channels"]) == (8, 1)


def test_loaded_encoder_fed_raw_uint8_images_gives_the_evaluations_features(trained):
    cfg, final, checkpoint = trained
    splits = load_dataset(cfg.data)
    encoder = jepa_ray.load_encoder(checkpoint)
    with torch.no_grad():
        train_h, _ = encoder(splits.train_x)  # uint8, as stored
        test_h, test_z = encoder(splits.test_x)
    # The trainer's evaluation of the same images recorded these (exact zeros: bit-identical z).
    assert metrics.l0_density(test_z) == final["l0_density"]
    assert metrics.l0_density(test_h) == final["l0_density_backbone"]
    assert metrics.rank_me(test_z) == pytest.approx(final["rank_me"], rel=1e-6)
    knn = probe.knn_accuracy(
        train_h,
        splits.train_y,
        test_h,
        splits.test_y,
        k=cfg.eval.knn_k,
        temperature=cfg.eval.knn_temperature,
        num_classes=splits.num_classes,
    )
    assert knn == final["knn_acc"]
    with torch.no_grad():
        as_float = encoder(splits.test_x.float() / 255.0)
    torch.testing.assert_close(as_float[1], test_z, rtol=1e-6, atol=1e-6)


def test_preprocess_resizes_the_shorter_side_and_center_crops():
    pre = Preprocess([0.5], [0.25], image_size=8)
    x = torch.zeros(2, 1, 16, 24, dtype=torch.uint8)
    x[..., :, 2:22] = 255  # white but for 2-pixel bands at the sides, which the crop drops
    out = pre(x)
    assert out.shape == (2, 1, 8, 8)
    torch.testing.assert_close(out, torch.full_like(out, (1.0 - 0.5) / 0.25))
    with pytest.raises(ValueError, match=r"expected \(B, 1, H, W\)"):
        pre(torch.zeros(2, 3, 8, 8))
    assert not pre.state_dict()  # the statistics live in preprocessing.json, not in model.pt


def test_older_checkpoints_load_with_a_warning_naming_what_is_missing(trained, tmp_path):
    cfg, _, checkpoint = trained
    old = tmp_path / "old"
    shutil.copytree(checkpoint, old)
    (old / ckpt_lib.PREPROCESSING_FILE).unlink()
    with pytest.warns(UserWarning, match=r"no preprocessing.json .*mean, std, image_size and channels"):
        encoder = jepa_ray.load_encoder(old)
    splits = load_dataset(cfg.data)
    normalized = Preprocess(splits.mean, splits.std, 8)(splits.test_x[:16])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        current = jepa_ray.load_encoder(checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(encoder(normalized)[1], current(splits.test_x[:16])[1], rtol=0, atol=0)
