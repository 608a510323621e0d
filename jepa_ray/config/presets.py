"""Named trial configs: the embedded-digits defaults, the smoke config of the tests, the
published Rectified LpJEPA CIFAR and ImageNet-100 recipes and the LeJEPA baselines."""

from __future__ import annotations

from jepa_ray.config.schema import TrialConfig
from jepa_ray.errors import ConfigError


def _preset_digits() -> TrialConfig:
    """The embedded digits, 50 epochs, AdamW: the default trial."""
    return TrialConfig()


def _preset_digits_sweep() -> TrialConfig:
    """digits with 30-epoch trials: the base of the default sweep (two dozen trials; its time is
    in README.md and docs/benchmarks.md); the search space sets lambd, slices, p, mu and the
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


def _preset_imagenet100_resnet50() -> TrialConfig:
    """The published Rectified LpJEPA ImageNet-100 recipe (YilunKuang/rectified-lp-jepa,
    scripts/pretrain/imagenet-100/rectified_lpjepa_imagenet.yaml): ResNet-50, projector
    2048-2048-2048 ending in a ReLU, 25 MSE + 125 RDMReg (lambda 5/9, loss scale 225), 8192
    projections, LARS lr 0.165 x bs/256 (eta 0.02, clip_lr), wd 1e-4, 128 images per device,
    two 224 px views with blur p 0.5, 1000 epochs with solo-learn's default 10 warmup epochs.

    The images are an image folder (train/ and val/ of one folder per class, set data_dir);
    they are fitted to 224 x 224 (shorter side, center crop) before the random crops, where the
    reference crops the full-resolution image. `batch_size` is global: 128 x the number of
    workers (set it with `--set batch_size=...` beside `workers`); the input streams from disk
    (`stream=auto` picks it for a set of this size)."""
    c = TrialConfig()
    c.data.dataset, c.data.image_size = "imagefolder", 224
    c.data.data_workers = 8  # the yaml's num_workers
    c.views.recipe, c.views.crop_scale_min = "imagenet", 0.2
    c.model.backbone, c.model.cifar_stem, c.model.zero_init_last = "resnet50", False, False
    c.model.proj_dims = "2048-2048-2048"
    c.model.sync_bn = True
    c.target.target, c.target.p, c.target.mu = "rgg", 1.0, 0.0
    c.loss.lambd, c.loss.loss_scale = 5.0 / 9.0, 225.0  # 25 MSE + 125 RDMReg
    c.loss.num_slices = 8192
    c.optim.optimizer, c.optim.lr, c.optim.weight_decay = "lars", 0.165, 1e-4
    c.optim.momentum, c.optim.lars_eta = 0.9, 0.02
    c.optim.batch_size, c.optim.epochs, c.optim.warmup_epochs = 128, 1000, 10
    c.eval.online_probe_lr = 0.055  # the yaml's classifier_lr
    c.eval.probe_epochs = 100
    c.system.checkpoint_every = 1  # the yaml's checkpoint frequency
    return c


def _as_lejepa(c: TrialConfig, proj_dims: str) -> TrialConfig:
    """LeJEPA's defaults on a reference preset: the dense Gaussian target with SIGReg, lambda
    0.05, loss scale 1, 1024 slices, AdamW (lr 5e-4, wd 0.05), bf16 on CUDA; data, backbone,
    views and schedule stay the preset's."""
    c.target.target, c.target.p, c.target.mu = "gaussian", 2.0, 0.0
    c.loss.regularizer, c.loss.lambd, c.loss.loss_scale, c.loss.num_slices = "sigreg", 0.05, 1.0, 1024
    c.optim.optimizer, c.optim.lr, c.optim.weight_decay = "adamw", 5e-4, 5e-2
    c.eval.online_probe_lr = 1e-3
    c.model.proj_dims = proj_dims
    return c


def _preset_lejepa_cifar100_resnet18() -> TrialConfig:
    """LeJEPA defaults (lambda 0.05, loss scale 1, 1024 slices, AdamW, bf16) on the CIFAR ResNet-18."""
    return _as_lejepa(_preset_cifar100_resnet18(), "2048-2048-128")


def _preset_lejepa_imagenet100() -> TrialConfig:
    """LeJEPA defaults on the ImageNet-100 ResNet-50 of `imagenet100-resnet50` (same data, views,
    batch and schedule), its projector 2048-2048-2048 without the final ReLU (a dense target)."""
    return _as_lejepa(_preset_imagenet100_resnet50(), "2048-2048-2048")


def _preset_smoke() -> TrialConfig:
    """Tiny and fast on a CPU: for tests and `--smoke`."""
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
    "imagenet100-resnet50": _preset_imagenet100_resnet50,
    "lejepa-imagenet100": _preset_lejepa_imagenet100,
}


def preset(name: str) -> TrialConfig:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]()
