"""Resolution and validation of a trial config: derived values (sigma, the augmentation recipe,
the native image size) filled in once, and every field checked once, the names owned by
registries (datasets, targets, backbones) against those registries (imported when called, so
importing the config stays cheap)."""

from __future__ import annotations

import copy
import math
import os
from typing import TYPE_CHECKING, Any

from jepa_ray.config.presets import preset
from jepa_ray.config.schema import (
    OPTIMIZERS,
    PRECISIONS,
    RECIPES,
    REGULARIZERS,
    SIGMA_MODES,
    STREAM_AUGMENT_PLACES,
    STREAM_MODES,
    DataConfig,
    EvalConfig,
    LossConfig,
    OptimConfig,
    SystemConfig,
    TargetConfig,
    TrialConfig,
    ViewConfig,
    apply_overrides,
    float_list,
    parse_set_args,
    proj_dims_list,
)
from jepa_ray.data.registry import dataset_info
from jepa_ray.errors import ConfigError

if TYPE_CHECKING:
    from jepa_ray.data.registry import DatasetInfo
    from jepa_ray.targets import Target


def build(
    preset_name: str, sets: list[str] | None = None, overrides: dict[str, Any] | None = None, *, resolved: bool = True
) -> TrialConfig:
    """A named preset, then `--set key=value` items, then more overrides (the command lines'
    shortcuts; None values are left out), validated: the one way the entry points make a trial
    config. resolved=False returns it before derivation (a sweep's base config, which each
    trial's suggestions override before it is resolved)."""

    merged = parse_set_args(sets or [])
    merged.update({key: value for key, value in (overrides or {}).items() if value is not None})
    cfg = apply_overrides(preset(preset_name), merged)
    out = resolve(cfg)
    return out if resolved else cfg


def resolve(cfg: TrialConfig) -> TrialConfig:
    """Fill derived values (sigma, p for the Gaussian target, the recipe, the native image size)
    and validate once."""
    validate(cfg)
    from jepa_ray import targets

    cfg = copy.deepcopy(cfg)
    target = targets.get_target(cfg.target.target)
    if not target.shaped:
        cfg.target.p, cfg.target.mu = 2.0, 0.0
    if cfg.target.sigma == 0.0:
        cfg.target.sigma = target.default_sigma(cfg.target.p, cfg.target.mu, cfg.target.sigma_mode)
    if cfg.target.target_density > 0:
        cfg.target.mu = target.mu_for_density(cfg.target.p, cfg.target.target_density, cfg.target.sigma)
    info = dataset_info(cfg.data.dataset)
    if cfg.views.recipe == "auto":
        cfg.views.recipe = info.recipe
    if cfg.data.image_size == 0:
        cfg.data.image_size = info.native_size
    if cfg.data.channels == 0:
        cfg.data.channels = info.channels
    return cfg


def target_l0_density(cfg: TrialConfig) -> float:
    """Closed-form fraction of non-zero coordinates of a resolved trial's target (1 for a
    continuous one)."""
    from jepa_ray import targets

    return targets.get_target(cfg.target.target).l0_density(cfg.target.p, cfg.target.mu, cfg.target.sigma)


def validate(cfg: TrialConfig) -> None:
    """Raise ConfigError naming the first bad field, section by section in the schema's order.
    Cheap: no data is read, no model built (the dataset, target and backbone names are checked
    against their registries)."""
    from jepa_ray.backbone_names import check_backbone_name
    from jepa_ray.targets import TARGETS

    _check_data(cfg.data, dataset_info(cfg.data.dataset))
    _check_views(cfg.views)
    check_backbone_name(cfg.model.backbone)
    _check_projector(cfg)
    _check_target(cfg.target, TARGETS)
    _check_loss(cfg.loss, cfg.target.target, TARGETS[cfg.target.target].regularizers)
    _check_optim(cfg.optim, cfg.system.workers)
    _check_eval(cfg.eval)
    _check_system(cfg.system)


def _require(cond: bool, key: str, allowed: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"config field '{key}' = {value!r} is not allowed; allowed: {allowed}")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, " | ".join(choices), value)


