"""The trial configuration: flat keys, `--set` parsing, presets, resolution and validation."""

from __future__ import annotations

import dataclasses
import math

import pytest
from scipy import integrate, special, stats

from jepa_ray import config as C
from jepa_ray.config import ConfigError, TrialConfig


def with_overrides(**overrides) -> TrialConfig:
    return C.apply_overrides(TrialConfig(), overrides)


# --------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("name", list(C.PRESETS))
def test_flatten_apply_and_dict_round_trip(name, tmp_path):
    cfg = C.preset(name)
    flat = C.flatten(cfg)
    assert flat.keys() == C.LEAVES.keys()
    assert C.apply_overrides(TrialConfig(), flat) == cfg
    as_dict = C.to_dict(cfg)
    assert as_dict["loss_convention"] == C.LOSS_CONVENTION
    assert C.from_dict(as_dict) == cfg
    C.save_json(cfg, tmp_path / "config.json")
    assert C.load_json(tmp_path / "config.json") == cfg
    # Flat values as strings (what --set and MLflow params carry) parse back to the same config.
    assert C.apply_overrides(TrialConfig(), {k: str(v) for k, v in flat.items()}) == cfg


def test_every_leaf_name_is_unique_and_documented():
    names = [f.name for s in C.SECTIONS for f in dataclasses.fields(getattr(TrialConfig(), s))]
    assert len(names) == len(set(names)) == len(C.LEAVES)
    assert all(C.field_doc(key) for key in C.LEAVES)
    assert "(1 - lambd) * invariance" in C.field_doc("lambd")


def test_from_dict_rejects_unknown_keys_and_defaults_missing_ones():
    d = C.to_dict(TrialConfig())
    del d["loss"]["lambd"]
    assert C.from_dict(d).loss.lambd == TrialConfig().loss.lambd
    d["loss"]["lamda"] = 0.5
    with pytest.raises(ConfigError, match="'lamda'.*did you mean lambd"):
        C.from_dict(d)


# --------------------------------------------------------------------------------------------
# --set parsing


def parsed(*items: str) -> TrialConfig:
    return C.apply_overrides(TrialConfig(), C.parse_set_args(list(items)))


def test_set_parses_ints_floats_strings():
    cfg = parsed("epochs=5", "batch_size=64.0", "mu=-1", "lr=1e-3", "p=2", "proj_dims=64-32", "backbone=resnet18")
    assert cfg.optim.epochs == 5 and type(cfg.optim.epochs) is int
    assert cfg.optim.batch_size == 64 and type(cfg.optim.batch_size) is int
    assert cfg.target.mu == -1.0 and type(cfg.target.mu) is float
    assert cfg.optim.lr == 0.001
    assert cfg.target.p == 2.0 and type(cfg.target.p) is float
    assert cfg.model.proj_dims == "64-32" and cfg.model.backbone == "resnet18"


