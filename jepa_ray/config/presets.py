"""Named trial configs: the embedded-digits defaults, the smoke config of the tests, the
published Rectified LpJEPA CIFAR recipe and the LeJEPA baselines."""

from __future__ import annotations

from jepa_ray.config.schema import TrialConfig
from jepa_ray.errors import ConfigError


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
