"""The JEPA encoder: a timm backbone (any registered name) and a projector MLP whose output z is
what the regularizer shapes; with a rectified target (`rgg`) the projector ends in a ReLU so z
is sparse and non-negative."""

from __future__ import annotations

from typing import Protocol

import timm
import torch
from torch import nn

from jepa_ray import convnets  # noqa: F401  (registers jepa_ray's small CNNs in timm)
from jepa_ray.backbone_names import check_backbone_name
from jepa_ray.errors import ConfigError
from jepa_ray.targets import get_target


def _apply_cifar_stem(backbone: nn.Module, name: str, in_chans: int) -> None:
    """3x3 stride-1 stem without max-pool, as the reference code builds it (padding 2, so a 32x32
    image gives 34x34 maps; PyTorch's default init, since it replaces conv1 after the model's)."""
    conv = getattr(backbone, "conv1", None)
    if isinstance(conv, nn.Conv2d):
        backbone.conv1 = nn.Conv2d(in_chans, conv.out_channels, 3, 1, 2, bias=False)
        if hasattr(backbone, "maxpool"):
            backbone.maxpool = nn.Identity()
        return
    raise ConfigError(
        f"config field 'cifar_stem' = True is not supported for backbone {name!r}; "
        "allowed: ResNet-style backbones with conv1 (ViTs take patch size from image_size)"
    )


