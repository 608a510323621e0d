"""The configuration of one trial: one dataclass tree, resolved once, validated once, saved with
every checkpoint and logged (flattened by leaf name) as the MLflow params of the trial.

Leaf names are unique across the tree so that `--set key=value`, the MLflow params and the
search spaces all speak the same flat keys (`lambd`, `num_slices`, `p`, `mu`, ...).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

LOSS_CONVENTION = ("loss = loss_scale * ((1 - lambd) * invariance + lambd * regularizer); invariance = mean over "
                   "views, samples, dims of (z_v - mean_v z)^2 (MSE(z1, z2) / 4 for two views); regularizer = "
                   "mean over views of RDMReg(z_v) (SIGReg for the Gaussian baseline)")

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "parquet")
NATIVE_IMAGE_SIZES = {"digits": 8, "cifar10": 32, "cifar100": 32}  # image folders and tables: their own
TARGETS = ("gaussian", "gn", "rgg")
REGULARIZERS = ("rdmreg", "sigreg")
OPTIMIZERS = ("adamw", "lars")
PRECISIONS = ("auto", "fp32", "bf16")
SIGMA_MODES = ("gn", "unit_var")
RECIPES = ("auto", "digits", "cifar", "imagenet")


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the field and what is allowed."""


@dataclass
class DataConfig:
    dataset: str = "digits"
    """Dataset: digits (embedded, 1,797 8x8 images), cifar10, cifar100, imagefolder, parquet."""
    data_dir: str | None = None
    """Directory (imagefolder/cifar) or directory holding train.parquet/test.parquet (parquet)."""
    download: bool = False
    """Allow torchvision to download CIFAR into data_dir (never done unless asked)."""
    image_size: int = 0
    """Side of the square training crops; 0 means the dataset's native size (8 digits, 32 CIFAR)."""
    max_train_samples: int = 0
    """Use at most this many training images (0: all; a fixed stratified subset); for smoke runs and benchmarks."""
    max_test_samples: int = 0
    """Use at most this many test images (0: all; a fixed stratified subset); for benchmarks."""


@dataclass
class ViewConfig:
    num_views: int = 2
    """Number of global views per image."""
    num_local_views: int = 0
    """Extra small crops (multi-crop); 0 disables."""
    local_size: int = 0
    """Side of local crops; 0 means half the global size."""
    recipe: str = "auto"
    """Augmentation recipe: auto (by dataset), digits (no flips/color), cifar (reference), imagenet."""
    crop_scale_min: float = 0.2
    """Lower bound of RandomResizedCrop's area scale for global views."""


@dataclass
class ModelConfig:
    backbone: str = "jepa_convnet_tiny"
    """Any timm model name (built with num_classes=0, no pretrained weights)."""
    cifar_stem: bool = False
    """Replace the stem with a 3x3 stride-1 conv and no max-pool (small images, ResNets)."""
    proj_dims: str = "256-256-256"
    """Projector widths, '-' separated: hidden dims then output dim (depth = number of dims)."""
    sync_bn: bool = False
    """BatchNorm statistics over the global batch when running on several workers (SyncBatchNorm)."""
    zero_init_last: bool = True
    """timm's zero init of each residual block's last BatchNorm (timm's default); the reference
    (torchvision's ResNet) does not: false in the reference presets."""
    joint_view_forward: bool = False
    """One forward of all global views together (BatchNorm statistics over every view) instead
    of one forward per view, as the reference does (false: per view)."""


@dataclass
class TargetConfig:
    target: str = "rgg"
    """Target distribution: gaussian (LeJEPA), gn (LpJEPA), rgg (Rectified LpJEPA)."""
    p: float = 1.0
    """Shape of the generalized Gaussian GN_p (p > 0); ignored for gaussian (p = 2)."""
    mu: float = 0.0
    """Location of GN_p before rectification; negative values give sparser codes."""
    sigma: float = 0.0
    """Scale of GN_p; 0 resolves from sigma_mode."""
    sigma_mode: str = "gn"
    """How sigma resolves when 0: gn (sigma_GN(p), unit variance before ReLU) or unit_var
    (the sigma that gives the rectified variable unit variance)."""