@pytest.mark.parametrize(
    "raw, value",
    [
        ("true", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("FALSE", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_set_parses_bools(raw, value):
    assert parsed(f"download={raw}").data.download is value


@pytest.mark.parametrize("raw", ["None", "none", "null", ""])
def test_set_parses_none_for_optional_fields(raw):
    cfg = parsed("data_dir=/somewhere", f"data_dir={raw}")
    assert cfg.data.data_dir is None
    assert parsed("data_dir=/somewhere").data.data_dir == "/somewhere"


def test_python_values_are_accepted_as_they_are():
    cfg = C.apply_overrides(TrialConfig(), {"proj_dims": [512, 512, 128], "mu": -2, "download": True})
    assert cfg.model.proj_dims == "512-512-128"
    assert cfg.target.mu == -2.0 and type(cfg.target.mu) is float
    assert cfg.data.download is True


@pytest.mark.parametrize(
    "item, key", [("epochs=5.5", "epochs"), ("epochs=many", "epochs"), ("download=maybe", "download"), ("mu=abc", "mu")]
)
def test_set_rejects_unreadable_values_naming_the_field(item, key):
    with pytest.raises(ConfigError, match=f"config field '{key}': cannot read"):
        parsed(item)


@pytest.mark.parametrize(
    "overrides, key", [({"epochs": True}, "epochs"), ({"lr": False}, "lr"), ({"download": 2}, "download")]
)
def test_python_values_of_the_wrong_kind_are_rejected(overrides, key):
    """A JSON/Python boolean is not a number (True would train 1 epoch), nor 2 a boolean."""
    with pytest.raises(ConfigError, match=f"config field '{key}'"):
        C.apply_overrides(TrialConfig(), overrides)
    assert C.apply_overrides(TrialConfig(), {"download": 1}).data.download is True


def test_parse_set_args_splits_once_and_strips():
    assert C.parse_set_args([" mu = -1 ", "probe_lrs=a=b"]) == {"mu": "-1", "probe_lrs": "a=b"}
    with pytest.raises(ConfigError, match="expected key=value"):
        C.parse_set_args(["mu"])


@pytest.mark.parametrize("key, suggestion", [("lamdb", "lambd"), ("num_slice", "num_slices"), ("backbon", "backbone")])
def test_unknown_key_suggests_close_matches(key, suggestion):
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}' \(did you mean [^)]*\b{suggestion}\b"):
        with_overrides(**{key: 1})


def test_unknown_key_without_close_match_points_to_list_keys():
    with pytest.raises(ConfigError) as err:
        with_overrides(zzzzzz=1)
    assert "did you mean" not in str(err.value) and "--list-keys" in str(err.value)


# --------------------------------------------------------------------------------------------
# Presets and resolution


def resolvable_preset(name: str, data_dir) -> TrialConfig:
    """The preset, pointed at an existing directory when its dataset needs one (imagefolder)."""
    cfg = C.preset(name)
    if cfg.data.dataset in ("imagefolder", "parquet") and not cfg.data.data_dir:
        cfg.data.data_dir = str(data_dir)
    return cfg


@pytest.mark.parametrize("name", list(C.PRESETS))
def test_presets_resolve_validate_and_resolution_is_idempotent(name, tmp_path):
    resolved = C.resolve(resolvable_preset(name, tmp_path))
    C.validate(resolved)
    assert resolved.target.sigma > 0
    assert resolved.views.recipe != "auto"
    assert C.resolve(resolved) == resolved
    assert C.preset(name) is not C.preset(name)  # a fresh copy each time


def test_unknown_preset_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="unknown preset 'cifar'.*cifar100-resnet18"):
        C.preset("cifar")


def test_cifar100_resnet18_preset_has_the_reference_hyperparameters():
    c = C.resolve(C.preset("cifar100-resnet18"))
    assert c.data.dataset == "cifar100"
    assert c.model.backbone == "resnet18" and c.model.cifar_stem
    assert c.model.proj_dims == "512-512-512"
    assert c.target.target == "rgg"
    # 25 MSE(z1, z2) + 250 mean_v RDMReg = 350 * (2/7 * MSE / 4 + 5/7 * RDMReg)
    assert (c.loss.lambd, c.loss.loss_scale) == (pytest.approx(5 / 7), 350.0) and c.loss.regularizer == "rdmreg"
    assert c.loss.loss_scale * (1 - c.loss.lambd) / 4 == pytest.approx(25)
    assert c.loss.loss_scale * c.loss.lambd == pytest.approx(250)
    assert c.loss.num_slices == 8192
    assert (c.optim.optimizer, c.optim.lr, c.optim.weight_decay) == ("lars", 0.03, 1e-4)
    assert (c.optim.momentum, c.optim.lars_eta, c.optim.warmup_start_lr) == (0.9, 0.02, 3e-5)
    assert (c.optim.batch_size, c.optim.epochs, c.optim.warmup_epochs) == (256, 1000, 10)
    assert not c.model.zero_init_last and c.model.sync_bn and not c.model.joint_view_forward
    assert c.eval.online_probe_lr == 0.01 and c.system.checkpoint_every == 1
    assert c.views.num_views == 2 and c.views.recipe == "cifar" and c.views.crop_scale_min == 0.2
    assert c.data.image_size == 32


def test_imagenet100_resnet50_preset_has_the_reference_hyperparameters(tmp_path):
    """scripts/pretrain/imagenet-100/rectified_lpjepa_imagenet.yaml of YilunKuang/rectified-lp-jepa."""
    c = C.resolve(resolvable_preset("imagenet100-resnet50", tmp_path))
    assert (c.data.dataset, c.data.image_size, c.data.data_workers) == ("imagefolder", 224, 8)
    assert c.model.backbone == "resnet50" and not c.model.cifar_stem and not c.model.zero_init_last
    assert c.model.proj_dims == "2048-2048-2048" and c.model.sync_bn  # proj_hidden/output_dim 2048
    assert (c.target.target, c.target.p, c.target.mu) == ("rgg", 1.0, 0.0)  # rectified, p 1, mean shift 0
    assert c.target.sigma == pytest.approx(2**-0.5)  # mode_of_sigma sigma_GN at p = 1
    # invariance_loss_weight 25 (on MSE(z1, z2) = 4 * invariance), rdm_reg_loss_weight 125
    assert (c.loss.lambd, c.loss.loss_scale) == (pytest.approx(5 / 9), 225.0) and c.loss.regularizer == "rdmreg"
    assert c.loss.loss_scale * (1 - c.loss.lambd) / 4 == pytest.approx(25)
    assert c.loss.loss_scale * c.loss.lambd == pytest.approx(125)
    assert c.loss.num_slices == 8192
    assert (c.optim.optimizer, c.optim.lr, c.optim.weight_decay) == ("lars", 0.165, 1e-4)
    assert (c.optim.momentum, c.optim.lars_eta, c.optim.warmup_start_lr) == (0.9, 0.02, 3e-5)
    # batch 128 per device (one worker here); max_epochs 1000; solo-learn's default warmup 10
    assert (c.optim.batch_size, c.system.workers, c.optim.epochs, c.optim.warmup_epochs) == (128, 1, 1000, 10)
    assert c.eval.online_probe_lr == 0.055 and c.system.checkpoint_every == 1
    assert (c.views.num_views, c.views.recipe, c.views.crop_scale_min) == (2, "imagenet", 0.2)
    from jepa_ray.data import recipe_defaults

    recipe = recipe_defaults(c.views.recipe, c.views.crop_scale_min)
    assert (recipe.p_blur, recipe.p_solarize, recipe.p_grayscale, recipe.p_color_jitter) == (0.5, 0.1, 0.2, 0.8)
    assert (recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue, recipe.p_flip) == (
        0.4,
        0.4,
        0.2,
        0.1,
        0.5,
    )


def test_lejepa_imagenet100_is_the_imagenet_recipe_with_lejepas_dense_target(tmp_path):
    rect = C.resolve(resolvable_preset("imagenet100-resnet50", tmp_path))
    le = C.resolve(resolvable_preset("lejepa-imagenet100", tmp_path))
    assert (le.target.target, le.loss.regularizer, le.loss.lambd, le.loss.loss_scale) == (
        "gaussian",
        "sigreg",
        0.05,
        1.0,
    )
    assert (le.loss.num_slices, le.optim.optimizer) == (1024, "adamw")
    assert (le.data, le.views, le.system) == (rect.data, rect.views, rect.system)
    assert (le.model.backbone, le.model.proj_dims) == ("resnet50", "2048-2048-2048")
    assert (le.optim.batch_size, le.optim.epochs, le.optim.warmup_epochs) == (128, 1000, 10)


def sigma_gn_reference(p: float) -> float:
    """docs/design.md: sigma_GN(p) = Gamma(1/p)^1/2 / (p^(1/p) Gamma(3/p)^1/2)."""
    return math.sqrt(special.gamma(1 / p)) / (p ** (1 / p) * math.sqrt(special.gamma(3 / p)))


@pytest.mark.parametrize("p", [0.5, 1.0, 2.0, 3.0])
def test_resolve_sets_sigma_gn(p):
    assert C.resolve(with_overrides(p=p, mu=-1.0)).target.sigma == pytest.approx(sigma_gn_reference(p), rel=1e-12)
    assert C.resolve(with_overrides(p=p, sigma=0.3)).target.sigma == 0.3  # an explicit sigma stays


def test_resolve_unit_var_sigma_gives_rectified_unit_variance():
    p, mu = 1.0, -0.5
    sigma = C.resolve(with_overrides(p=p, mu=mu, sigma_mode="unit_var")).target.sigma
    gn = stats.gennorm(beta=p, loc=mu, scale=sigma * p ** (1 / p))
    m1 = integrate.quad(lambda x: x * gn.pdf(x), 0, math.inf)[0]
    m2 = integrate.quad(lambda x: x * x * gn.pdf(x), 0, math.inf)[0]
    assert m2 - m1**2 == pytest.approx(1.0, rel=1e-6)


def test_resolve_gaussian_target_fixes_p_mu_sigma():
    c = C.resolve(with_overrides(target="gaussian", regularizer="sigreg", p=0.5, mu=-2.0))
    assert (c.target.p, c.target.mu, c.target.sigma) == (2.0, 0.0, 1.0)


def test_resolve_fills_recipe_and_image_size_by_dataset(tmp_path):
    digits = C.resolve(TrialConfig())
    assert (digits.views.recipe, digits.data.image_size) == ("digits", 8)
    cifar = C.resolve(with_overrides(dataset="cifar10"))
    assert (cifar.views.recipe, cifar.data.image_size) == ("cifar", 32)
    folder = C.resolve(with_overrides(dataset="imagefolder", data_dir=str(tmp_path)))
    assert (folder.views.recipe, folder.data.image_size) == ("imagenet", 0)
    assert C.resolve(with_overrides(image_size=16)).data.image_size == 16


def test_resolve_does_not_modify_its_argument():
    cfg = TrialConfig()
    C.resolve(cfg)
    assert cfg == TrialConfig()


# --------------------------------------------------------------------------------------------
# Validation


BAD = [
    ({"p": 0.0}, "p"),
    ({"p": -1.0}, "p"),
    ({"p": math.nan}, "p"),
    ({"lambd": 0.0}, "lambd"),
    ({"lambd": 1.0}, "lambd"),
    ({"lambd": 1.5}, "lambd"),
    ({"lambd": -0.1}, "lambd"),
    ({"sigma": -1.0}, "sigma"),
    ({"dataset": "mnist"}, "dataset"),
    ({"backbone": "not_a_model"}, "backbone"),
    ({"data_dir": "/nonexistent/jepa_ray_data"}, "data_dir"),
    ({"dataset": "parquet", "data_dir": "/nonexistent/jepa_ray_data"}, "data_dir"),
    ({"dataset": "imagefolder"}, "data_dir"),
    ({"workers": 3}, "batch_size"),  # 256 images over 3 workers
    ({"batch_size": 4, "workers": 4}, "batch_size"),  # 1 image per worker
    ({"target": "laplace"}, "target"),
    ({"regularizer": "sigreg"}, "regularizer"),  # with the default rgg target
    ({"optimizer": "sgd"}, "optimizer"),
    ({"proj_dims": "64-x"}, "proj_dims"),
    ({"proj_dims": "64-0"}, "proj_dims"),
    ({"num_slices": 0}, "num_slices"),
    ({"knots": 16}, "knots"),
    ({"lr": 0.0}, "lr"),
    ({"epochs": 0}, "epochs"),
    ({"warmup_epochs": -1.0}, "warmup_epochs"),
    ({"num_views": 1}, "num_views"),
    ({"probe_lrs": "0.1,-1"}, "probe_lrs"),
    ({"val_fraction": 0.5}, "val_fraction"),
    ({"workers": 0}, "workers"),
    ({"precision": "fp16"}, "precision"),
]


@pytest.mark.parametrize("overrides, field", BAD, ids=[f"{f}={list(o.values())}" for o, f in BAD])
def test_resolve_rejects_bad_values_naming_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        C.resolve(with_overrides(**overrides))
    message = str(err.value)
    assert f"config field '{field}'" in message
    assert "\n" not in message
    assert "allowed" in message or "expected" in message or "timm" in message


def test_unknown_backbone_suggests_timm_names():
    with pytest.raises(ConfigError, match="'backbone'.*close matches: .*resnet18"):
        C.resolve(with_overrides(backbone="resnet81"))


def test_cifar_data_dir_may_be_created_when_download_is_asked(tmp_path):
    missing = str(tmp_path / "cifar")
    assert C.resolve(with_overrides(dataset="cifar10", data_dir=missing, download=True)).data.data_dir == missing
    with pytest.raises(ConfigError, match="'data_dir'"):
        C.resolve(with_overrides(dataset="cifar10", data_dir=missing))


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_lejepa_presets_keep_lejepas_loss_scale():
    for name in ("lejepa-digits", "lejepa-cifar100-resnet18", "lejepa-imagenet100", "digits", "digits-sweep"):
        assert C.preset(name).loss.loss_scale == 1.0, name


@pytest.mark.parametrize(
    "key, value",
    [
        ("loss_scale", 0),
        ("loss_scale", -1),
        ("loss_scale", "nan"),
        ("warmup_max_fraction", 0),
        ("warmup_max_fraction", 1.5),
        ("warmup_epochs", -1),
        ("momentum", 1.0),
        ("lars_eta", 0),
    ],
)
def test_bad_optimization_values_name_the_field(key, value):
    with pytest.raises(C.ConfigError, match=f"config field '{key}'"):
        C.resolve(C.apply_overrides(C.TrialConfig(), {key: value}))


def test_target_density_solves_mu_and_out_of_range_values_name_the_field():
    cfg = C.resolve(C.apply_overrides(C.TrialConfig(), {"target_density": 0.122, "p": 1.0}))
    assert cfg.target.mu == pytest.approx(-1.0, abs=5e-3)  # the README table: p 1, mu -1 -> 0.122 (rounded)
    for bad in (1.0, 1.5, -0.2):
        with pytest.raises(C.ConfigError, match="config field 'target_density'"):
            C.resolve(C.apply_overrides(C.TrialConfig(), {"target_density": bad}))
    with pytest.raises(C.ConfigError, match="only rgg is sparse"):
        C.resolve(C.apply_overrides(C.TrialConfig(), {"target_density": 0.2, "target": "gn"}))