def _check_data(data: DataConfig, info: DatasetInfo) -> None:
    """Where the images are, their size and channels (against the dataset's registry entry), how
    many, and how they are read (in memory or streamed)."""
    if info.needs_dir:
        _require(bool(data.data_dir), "data_dir", f"a directory (required for dataset {data.dataset})", data.data_dir)
    if data.data_dir and not (info.downloadable and data.download):
        _require(os.path.isdir(data.data_dir), "data_dir", "an existing directory", data.data_dir)
    _require(data.image_size >= 0, "image_size", "0 (native) or a positive size", data.image_size)
    _require(
        data.channels in (0, info.channels),
        "channels",
        f"0 or {info.channels} (dataset {data.dataset})",
        data.channels,
    )
    _require(data.max_train_samples >= 0, "max_train_samples", ">= 0", data.max_train_samples)
    _require(data.max_test_samples >= 0, "max_test_samples", ">= 0", data.max_test_samples)
    _choice("stream", data.stream, STREAM_MODES)
    if data.stream == "stream":
        _require(
            info.streamable, "stream", "memory | auto for this dataset (stream: imagefolder, parquet)", data.stream
        )
    _require(
        math.isfinite(data.stream_threshold_gb) and data.stream_threshold_gb > 0,
        "stream_threshold_gb",
        "> 0",
        data.stream_threshold_gb,
    )
    _require(data.data_workers >= 0, "data_workers", ">= 0", data.data_workers)
    _require(data.prefetch_batches >= 1, "prefetch_batches", ">= 1", data.prefetch_batches)
    _choice("stream_augment", data.stream_augment, STREAM_AUGMENT_PLACES)
    _require(data.stats_samples >= 1, "stats_samples", ">= 1", data.stats_samples)
    _require(0 <= data.max_bad_fraction < 1, "max_bad_fraction", "[0, 1)", data.max_bad_fraction)


def _check_views(views: ViewConfig) -> None:
    """The number and size of the views and the augmentation recipe."""
    _require(views.num_views >= 2, "num_views", ">= 2", views.num_views)
    _require(views.num_local_views >= 0, "num_local_views", ">= 0", views.num_local_views)
    _require(views.local_size >= 0, "local_size", ">= 0", views.local_size)
    _choice("recipe", views.recipe, RECIPES)
    _require(0.0 < views.crop_scale_min <= 1.0, "crop_scale_min", "(0, 1]", views.crop_scale_min)


def _check_projector(cfg: TrialConfig) -> None:
    """The projector's widths: at least one, each positive."""
    try:
        widths = proj_dims_list(cfg)
    except ValueError:
        widths = []
    _require(
        len(widths) >= 1 and all(width > 0 for width in widths),
        "proj_dims",
        "positive widths separated by '-', e.g. 512-512-512",
        cfg.model.proj_dims,
    )


def _check_target(target: TargetConfig, targets: dict[str, Target]) -> None:
    """The target distribution (a registered name) and its shape; a target density only for a
    rectified target that can turn a density into mu, with a sigma that does not depend on mu."""
    _choice("target", target.target, tuple(targets))
    _require(math.isfinite(target.p) and target.p > 0, "p", "p > 0", target.p)
    _require(math.isfinite(target.mu), "mu", "a finite number", target.mu)
    _require(
        math.isfinite(target.sigma) and target.sigma >= 0,
        "sigma",
        "sigma > 0 (or 0: resolve from sigma_mode)",
        target.sigma,
    )
    _choice("sigma_mode", target.sigma_mode, SIGMA_MODES)
    _require(
        math.isfinite(target.target_density) and 0 <= target.target_density < 1,
        "target_density",
        "an l0 density in (0, 1), or 0 to use mu",
        target.target_density,
    )
    if target.target_density > 0:
        sparse = [name for name, spec in targets.items() if spec.rectified and spec.mu_for_density is not None]
        verb = "is" if len(sparse) == 1 else "are"
        _require(
            target.target in sparse,
            "target_density",
            f"0 unless the target is rectified (only {', '.join(sparse)} {verb} sparse)",
            target.target_density,
        )
        _require(
            target.sigma > 0 or target.sigma_mode == "gn",
            "target_density",
            "0 with sigma_mode=unit_var (its sigma depends on mu); set sigma or sigma_mode=gn",
            target.target_density,
        )


def _check_loss(loss: LossConfig, target_name: str, allowed_regularizers: tuple[str, ...]) -> None:
    """The loss weights and the regularizer: one the target allows, with its slices and (SIGReg)
    its integration grid."""
    _require(math.isfinite(loss.lambd) and 0.0 < loss.lambd < 1.0, "lambd", "0 < lambd < 1", loss.lambd)
    _require(math.isfinite(loss.loss_scale) and loss.loss_scale > 0, "loss_scale", "loss_scale > 0", loss.loss_scale)
    _choice("regularizer", loss.regularizer, REGULARIZERS)
    _require(
        loss.regularizer in allowed_regularizers,
        "regularizer",
        f"{' | '.join(allowed_regularizers)} with target={target_name}",
        loss.regularizer,
    )
    _require(loss.num_slices >= 1, "num_slices", ">= 1", loss.num_slices)
    _require(loss.t_max > 0, "t_max", "> 0", loss.t_max)
    _require(loss.knots >= 3 and loss.knots % 2 == 1, "knots", "an odd number >= 3", loss.knots)


