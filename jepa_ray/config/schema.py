"""The schema of one trial's configuration: one dataclass tree whose fields carry their docs,
saved with every checkpoint and logged (flattened by leaf name) as the MLflow params of the
trial. Leaf names are unique across the tree so that `--set key=value`, the MLflow params and
the search spaces all speak the same flat keys (`lambd`, `num_slices`, `p`, `mu`, ...).

Pure: it imports nothing from the package but its errors, and no torch (`import
jepa_ray.config` is cheap). The names owned by registries (datasets, targets, backbones) are
checked by `jepa_ray.config.resolve`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from jepa_ray.errors import ConfigError

LOSS_CONVENTION = (
    "loss = loss_scale * ((1 - lambd) * invariance + lambd * regularizer); invariance = mean over "
    "views, samples, dims of (z_v - mean_v z)^2 (MSE(z1, z2) / 4 for two views); regularizer = "
    "mean over views of RDMReg(z_v) (SIGReg for the Gaussian baseline)"
)

REGULARIZERS = ("rdmreg", "sigreg")
OPTIMIZERS = ("adamw", "lars")
PRECISIONS = ("auto", "fp32", "bf16")
SIGMA_MODES = ("gn", "unit_var")
RECIPES = ("auto", "digits", "cifar", "imagenet")
STREAM_MODES = ("auto", "memory", "stream")
STREAM_AUGMENT_PLACES = ("device", "workers")


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
    channels: int = 0
    """Image channels the encoder takes; 0 means the dataset's (1 digits, 3 the others)."""
    max_train_samples: int = 0
    """Use at most this many training images (0: all; a fixed stratified subset); for smoke runs and benchmarks."""
    max_test_samples: int = 0
    """Use at most this many test images (0: all; a fixed stratified subset); for benchmarks."""
    stream: str = "auto"
    """Input path: memory (decode every image once into memory), stream (decode each batch in
    DataLoader worker processes, memory bounded; imagefolder and parquet) or auto (stream when the
    estimated decoded size of both splits exceeds stream_threshold_gb)."""
    stream_threshold_gb: float = 4.0
    """stream=auto streams a dataset whose decoded train + test images exceed this many GB."""
    data_workers: int = 2
    """DataLoader worker processes that decode (and with stream_augment=workers augment) the
    streamed batches of each training worker (0: in the training process)."""
    prefetch_batches: int = 2
    """Batches each data worker decodes ahead of the step that needs them."""
    stream_augment: str = "device"
    """Where streamed batches are augmented: device (the training device, as the in-memory path:
    same views, bit for bit) or workers (in the data workers on CPU; the same views as the
    in-memory path on a CPU run, a different but equally distributed stream on CUDA)."""
    stats_samples: int = 2048
    """Streamed datasets: mean/std come from this many train images (a fixed stratified sample;
    all of them when the split is smaller, which gives the in-memory path's statistics)."""
    max_bad_fraction: float = 0.001
    """Unreadable or truncated images up to this fraction of a split are skipped (replaced by the
    next readable image, counted and logged); more stop the trial with one line naming the split."""


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
    target_density: float = 0.0
    """The wanted l0 density of z in (0, 1): with the rgg target, mu is solved from it and p by
    inverting the closed form (0: mu is used as given)."""
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
    warmup_max_fraction: float = 0.5
    """The warmup lasts at most this fraction of the schedule, so a preset shortened below twice
    its warmup still decays (1000 epochs: 10; 40: 10; 10: 5; 1: 0.5)."""
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
    """auto (bf16 on CUDA and on CPUs with native bf16 matrix support, else fp32), fp32 or bf16
    (autocast); a trial records what it trained at."""
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

RUNTIME_KEYS = frozenset(
    {
        "workers",
        "gpus_per_worker",
        "cpus_per_worker",
        "threads_per_worker",
        "max_failures",
        "checkpoint_every",
        "channels_last",
    }
)
"""Config keys a resumed run may change: where and how it runs, not what it trains (batches
and augmentations do not depend on the number of workers)."""


def _leaf_index() -> dict[str, tuple[str, type]]:
    index: dict[str, tuple[str, type]] = {}
    hints = {s: typing.get_type_hints(type(getattr(TrialConfig(), s))) for s in SECTIONS}
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(TrialConfig(), section)):
            assert f.name not in index, f"duplicate config leaf {f.name}"
            index[f.name] = (section, hints[section][f.name])
    return index


LEAVES: dict[str, tuple[str, type]] = _leaf_index()


def dataclass_field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class's source (one line each): the
    help of the command lines generated from dataclasses."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def field_doc(key: str) -> str:
    """The docstring of a leaf (read from the source, for --help and error messages)."""
    section, _ = LEAVES[key]
    return dataclass_field_docs(type(getattr(TrialConfig(), section))).get(key, "")


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


def trained_precision(precision: str, on_cuda: bool) -> str:
    """The precision a recorded config trained at. Configs recorded before trials resolved `auto`
    (checkpoints, curve rows) say "auto", which then meant bf16 on CUDA and fp32 elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if on_cuda else "fp32"


def proj_dims_list(cfg: TrialConfig) -> list[int]:
    return [int(x) for x in cfg.model.proj_dims.split("-")]


def float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]
