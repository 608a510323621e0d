"""The encoder: timm backbones at small image sizes, the projector's structure and output sign,
clear errors for unknown backbones, and the checkpoint round trip through load_encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import jepa_ray
from jepa_ray.backbone_names import check_backbone_name
from jepa_ray.config import ConfigError, TrialConfig, resolve, validate
from jepa_ray.model import Projector, create_model
from jepa_ray.train.checkpoint import MODEL_FILE, save_checkpoint


def _config(
    backbone: str = "jepa_convnet_tiny",
    *,
    dataset: str = "digits",
    cifar_stem: bool = False,
    proj_dims: str = "256-256-256",
    target: str = "rgg",
    zero_init_last: bool = True,
) -> TrialConfig:
    cfg = TrialConfig()
    cfg.model.zero_init_last = zero_init_last
    cfg.data.dataset = dataset
    cfg.data.image_size = 8 if dataset == "digits" else 32
    cfg.data.channels = 1 if dataset == "digits" else 3
    cfg.model.backbone, cfg.model.cifar_stem, cfg.model.proj_dims = backbone, cifar_stem, proj_dims
    cfg.target.target = target
    return cfg


def _digits(n: int) -> torch.Tensor:
    """The first n embedded 8x8 digits as a (n, 1, 8, 8) batch scaled to [0, 1]."""
    images = load_digits().images[:n].astype(np.float32) / 16.0
    return torch.from_numpy(images).unsqueeze(1)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------------
# Backbones at 32 px and on the digits


def test_resnet18_with_cifar_stem_at_32px():
    model = create_model(_config("resnet18", dataset="cifar10", cifar_stem=True, proj_dims="512-512-512"))
    x = torch.randn(2, 3, 32, 32)
    h, z = model(x)
    assert h.shape == (2, 512) and z.shape == (2, 512)
    conv1 = model.backbone.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding, conv1.in_channels) == ((3, 3), (1, 1), (2, 2), 3)
    assert isinstance(model.backbone.maxpool, nn.Identity)
    # The reference's stem pads by 2 (34 x 34 maps), no max-pool: three stride-2 stages leave 5.
    assert model.backbone.forward_features(x).shape[-2:] == (5, 5)


def test_zero_init_last_off_keeps_residual_branches_on():
    """timm zero-initialises each residual block's last BatchNorm; torchvision (the reference)
    does not: with zero_init_last=False every block starts as a full residual branch."""
    on = create_model(_config("resnet18", dataset="cifar10", cifar_stem=True, zero_init_last=False))
    off = create_model(_config("resnet18", dataset="cifar10", cifar_stem=True))
    for block in (on.backbone.layer1[0], on.backbone.layer4[1]):
        assert torch.equal(block.bn2.weight, torch.ones_like(block.bn2.weight))
    assert not off.backbone.layer1[0].bn2.weight.any()
    with pytest.raises(ConfigError, match="'zero_init_last' = False is not supported for backbone 'vit_tiny"):
        create_model(_config("vit_tiny_patch16_224", dataset="cifar10", zero_init_last=False))


@pytest.mark.parametrize(
    "backbone, cifar_stem, tokens",
    [
        ("test_vit", False, (2, 2)),
        ("vit_tiny_patch16_224", False, (2, 2)),
        ("vit_tiny_patch16_224", True, (8, 8)),  # patches of image_size / 8 = 4 px
    ],
)
def test_vit_at_32px(backbone, cifar_stem, tokens):
    model = create_model(_config(backbone, dataset="cifar10", cifar_stem=cifar_stem, proj_dims="128-64"))
    h, z = model(torch.randn(2, 3, 32, 32))
    assert h.shape == (2, model.backbone.num_features) and z.shape == (2, 64)
    assert tuple(model.backbone.patch_embed.grid_size) == tokens


def test_default_convnet_on_the_embedded_digits():
    cfg = TrialConfig()
    assert (cfg.model.backbone, cfg.data.dataset) == ("jepa_convnet_tiny", "digits")
    model = create_model(resolve(cfg))
    h, z = model(_digits(16))
    assert h.shape == (16, 128) and model.feature_dim == 128
    assert z.shape == (16, 256)
    assert torch.isfinite(h).all() and torch.isfinite(z).all()


# --------------------------------------------------------------------------------------------
# Projector


@pytest.mark.parametrize(
    "proj_dims, widths",
    [
        ("512-512-512", [(128, 512), (512, 512), (512, 512)]),
        ("64-32", [(128, 64), (64, 32)]),
        ("48", [(128, 48)]),
    ],
)
def test_projector_follows_proj_dims(proj_dims, widths):
    projector = create_model(_config(proj_dims=proj_dims)).projector
    assert [(m.in_features, m.out_features) for m in _linears(projector)] == widths
    kinds = [type(m) for m in projector]
    # Linear-BN-ReLU per hidden width, then the final Linear, then the ReLU of the rgg target.
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * (len(widths) - 1) + [nn.Linear, nn.ReLU]
    assert [m.num_features for m in projector if isinstance(m, nn.BatchNorm1d)] == [w for _, w in widths[:-1]]
    assert projector.out_dim == widths[-1][1]


def test_rgg_target_gives_non_negative_sparse_z():
    model = create_model(_config(target="rgg"))
    _, z = model(_digits(32))
    assert (z >= 0).all()
    assert (z == 0).any()


@pytest.mark.parametrize("target", ["gaussian", "gn"])
def test_unrectified_targets_give_signed_z(target):
    model = create_model(_config(target=target))
    assert not isinstance(model.projector[-1], nn.ReLU)
    _, z = model(_digits(32))
    assert (z < 0).any() and (z > 0).any()


def test_projector_without_rectify_ends_in_linear():
    proj = Projector(10, [20, 5], rectify=False)
    assert isinstance(proj[-1], nn.Linear) and proj[-1].out_features == 5


# --------------------------------------------------------------------------------------------
# Unknown backbones


def test_unknown_backbone_lists_close_matches():
    with pytest.raises(ConfigError, match="backbone") as info:
        check_backbone_name("resnet81")
    assert "resnet18" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("entry", [create_model, validate])
def test_model_creation_and_validation_reject_unknown_backbones(entry):
    with pytest.raises(ConfigError, match="resnet18"):
        entry(_config("resnet81"))


def test_backbone_without_close_matches_still_names_the_field():
    with pytest.raises(ConfigError, match="'backbone' = 'qqqqzzzz'"):
        check_backbone_name("qqqqzzzz")


def test_backbone_names_come_from_a_cache_that_a_miss_refreshes(tmp_path, monkeypatch):
    """A name the cache lacks (a model registered since) is checked against timm, which rewrites
    the cache; an unknown name is refused with its close matches either way."""
    from jepa_ray import backbone_names

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = backbone_names.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("jepa_convnet_tiny\n")
    check_backbone_name("resnet18")
    names = path.read_text().split()
    assert {"resnet18", "jepa_convnet_tiny", "jepa_convnet_small", "vit_small_patch16_224"} <= set(names)
    with pytest.raises(ConfigError, match="close matches: .*resnet18"):
        check_backbone_name("resnet81")


def test_backbone_names_work_without_a_writable_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    check_backbone_name("jepa_convnet_tiny")
    with pytest.raises(ConfigError, match="'backbone' = 'resnet81'"):
        check_backbone_name("resnet81")


# --------------------------------------------------------------------------------------------
# Checkpoint round trip


@pytest.mark.parametrize(
    "cfg",
    [
        _config(),
        _config("resnet18", dataset="cifar10", cifar_stem=True, proj_dims="64-32"),
    ],
    ids=["convnet-digits", "resnet18-cifar"],
)
def test_load_encoder_round_trip(tmp_path, cfg):
    model = create_model(cfg)
    x = _digits(8) if cfg.data.dataset == "digits" else torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        model.train()(x)  # move the BatchNorm running statistics away from their init
    model.eval()
    path = save_checkpoint(tmp_path / "ckpt", model=model, cfg=cfg, metrics={"linear_acc": 0.5})

    state = torch.load(path / MODEL_FILE, weights_only=True)
    assert set(state["model"]) == set(model.state_dict())

    loaded = jepa_ray.load_encoder(path)
    assert not loaded.training
    with torch.no_grad():
        h0, z0 = model(x)
        h1, z1 = loaded(x)
    torch.testing.assert_close(h1, h0, rtol=0, atol=0)
    torch.testing.assert_close(z1, z0, rtol=0, atol=0)


def test_load_encoder_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pt"):
        jepa_ray.load_encoder(tmp_path)
