"""Small CNNs registered in timm's registry (`jepa_convnet_tiny`, `jepa_convnet_small`): the
default backbones for 8x8 digits and CPU sweeps, where a ResNet-18 would make every epoch far
slower. Importing this module registers them."""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn


class ConvNetTiny(nn.Module):
    """Conv-BN-ReLU stages with global average pooling; timm-compatible (`num_features`,
    `forward_features`, `forward_head`, `reset_classifier`)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), in_chans: int = 3, num_classes: int = 0, **_: object):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [
                nn.Conv2d(prev, w, 3, stride, 1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, 1, 1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            prev = w
        self.features = nn.Sequential(*layers)
        self.num_features = prev
        self.head = nn.Linear(prev, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's interface; the pooling is always the global average."""
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def jepa_convnet_tiny(pretrained: bool = False, **kwargs) -> ConvNetTiny:
    """32-64-128 channels, ~0.3M parameters."""
    kwargs.pop("img_size", None)
    return ConvNetTiny((32, 64, 128), **kwargs)


@register_model
def jepa_convnet_small(pretrained: bool = False, **kwargs) -> ConvNetTiny:
    """64-128-256 channels, ~1.1M parameters."""
    kwargs.pop("img_size", None)
    return ConvNetTiny((64, 128, 256), **kwargs)
