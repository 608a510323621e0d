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
    # fp32: the loaded encoder runs in fp32, a bf16 trial evaluates under autocast (other features).
    cfg = config_lib.resolve(config_lib.apply_overrides(config_lib.preset("smoke"), {"epochs": 2, "precision": "fp32"}))
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


def readme_encoder_snippet() -> str:
    """README's `load_encoder` example: the python block of the how-to that loads an encoder."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "load_encoder" in b]
    assert len(blocks) == 1, "README should hold one load_encoder example"
    return blocks[0]


@pytest.mark.slow
def test_the_readme_encoder_example_runs_as_written_on_the_quickstarts_export(smoke_sweep, tmp_path):
    """The quickstart's sweep (smoke-sized, on digits), the README's export command, then the
    README's snippet, unchanged, from the same folder: it loads a digits encoder and gets sparse z."""
    import subprocess
    import sys

    from test_sweep import EXPERIMENT

    run = smoke_sweep
    export = subprocess.run(
        [sys.executable, "-m", "jepa_ray.pareto", "--experiment", EXPERIMENT, "--tracking-uri", run.tracking_uri]
        + ["--out", "pareto/"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert export.returncode == 0, export.stderr[-2000:]
    snippet = subprocess.run(
        [sys.executable, "-c", readme_encoder_snippet()], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert snippet.returncode == 0, snippet.stderr[-3000:]
    assert "takes (B, 1, H, W) uint8 0..255 or float 0..1" in snippet.stdout
    assert "torch.Size([16, " in snippet.stdout and "of z is exactly zero" in snippet.stdout


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.rand(2, 1, 8, 8) * 16, r"float values must lie in \[0, 1\]"),  # raw sklearn digits
        (torch.randint(0, 300, (2, 1, 8, 8)), "integer values must lie in 0..255"),
        (torch.randn(2, 1, 8, 8), r"float values must lie in \[0, 1\]"),  # already normalized
        (torch.rand(2, 3, 8, 8), r"expected \(B, 1, H, W\)"),
    ],
)
def test_images_outside_the_pixel_range_are_one_line_errors(trained, images, message):
    _, _, checkpoint = trained
    encoder = jepa_ray.load_encoder(checkpoint)
    with pytest.raises(ValueError, match=message):
        encoder(images)
    assert "takes (B, 1, H, W) uint8 0..255 or float 0..1" in repr(encoder)
