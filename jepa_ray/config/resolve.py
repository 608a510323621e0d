"""Resolution and validation of a trial config: derived values (sigma, the augmentation recipe,
the native image size) filled in once, and every field checked once, the names owned by
registries (datasets, targets, backbones) against those registries (imported when called, so
importing the config stays cheap)."""

from __future__ import annotations

import copy
import math
import os
from typing import Any

from jepa_ray.config.schema import (
    OPTIMIZERS,
    PRECISIONS,
    RECIPES,
    REGULARIZERS,
    SIGMA_MODES,
    STREAM_AUGMENT_PLACES,
    STREAM_MODES,
    TrialConfig,
    apply_overrides,
    float_list,
    parse_set_args,
    proj_dims_list,
)
from jepa_ray.errors import ConfigError


def build(
    preset_name: str, sets: list[str] | None = None, overrides: dict[str, Any] | None = None, *, resolved: bool = True
) -> TrialConfig:
    """A named preset, then `--set key=value` items, then more overrides (the command lines'
    shortcuts; None values are left out), validated: the one way the entry points make a trial
    config. resolved=False returns it before derivation (a sweep's base config, which each
    trial's suggestions override before it is resolved)."""
    from jepa_ray.config.presets import preset

    merged = parse_set_args(sets or [])
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    cfg = apply_overrides(preset(preset_name), merged)
    out = resolve(cfg)
    return out if resolved else cfg


def resolve(cfg: TrialConfig) -> TrialConfig:
    """Fill derived values (sigma, p for the Gaussian target, the recipe, the native image size)
    and validate once."""
    validate(cfg)
    from jepa_ray import targets
    from jepa_ray.data.registry import dataset_info

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


def _require(cond: bool, key: str, allowed: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"config field '{key}' = {value!r} is not allowed; allowed: {allowed}")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, " | ".join(choices), value)


def validate(cfg: TrialConfig) -> None:
    """Raise ConfigError naming the first bad field. Cheap: no data is read, no model built
    (the dataset, target and backbone names are checked against their registries)."""
    from jepa_ray.data.registry import dataset_info
    from jepa_ray.model import check_backbone_name
    from jepa_ray.targets import TARGETS

    d, v, m, t, l, o, e, s = (cfg.data, cfg.views, cfg.model, cfg.target, cfg.loss, cfg.optim, cfg.eval, cfg.system)
    info = dataset_info(d.dataset)
    if info.needs_dir:
        _require(bool(d.data_dir), "data_dir", f"a directory (required for dataset {d.dataset})", d.data_dir)
    if d.data_dir and not (info.downloadable and d.download):
        _require(os.path.isdir(d.data_dir), "data_dir", "an existing directory", d.data_dir)
    _require(d.image_size >= 0, "image_size", "0 (native) or a positive size", d.image_size)
    _require(d.channels in (0, info.channels), "channels", f"0 or {info.channels} (dataset {d.dataset})", d.channels)
    _require(d.max_train_samples >= 0, "max_train_samples", ">= 0", d.max_train_samples)
    _require(d.max_test_samples >= 0, "max_test_samples", ">= 0", d.max_test_samples)
    _choice("stream", d.stream, STREAM_MODES)
    if d.stream == "stream":
        _require(info.streamable, "stream", "memory | auto for this dataset (stream: imagefolder, parquet)", d.stream)
    _require(
        math.isfinite(d.stream_threshold_gb) and d.stream_threshold_gb > 0,
        "stream_threshold_gb",
        "> 0",
        d.stream_threshold_gb,
    )
    _require(d.data_workers >= 0, "data_workers", ">= 0", d.data_workers)
    _require(d.prefetch_batches >= 1, "prefetch_batches", ">= 1", d.prefetch_batches)
    _choice("stream_augment", d.stream_augment, STREAM_AUGMENT_PLACES)
    _require(d.stats_samples >= 1, "stats_samples", ">= 1", d.stats_samples)
    _require(0 <= d.max_bad_fraction < 1, "max_bad_fraction", "[0, 1)", d.max_bad_fraction)

    _require(v.num_views >= 2, "num_views", ">= 2", v.num_views)
    _require(v.num_local_views >= 0, "num_local_views", ">= 0", v.num_local_views)
    _require(v.local_size >= 0, "local_size", ">= 0", v.local_size)
    _choice("recipe", v.recipe, RECIPES)
    _require(0.0 < v.crop_scale_min <= 1.0, "crop_scale_min", "(0, 1]", v.crop_scale_min)

    check_backbone_name(m.backbone)
    try:
        dims = proj_dims_list(cfg)
    except ValueError:
        dims = []
    _require(
        len(dims) >= 1 and all(x > 0 for x in dims),
        "proj_dims",
        "positive widths separated by '-', e.g. 512-512-512",
        m.proj_dims,
    )

    _choice("target", t.target, tuple(TARGETS))
    _require(math.isfinite(t.p) and t.p > 0, "p", "p > 0", t.p)
    _require(math.isfinite(t.mu), "mu", "a finite number", t.mu)
    _require(math.isfinite(t.sigma) and t.sigma >= 0, "sigma", "sigma > 0 (or 0: resolve from sigma_mode)", t.sigma)
    _choice("sigma_mode", t.sigma_mode, SIGMA_MODES)
    _require(
        math.isfinite(t.target_density) and 0 <= t.target_density < 1,
        "target_density",
        "an l0 density in (0, 1), or 0 to use mu",
        t.target_density,
    )
    if t.target_density > 0:
        sparse = [n for n, spec in TARGETS.items() if spec.rectified and spec.mu_for_density is not None]
        _require(
            t.target in sparse,
            "target_density",
            f"0 unless the target is rectified (only {', '.join(sparse)} {'is' if len(sparse) == 1 else 'are'} sparse)",
            t.target_density,
        )
        _require(
            t.sigma > 0 or t.sigma_mode == "gn",
            "target_density",
            "0 with sigma_mode=unit_var (its sigma depends on mu); set sigma or sigma_mode=gn",
            t.target_density,
        )

    _require(math.isfinite(l.lambd) and 0.0 < l.lambd < 1.0, "lambd", "0 < lambd < 1", l.lambd)
    _require(math.isfinite(l.loss_scale) and l.loss_scale > 0, "loss_scale", "loss_scale > 0", l.loss_scale)
    _choice("regularizer", l.regularizer, REGULARIZERS)
    allowed = TARGETS[t.target].regularizers
    _require(l.regularizer in allowed, "regularizer", f"{' | '.join(allowed)} with target={t.target}", l.regularizer)
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
    _require(o.batch_size % s.workers == 0, "batch_size", f"a multiple of workers={s.workers}", o.batch_size)
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
        _require(
            bool(vals) and all(x >= 0 for x in vals) and (key == "probe_wds" or all(x > 0 for x in vals)),
            key,
            "comma-separated non-negative numbers (lrs > 0)",
            getattr(e, key),
        )
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
    _require(
        0 <= s.collapse_min_density_ratio < 1, "collapse_min_density_ratio", "[0, 1)", s.collapse_min_density_ratio
    )