@dataclass
class LossConfig:
    lambd: float = 0.5
    """Weight of the regularizer in loss_scale * ((1 - lambd) * invariance + lambd * regularizer),
    in (0, 1); the reference CIFAR loss 25 MSE + 250 RDMReg is lambd = 5/7 with loss_scale 350."""
    loss_scale: float = 1.0
    """s > 0, the loss's overall scale: LARS (weight decay inside the trust ratio, clip_lr) and SGD
    on biases see it; the reference presets use 350 (CIFAR), LeJEPA's convention is 1."""
    regularizer: str = "rdmreg"
    """rdmreg (sliced 2-Wasserstein to target samples) or sigreg (Epps-Pulley, Gaussian only)."""
    num_slices: int = 1024
    """Number of random unit directions drawn each step."""
    t_max: float = 3.0
    """SIGReg: upper end of the quadrature grid."""
    knots: int = 17
    """SIGReg: number of quadrature knots."""


@dataclass
class OptimConfig:
    optimizer: str = "adamw"
    """adamw or lars (solo-learn's: trust ratio with clip_lr, biases and norm parameters excluded)."""
    lr: float = 2e-3
    """Base learning rate, scaled by batch_size / 256 (LARS reference: 0.03)."""
    weight_decay: float = 1e-4
    """Weight decay (not applied to biases and norm parameters)."""
    momentum: float = 0.9
    """LARS momentum."""
    lars_eta: float = 0.02
    """LARS trust coefficient eta."""
    batch_size: int = 256
    """Global batch size (images, summed over workers); divisible by workers."""
    epochs: int = 50
    """Training epochs."""
    warmup_epochs: float = 2.0
    """Linear warmup before the cosine decay, in epochs (the reference: 10), capped at
    warmup_max_fraction of the schedule."""
    warmup_max_fraction: float = 0.2
    """The warmup lasts at most this fraction of the schedule, so a shortened preset does not
    spend most of its run warming up (1000 epochs: 10; 40 epochs: 8; 10 epochs: 2)."""
    warmup_start_lr: float = 3e-5
    """Learning rate of the first warmup step (solo-learn's default), rising linearly to the peak."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of the peak."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0: off)."""


@dataclass
class EvalConfig:
    probe_lrs: str = "1,0.3,0.1,0.03"
    """Learning rates of the grid of linear heads (comma separated), trained in one pass."""
    probe_wds: str = "0,1e-4,1e-3"
    """Weight decays of the grid of linear heads (comma separated)."""
    probe_epochs: int = 100
    """Epochs of the linear-head grid over cached frozen features."""
    val_fraction: float = 0.1
    """Fraction of the train split held out to choose the best linear head."""
    knn_k: int = 20
    """Neighbours of the weighted kNN classifier."""
    knn_temperature: float = 0.07
    """Temperature of the kNN vote weights exp(sim / T)."""
    online_probe_lr: float = 1e-3
    """Base learning rate (scaled by batch_size / 256, scheduled like the encoder's, no weight
    decay) of the online linear probes on detached backbone features and on z, trained in the
    encoder's optimizer every step (the reference: 0.01 with LARS)."""


@dataclass
class SystemConfig:
    workers: int = 1
    """Ray Train workers (DDP processes) for this trial."""
    gpus_per_worker: float = 0.0
    """GPUs per worker; 0 trains on CPU."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker."""
    precision: str = "auto"
    """auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16."""
    channels_last: bool = True
    """Use channels_last memory format on CUDA."""
    seed: int = 0
    """Seed of weights, data order, augmentations and slices."""
    checkpoint_every: int = 0
    """Write a checkpoint every k epochs (0: only at the end)."""
    max_failures: int = 1
    """Worker-group restarts allowed before the trial fails (resumes from the last checkpoint)."""
    threads_per_worker: int = 0
    """torch intra-op threads per worker (0: cpus_per_worker rounded up)."""
    collapse_guard: bool = True
    """Stop a trial whose z collapsed (all zeros, never sparse, or effective rank near 1)."""
    collapse_warmup_epochs: int = 3
    """Epochs before the collapse guard starts checking."""
    collapse_min_rank: float = 1.5
    """The guard stops a trial whose RankMe of z falls below this after the warm-up."""
    collapse_min_density_ratio: float = 0.2
    """With the rgg target, the guard stops a trial whose l0 density of z falls below this
    fraction of the target density after the warm-up (z collapsing to all zeros, the trivial
    solution of the invariance term when lambd is small)."""