def create_backbone(
    name: str, *, in_chans: int, image_size: int, cifar_stem: bool = False, zero_init_last: bool = True
) -> nn.Module:
    """A timm backbone with num_classes=0 and random weights. ViT-style models get
    img_size=image_size and, with cifar_stem, patches of image_size/8. zero_init_last=False
    keeps every residual branch's last BatchNorm at weight 1 (torchvision's ResNet init, the
    reference's) where timm would zero it."""
    check_backbone_name(name)
    kwargs: dict = dict(pretrained=False, num_classes=0, in_chans=in_chans)
    if not zero_init_last:
        kwargs["zero_init_last"] = False
    try:
        extra = {"img_size": image_size} if image_size else {}
        if cifar_stem and "vit" in name:
            extra["patch_size"] = max(1, image_size // 8)
        backbone = timm.create_model(name, **kwargs, **extra)
        vit_like = True
    except TypeError:
        try:
            backbone = timm.create_model(name, **kwargs)
        except TypeError as err:
            if "zero_init_last" not in str(err):
                raise
            raise ConfigError(
                f"config field 'zero_init_last' = False is not supported for backbone {name!r}; "
                "allowed: true, or a backbone with zero-initialised residual branches "
                "(timm's ResNet family)"
            ) from None
        vit_like = False
    if cifar_stem and not (vit_like and hasattr(backbone, "patch_embed")):
        _apply_cifar_stem(backbone, name, in_chans)
    return backbone


class Projector(nn.Sequential):
    """Linear-BN-ReLU for each hidden width, a final Linear, then an optional ReLU."""

    def __init__(self, in_dim: int, dims: list[int], rectify: bool):
        layers: list[nn.Module] = []
        prev = in_dim
        for width in dims[:-1]:
            layers += [nn.Linear(prev, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            prev = width
        layers.append(nn.Linear(prev, dims[-1]))
        if rectify:
            layers.append(nn.ReLU())
        super().__init__(*layers)
        self.out_dim = dims[-1]


class Preprocess(nn.Module):
    """Raw images -> the encoder's input: uint8 (0..255) or float images in [0, 1], (B, C, H, W)
    with C = channels; the shorter side resized to image_size (bilinear, antialiased) and the
    center image_size x image_size kept, as the datasets are stored; then normalized with the
    training split's per-channel mean and std. Its buffers are not saved in state dicts: they
    live in the checkpoint's preprocessing.json."""

    def __init__(self, mean, std, image_size: int, channels: int | None = None):
        super().__init__()
        channels = len(mean) if channels is None else channels
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std: expected {channels} values each, got {len(mean)} and {len(std)}")
        self.image_size, self.channels = int(image_size), int(channels)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def spec(self) -> dict:
        """What a checkpoint records (preprocessing.json)."""
        return {
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "image_size": self.image_size,
            "channels": self.channels,
            "input": "uint8 0..255 or float 0..1, (B, C, H, W); shorter side resized, center crop",
        }

    def extra_repr(self) -> str:
        mean, std = ([round(v, 4) for v in t.flatten().tolist()] for t in (self.mean, self.std))
        return (
            f"takes (B, {self.channels}, H, W) uint8 0..255 or float 0..1; shorter side resized to "
            f"{self.image_size}, center {self.image_size}x{self.image_size} crop; normalized: mean {mean}, std {std}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"images: expected (B, {self.channels}, H, W), got {tuple(x.shape)}")
        x = self._unit_range(x)
        h, w = x.shape[-2:]
        if (h, w) != (self.image_size, self.image_size):
            if min(h, w) != self.image_size:
                scale = self.image_size / min(h, w)
                size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
                x = nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            top, left = (x.shape[-2] - self.image_size) // 2, (x.shape[-1] - self.image_size) // 2
            x = x[..., top : top + self.image_size, left : left + self.image_size]
        return (x - self.mean) / self.std

    @staticmethod
    def _unit_range(x: torch.Tensor) -> torch.Tensor:
        """Images as floats in [0, 1]: integers are 0..255, floats already 0..1; anything else is a
        ValueError naming the range (raw sklearn digits, 0..16, or normalized images would
        otherwise be taken silently)."""
        if x.numel() == 0:
            return x.float()
        low, high = float(x.min()), float(x.max())
        if not x.is_floating_point():
            if low < 0 or high > 255:
                raise ValueError(f"images: integer values must lie in 0..255 (uint8 pixels), got {low:g}..{high:g}")
            return x.float().div_(255.0)
        if low < 0 or high > 1:
            raise ValueError(
                f"images: float values must lie in [0, 1] (pixels / 255), got {low:.4g}..{high:.4g}; pass uint8 "
                "0..255 or scale to [0, 1] (e.g. sklearn digits / 16)"
            )
        return x.float()


class JEPAEncoder(nn.Module):
    """Backbone + projector; forward gives (backbone features, z). With `preprocess` (what
    `jepa_ray.load_encoder` attaches) it takes raw images; without, normalized ones."""

    def __init__(self, backbone: nn.Module, projector: Projector, preprocess: Preprocess | None = None):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.preprocess = preprocess

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.num_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.preprocess is not None:
            x = self.preprocess(x)
        h = self.backbone(x)
        return h, self.projector(h)


class _DataFields(Protocol):
    channels: int
    image_size: int


class _ModelFields(Protocol):
    backbone: str
    proj_dims: str
    cifar_stem: bool
    zero_init_last: bool


class _TargetFields(Protocol):
    target: str


class EncoderConfig(Protocol):
    """What `create_model` reads of a trial config; `jepa_ray.config.TrialConfig` has this shape.
    Described here rather than imported: the config imports this module (to check backbone names),
    so importing the config back, even for type checking only, would close an import cycle."""

    @property
    def data(self) -> _DataFields: ...

    @property
    def model(self) -> _ModelFields: ...

    @property
    def target(self) -> _TargetFields: ...


def create_model(cfg: EncoderConfig) -> JEPAEncoder:
    """The encoder a resolved trial config describes (its channels and image size resolved)."""
    if cfg.data.channels < 1:
        raise ValueError("create_model: the config's channels are unresolved (0); resolve the config first")
    image_size = cfg.data.image_size or 32
    in_chans = cfg.data.channels
    backbone = create_backbone(
        cfg.model.backbone,
        in_chans=in_chans,
        image_size=image_size,
        cifar_stem=cfg.model.cifar_stem,
        zero_init_last=cfg.model.zero_init_last,
    )
    projector = Projector(
        int(backbone.num_features),
        [int(x) for x in cfg.model.proj_dims.split("-")],
        rectify=get_target(cfg.target.target).rectified,
    )
    return JEPAEncoder(backbone, projector)