def _check_optim(optim: OptimConfig, workers: int) -> None:
    """The optimizer, its schedule, and a batch that splits evenly over the workers, at least two
    images each (the workers count is checked first, as the split divides by it)."""
    _choice("optimizer", optim.optimizer, OPTIMIZERS)
    _require(math.isfinite(optim.lr) and optim.lr > 0, "lr", "> 0", optim.lr)
    _require(optim.weight_decay >= 0, "weight_decay", ">= 0", optim.weight_decay)
    _require(0 <= optim.momentum < 1, "momentum", "[0, 1)", optim.momentum)
    _require(optim.lars_eta > 0, "lars_eta", "> 0", optim.lars_eta)
    _require(optim.batch_size >= 2, "batch_size", ">= 2", optim.batch_size)
    _require(workers >= 1, "workers", ">= 1", workers)
    _require(optim.batch_size % workers == 0, "batch_size", f"a multiple of workers={workers}", optim.batch_size)
    _require(optim.batch_size // workers >= 2, "batch_size", f">= 2 per worker (workers={workers})", optim.batch_size)
    _require(optim.epochs >= 1, "epochs", ">= 1", optim.epochs)
    _require(
        math.isfinite(optim.warmup_epochs) and optim.warmup_epochs >= 0, "warmup_epochs", ">= 0", optim.warmup_epochs
    )
    _require(0 < optim.warmup_max_fraction <= 1, "warmup_max_fraction", "(0, 1]", optim.warmup_max_fraction)
    _require(optim.warmup_start_lr >= 0, "warmup_start_lr", ">= 0", optim.warmup_start_lr)
    _require(0 <= optim.min_lr_ratio <= 1, "min_lr_ratio", "[0, 1]", optim.min_lr_ratio)
    _require(optim.grad_clip >= 0, "grad_clip", ">= 0", optim.grad_clip)


def _check_eval(evaluation: EvalConfig) -> None:
    """The final probes' grid of learning rates and weight decays, the kNN and the online probe."""
    for key in ("probe_lrs", "probe_wds"):
        try:
            values = float_list(getattr(evaluation, key))
        except ValueError:
            values = []
        _require(
            bool(values)
            and all(number >= 0 for number in values)
            and (key == "probe_wds" or all(number > 0 for number in values)),
            key,
            "comma-separated non-negative numbers (lrs > 0)",
            getattr(evaluation, key),
        )
    _require(evaluation.probe_epochs >= 1, "probe_epochs", ">= 1", evaluation.probe_epochs)
    _require(0 < evaluation.val_fraction < 0.5, "val_fraction", "(0, 0.5)", evaluation.val_fraction)
    _require(evaluation.knn_k >= 1, "knn_k", ">= 1", evaluation.knn_k)
    _require(evaluation.knn_temperature > 0, "knn_temperature", "> 0", evaluation.knn_temperature)
    _require(evaluation.online_probe_lr > 0, "online_probe_lr", "> 0", evaluation.online_probe_lr)


def _check_system(system: SystemConfig) -> None:
    """Resources per worker, precision, checkpoints, retries, threads and the collapse guard."""
    _require(system.gpus_per_worker >= 0, "gpus_per_worker", ">= 0", system.gpus_per_worker)
    _require(system.cpus_per_worker > 0, "cpus_per_worker", "> 0", system.cpus_per_worker)
    _choice("precision", system.precision, PRECISIONS)
    _require(system.checkpoint_every >= 0, "checkpoint_every", ">= 0", system.checkpoint_every)
    _require(system.max_failures >= 0, "max_failures", ">= 0", system.max_failures)
    _require(system.threads_per_worker >= 0, "threads_per_worker", ">= 0", system.threads_per_worker)
    _require(system.collapse_warmup_epochs >= 0, "collapse_warmup_epochs", ">= 0", system.collapse_warmup_epochs)
    _require(system.collapse_min_rank >= 0, "collapse_min_rank", ">= 0", system.collapse_min_rank)
    _require(
        0 <= system.collapse_min_density_ratio < 1,
        "collapse_min_density_ratio",
        "[0, 1)",
        system.collapse_min_density_ratio,
    )