@dataclass
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    system: SystemConfig = field(default_factory=SystemConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(TrialConfig))


def _leaf_index() -> dict[str, tuple[str, type]]:
    index: dict[str, tuple[str, type]] = {}
    hints = {s: typing.get_type_hints(type(getattr(TrialConfig(), s))) for s in SECTIONS}
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(TrialConfig(), section)):
            assert f.name not in index, f"duplicate config leaf {f.name}"
            index[f.name] = (section, hints[section][f.name])
    return index


LEAVES: dict[str, tuple[str, type]] = _leaf_index()


def field_doc(key: str) -> str:
    """The docstring of a leaf (read from the source, for --help and error messages)."""
    import inspect

    section, _ = LEAVES[key]
    cls = type(getattr(TrialConfig(), section))
    lines = inspect.getsource(cls).splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f"{key}:"):
            doc = []
            for nxt in lines[i + 1 :]:
                s = nxt.strip()
                if not (doc or s.startswith('"""')):
                    break
                doc.append(s.strip('"'))
                if s.endswith('"""') and (len(doc) > 1 or s.count('"""') == 2):
                    break
            return " ".join(d for d in doc if d)
    return ""


def _parse_value(key: str, raw: Any) -> Any:
    _, typ = LEAVES[key]
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        typ = args[0]
    if isinstance(raw, bool) and typ in (int, float):
        raise ConfigError(f"config field '{key}': {raw!r} is a boolean; allowed: a {typ.__name__}")
    if isinstance(raw, typ):
        return raw
    try:
        if typ is bool:
            if isinstance(raw, str):
                low = raw.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
            elif raw in (0, 1):
                return bool(raw)
            raise ValueError
        if typ is int:
            as_float = float(raw)
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        if typ is float:
            return float(raw)
        if typ is str:
            if isinstance(raw, (list, tuple)):
                return "-".join(str(x) for x in raw) if key == "proj_dims" else ",".join(map(str, raw))
            return str(raw)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"config field '{key}': cannot read {raw!r} as {typ.__name__}")


def apply_overrides(cfg: TrialConfig, overrides: dict[str, Any]) -> TrialConfig:
    """A copy of cfg with flat `key=value` overrides applied (keys are leaf names)."""
    cfg = copy.deepcopy(cfg)
    for key, raw in overrides.items():
        if key not in LEAVES:
            close = _close_matches(key, LEAVES)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown config key '{key}'{hint}; see `python -m jepa_ray.train --list-keys`")
        section, _ = LEAVES[key]
        setattr(getattr(cfg, section), key, _parse_value(key, raw))
    return cfg


def parse_set_args(items: list[str]) -> dict[str, str]:
    """`["mu=-1", "p=0.5"]` -> {"mu": "-1", "p": "0.5"}."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _close_matches(word: str, choices) -> list[str]:
    import difflib

    return difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)


def flatten(cfg: TrialConfig) -> dict[str, Any]:
    """Leaf name -> value, the form of MLflow params and `--set`."""
    return {k: getattr(getattr(cfg, s), k) for k, (s, _) in LEAVES.items()}


def to_dict(cfg: TrialConfig) -> dict[str, Any]:
    """Nested dict with the loss convention, the form saved in config.json."""
    d = dataclasses.asdict(cfg)
    d["loss_convention"] = LOSS_CONVENTION
    return d


def from_dict(d: dict[str, Any]) -> TrialConfig:
    """Inverse of to_dict (unknown keys are rejected; missing ones take defaults)."""
    flat: dict[str, Any] = {}
    for section in SECTIONS:
        flat.update(d.get(section, {}))
    return apply_overrides(TrialConfig(), flat)


def save_json(cfg: TrialConfig, path: str | os.PathLike) -> None:
    with open(path, "w") as f:
        json.dump(to_dict(cfg), f, indent=2, sort_keys=True)


def load_json(path: str | os.PathLike) -> TrialConfig:
    with open(path) as f:
        return from_dict(json.load(f))


# --------------------------------------------------------------------------------------------
# Presets


def _preset_digits() -> TrialConfig:
    """The embedded digits, 50 epochs, AdamW: the default trial."""
    return TrialConfig()


def _preset_digits_sweep() -> TrialConfig:
    """digits with 30-epoch trials: the base of the default sweep (two dozen trials in about
    six minutes on a 2-core CPU); the search space sets lambd, slices, p, mu and the
    projector."""
    c = _preset_digits()
    c.optim.epochs = 30
    return c


def _preset_cifar100_resnet18() -> TrialConfig:
    """The published Rectified LpJEPA CIFAR-100 recipe (YilunKuang/rectified-lp-jepa,
    scripts/pretrain/cifar/rectified_lpjepa_cifar100.yaml; see docs/design.md)."""
    c = TrialConfig()
    c.data.dataset = "cifar100"
    c.views.recipe = "cifar"
    c.model.backbone = "resnet18"
    c.model.cifar_stem = True
    c.model.zero_init_last = False  # torchvision's ResNet-18
    c.model.proj_dims = "512-512-512"
    c.model.sync_bn = True
    c.target.target, c.target.p, c.target.mu = "rgg", 1.0, 0.0
    c.loss.lambd, c.loss.loss_scale = 5.0 / 7.0, 350.0  # 25 MSE + 250 RDMReg
    c.loss.num_slices = 8192
    c.optim.optimizer, c.optim.lr, c.optim.weight_decay = "lars", 0.03, 1e-4
    c.optim.momentum, c.optim.lars_eta = 0.9, 0.02
    c.optim.batch_size, c.optim.epochs, c.optim.warmup_epochs = 256, 1000, 10
    c.eval.online_probe_lr = 0.01  # solo-learn's classifier_lr
    c.eval.probe_epochs = 100
    c.system.checkpoint_every = 1  # the reference checkpoints every epoch
    return c


def _preset_cifar10_resnet18() -> TrialConfig:
    c = _preset_cifar100_resnet18()
    c.data.dataset = "cifar10"
    return c


def _preset_lejepa_digits() -> TrialConfig:
    """LeJEPA (Gaussian target, SIGReg) on the embedded digits."""
    c = _preset_digits()
    c.target.target, c.target.p, c.target.mu = "gaussian", 2.0, 0.0
    c.loss.regularizer, c.loss.lambd, c.loss.num_slices = "sigreg", 0.05, 1024
    c.model.proj_dims = "256-256-128"
    c.optim.epochs = 20
    return c


def _preset_lejepa_cifar100_resnet18() -> TrialConfig:
    """LeJEPA defaults (lambda 0.05, loss scale 1, 1024 slices, AdamW, bf16) on the CIFAR ResNet-18."""
    c = _preset_cifar100_resnet18()
    c.target.target, c.target.p, c.target.mu = "gaussian", 2.0, 0.0
    c.loss.regularizer, c.loss.lambd, c.loss.loss_scale, c.loss.num_slices = "sigreg", 0.05, 1.0, 1024
    c.optim.optimizer, c.optim.lr, c.optim.weight_decay = "adamw", 5e-4, 5e-2
    c.eval.online_probe_lr = 1e-3
    c.model.proj_dims = "2048-2048-128"
    return c


def _preset_smoke() -> TrialConfig:
    """A few seconds on CPU: for tests and `--smoke`."""
    c = TrialConfig()
    c.optim.epochs = 1
    c.optim.warmup_epochs = 0
    c.optim.batch_size = 128
    c.loss.num_slices = 128
    c.model.proj_dims = "64-64"
    c.eval.probe_epochs = 5
    c.data.max_train_samples = 512
    return c


PRESETS = {
    "digits": _preset_digits,
    "digits-sweep": _preset_digits_sweep,
    "smoke": _preset_smoke,
    "cifar10-resnet18": _preset_cifar10_resnet18,
    "cifar100-resnet18": _preset_cifar100_resnet18,
    "lejepa-digits": _preset_lejepa_digits,
    "lejepa-cifar100-resnet18": _preset_lejepa_cifar100_resnet18,
}


def preset(name: str) -> TrialConfig:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]()


# --------------------------------------------------------------------------------------------
# Resolution and validation


def proj_dims_list(cfg: TrialConfig) -> list[int]:
    return [int(x) for x in cfg.model.proj_dims.split("-")]


def float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def resolve(cfg: TrialConfig) -> TrialConfig:
    """Fill derived values (sigma, p for the Gaussian target, the recipe) and validate once."""
    validate(cfg)
    from jepa_ray import targets

    cfg = copy.deepcopy(cfg)
    if cfg.target.target == "gaussian":
        cfg.target.p, cfg.target.mu = 2.0, 0.0
    if cfg.target.sigma == 0.0:
        if cfg.target.target == "gaussian":
            cfg.target.sigma = 1.0
        elif cfg.target.sigma_mode == "unit_var" and cfg.target.target == "rgg":
            cfg.target.sigma = targets.sigma_unit_variance(cfg.target.p, cfg.target.mu)
        else:
            cfg.target.sigma = targets.sigma_gn(cfg.target.p)
    if cfg.views.recipe == "auto":
        cfg.views.recipe = "digits" if cfg.data.dataset == "digits" else (
            "cifar" if cfg.data.dataset.startswith("cifar") else "imagenet")
    if cfg.data.image_size == 0:
        cfg.data.image_size = NATIVE_IMAGE_SIZES.get(cfg.data.dataset, 0)
    return cfg


def _require(cond: bool, key: str, allowed: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"config field '{key}' = {value!r} is not allowed; allowed: {allowed}")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, " | ".join(choices), value)


def validate(cfg: TrialConfig) -> None:
    """Raise ConfigError naming the first bad field. Cheap: no data is read, no model built
    (the backbone name is checked against timm's registry)."""
    d, v, m, t, l, o, e, s = (cfg.data, cfg.views, cfg.model, cfg.target, cfg.loss, cfg.optim,
                              cfg.eval, cfg.system)
    _choice("dataset", d.dataset, DATASETS)
    if d.dataset in ("imagefolder", "parquet"):
        _require(bool(d.data_dir), "data_dir", f"a directory (required for dataset {d.dataset})", d.data_dir)
    if d.data_dir and not (d.dataset.startswith("cifar") and d.download):
        _require(os.path.isdir(d.data_dir), "data_dir", "an existing directory", d.data_dir)
    _require(d.image_size >= 0, "image_size", "0 (native) or a positive size", d.image_size)
    _require(d.max_train_samples >= 0, "max_train_samples", ">= 0", d.max_train_samples)
    _require(d.max_test_samples >= 0, "max_test_samples", ">= 0", d.max_test_samples)

    _require(v.num_views >= 2, "num_views", ">= 2", v.num_views)
    _require(v.num_local_views >= 0, "num_local_views", ">= 0", v.num_local_views)
    _require(v.local_size >= 0, "local_size", ">= 0", v.local_size)
    _choice("recipe", v.recipe, RECIPES)
    _require(0.0 < v.crop_scale_min <= 1.0, "crop_scale_min", "(0, 1]", v.crop_scale_min)

    from jepa_ray.model import check_backbone_name

    check_backbone_name(m.backbone)
    try:
        dims = proj_dims_list(cfg)
    except ValueError:
        dims = []
    _require(len(dims) >= 1 and all(x > 0 for x in dims), "proj_dims",
             "positive widths separated by '-', e.g. 512-512-512", m.proj_dims)

    _choice("target", t.target, TARGETS)
    _require(math.isfinite(t.p) and t.p > 0, "p", "p > 0", t.p)
    _require(math.isfinite(t.mu), "mu", "a finite number", t.mu)
    _require(math.isfinite(t.sigma) and t.sigma >= 0, "sigma", "sigma > 0 (or 0: resolve from sigma_mode)", t.sigma)
    _choice("sigma_mode", t.sigma_mode, SIGMA_MODES)

    _require(math.isfinite(l.lambd) and 0.0 < l.lambd < 1.0, "lambd", "0 < lambd < 1", l.lambd)
    _require(math.isfinite(l.loss_scale) and l.loss_scale > 0, "loss_scale", "loss_scale > 0", l.loss_scale)
    _choice("regularizer", l.regularizer, REGULARIZERS)
    if l.regularizer == "sigreg":
        _require(t.target == "gaussian", "regularizer", "sigreg only with target=gaussian (use rdmreg for gn/rgg)", l.regularizer)
    _require(l.num_slices >= 1, "num_slices", ">= 1", l.num_slices)
    _require(l.t_max > 0, "t_max", "> 0", l.t_max)
    _require(l.knots >= 3 and l.knots % 2 == 1, "knots", "an odd number >= 3", l.knots)

    _choice("optimizer", o.optimizer, OPTIMIZERS)
    _require(math.isfinite(o.lr) and o.lr > 0, "lr", "> 0", o.lr)
    _require(o.weight_decay >= 0, "weight_decay", ">= 0", o.weight_decay)
    _require(0 <= o.momentum < 1, "momentum", "[0, 1)", o.momentum)
    _require(o.lars_eta > 0, "lars_eta", "> 0", o.lars_eta)
    _require(o.batch_size >= 2, "batch_size", ">= 2", o.batch_size)
    _require(s.workers >= 1, "workers", ">= 1", s.workers)  # before batch_size % workers
    _require(o.batch_size % s.workers == 0, "batch_size",
             f"a multiple of workers={s.workers}", o.batch_size)
    _require(o.batch_size // s.workers >= 2, "batch_size", f">= 2 per worker (workers={s.workers})", o.batch_size)
    _require(o.epochs >= 1, "epochs", ">= 1", o.epochs)
    _require(math.isfinite(o.warmup_epochs) and o.warmup_epochs >= 0, "warmup_epochs", ">= 0", o.warmup_epochs)
    _require(0 < o.warmup_max_fraction <= 1, "warmup_max_fraction", "(0, 1]", o.warmup_max_fraction)
    _require(o.warmup_start_lr >= 0, "warmup_start_lr", ">= 0", o.warmup_start_lr)
    _require(0 <= o.min_lr_ratio <= 1, "min_lr_ratio", "[0, 1]", o.min_lr_ratio)
    _require(o.grad_clip >= 0, "grad_clip", ">= 0", o.grad_clip)

    for key in ("probe_lrs", "probe_wds"):
        try:
            vals = float_list(getattr(e, key))
        except ValueError:
            vals = []
        _require(bool(vals) and all(x >= 0 for x in vals) and (key == "probe_wds" or all(x > 0 for x in vals)),
                 key, "comma-separated non-negative numbers (lrs > 0)", getattr(e, key))
    _require(e.probe_epochs >= 1, "probe_epochs", ">= 1", e.probe_epochs)
    _require(0 < e.val_fraction < 0.5, "val_fraction", "(0, 0.5)", e.val_fraction)
    _require(e.knn_k >= 1, "knn_k", ">= 1", e.knn_k)
    _require(e.knn_temperature > 0, "knn_temperature", "> 0", e.knn_temperature)
    _require(e.online_probe_lr > 0, "online_probe_lr", "> 0", e.online_probe_lr)

    _require(s.gpus_per_worker >= 0, "gpus_per_worker", ">= 0", s.gpus_per_worker)
    _require(s.cpus_per_worker > 0, "cpus_per_worker", "> 0", s.cpus_per_worker)
    _choice("precision", s.precision, PRECISIONS)
    _require(s.checkpoint_every >= 0, "checkpoint_every", ">= 0", s.checkpoint_every)
    _require(s.max_failures >= 0, "max_failures", ">= 0", s.max_failures)
    _require(s.threads_per_worker >= 0, "threads_per_worker", ">= 0", s.threads_per_worker)
    _require(s.collapse_warmup_epochs >= 0, "collapse_warmup_epochs", ">= 0", s.collapse_warmup_epochs)
    _require(s.collapse_min_rank >= 0, "collapse_min_rank", ">= 0", s.collapse_min_rank)
    _require(0 <= s.collapse_min_density_ratio < 1, "collapse_min_density_ratio", "[0, 1)",
             s.collapse_min_density_ratio)
