"""Batched, device-side augmentations that turn a batch of images into JEPA views.

All randomness is per sample and drawn from one `torch.Generator`, so a view batch is reproducible
from the generator's seed. Geometry (RandomResizedCrop, flip, rotation, translation) becomes one
affine matrix per sample and all views of one size come out of one `grid_sample` call;
photometric ops are elementwise on the whole stack of views, each gated per sample by a Bernoulli
mask. Nothing synchronizes with the host when the generator lives on the data's device.

The cifar and imagenet recipes follow the reference's torchvision pipeline (solo-learn on PIL
images): RandomResizedCrop with bicubic resampling, ColorJitter applying brightness, contrast,
saturation and hue in a random order drawn per sample, PIL's solarize threshold (128), flips.
Differences from those per-image transforms, on purpose:
- crop boxes are continuous (sub-pixel offsets and sizes) and resampled by grid_sample without
  antialiasing (crops are mostly upsampled; downsampled local crops alias a little), and
  PyTorch's bicubic kernel is a = -0.75 where PIL's is a = -0.5;
- hue is the exact HSV rotation (same result as torchvision's adjust_hue), computed with the
  closed-form HSV -> RGB map;
- ops run in float32 on [0, 1] without re-quantizing to uint8 between ops (values are clamped
  to [0, 1] where PIL would clip).
The digits recipe, with no reference to follow, resamples bilinearly and jitters in a fixed order.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from jepa_ray.data.color import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    gaussian_blur,
    per_sample,
    rgb_to_grayscale,
    solarize,
)
from jepa_ray.data.geometry import bernoulli, crop_affine, sample_crop_boxes, uniform
from jepa_ray.errors import ConfigError

if TYPE_CHECKING:
    from jepa_ray.config import ViewConfig

_DIGITS_MIN_CROP_SCALE = 0.5
"""Digits keep at least half of the 8x8 image per global crop: a 20% crop is ~3x3 pixels and no
longer shows which digit it is."""


@dataclass(frozen=True)
class Recipe:
    """Parameters of an augmentation recipe. Probabilities are per sample; factors are drawn
    uniformly in [1 - s, 1 + s] (brightness, contrast, saturation) or [-s, s] (hue, in turns)."""

    crop_scale: tuple[float, float]
    """Area fraction range of global crops."""
    local_crop_scale: tuple[float, float]
    """Area fraction range of local (multi-crop) views."""
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_flip: float = 0.5
    rotate_deg: float = 0.0
    """Rotation uniform in [-rotate_deg, rotate_deg] about the crop center."""
    translate: float = 0.0
    """Shift uniform in [-t, t] of the image side, on each axis."""
    padding_mode: str = "border"
    """grid_sample padding for samples that reach outside the image (zeros for digits)."""
    interpolation: str = "bilinear"
    """Crop resampling: bilinear or bicubic (the reference's RandomResizedCrop)."""
    p_color_jitter: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    jitter_order: str = "fixed"
    """fixed (brightness, contrast, saturation, hue) or random (a permutation per sample, as
    torchvision's ColorJitter draws one per call)."""
    p_grayscale: float = 0.2
    p_solarize: float = 0.1
    solarize_threshold: float = 0.5
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Gaussian blur sigma range in pixels; the kernel spans ~10% of the view side (SimCLR)."""
    p_noise: float = 0.0
    noise_std: float = 0.0
    """Std of additive Gaussian noise on [0, 1] pixels."""

    def validate(self) -> None:
        for name in ("p_flip", "p_color_jitter", "p_grayscale", "p_solarize", "p_blur", "p_noise"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value}")
        for name in ("crop_scale", "local_crop_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name}: expected 0 < min <= max <= 1, got ({lo}, {hi})")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"crop_ratio: expected 0 < min <= max, got ({lo}, {hi})")
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi:
            raise ValueError(f"blur_sigma: expected 0 < min <= max, got ({lo}, {hi})")
        for name in ("rotate_deg", "translate", "brightness", "contrast", "saturation", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.brightness > 1 or self.contrast > 1 or self.saturation > 1:
            raise ValueError("brightness, contrast, saturation: expected <= 1 (factors must stay >= 0)")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue: expected 0 <= hue <= 0.5, got {self.hue}")
        if self.padding_mode not in ("zeros", "border", "reflection"):
            raise ValueError(f"padding_mode: expected zeros | border | reflection, got {self.padding_mode!r}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation: expected bilinear | bicubic, got {self.interpolation!r}")
        if self.jitter_order not in ("fixed", "random"):
            raise ValueError(f"jitter_order: expected fixed | random, got {self.jitter_order!r}")


def recipe_defaults(name: str, crop_scale_min: float = 0.2) -> Recipe:
    """The recipe `name` (digits, cifar, imagenet) with global crops of area in [crop_scale_min, 1].

    cifar is the reference (bicubic RandomResizedCrop, flips, ColorJitter(0.4, 0.4, 0.2, 0.1) in
    random order p 0.8, Grayscale p 0.2, Solarize p 0.1 at PIL's threshold 128); imagenet adds
    Gaussian blur p 0.5; digits has no flips and no color (one channel): a small rotation/shift,
    brightness/contrast jitter and mild noise, with crops of at least half the image.
    """
    if name == "digits":
        lo = max(crop_scale_min, _DIGITS_MIN_CROP_SCALE)
        return Recipe(
            crop_scale=(lo, 1.0),
            local_crop_scale=(min(0.25, lo), lo),
            p_flip=0.0,
            rotate_deg=10.0,
            translate=0.1,
            padding_mode="zeros",
            saturation=0.0,
            hue=0.0,
            p_grayscale=0.0,
            p_solarize=0.0,
            p_noise=0.5,
            noise_std=0.05,
        )
    if name in ("cifar", "imagenet"):
        return Recipe(
            crop_scale=(crop_scale_min, 1.0),
            local_crop_scale=(min(0.05, crop_scale_min), crop_scale_min),
            p_blur=0.5 if name == "imagenet" else 0.0,
            interpolation="bicubic",
            jitter_order="random",
            solarize_threshold=128 / 255,
        )
    raise ConfigError(
        f"config field 'recipe' = {name!r} is not allowed here; allowed: digits | cifar | imagenet "
        f"(resolve 'auto' with jepa_ray.config.resolve)"
    )


# --------------------------------------------------------------------------------------------


class ViewMaker:
    """Builds the V views of a batch: `num_views` global views of `image_size` then
    `num_local_views` local views of `local_size`, normalized with (mean, std), float32.

    Recipe parameters can be overridden by keyword (any `Recipe` field, e.g. p_grayscale=1.0).
    Give it a generator on the batch's device (`torch.Generator(device="cuda")`): a CPU generator
    works but each random draw is then copied to the device.
    """

    def __init__(
        self,
        views: ViewConfig,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        num_channels: int | None = None,
        **overrides,
    ):
        num_channels = len(mean) if num_channels is None else num_channels
        if len(mean) != num_channels or len(std) != num_channels:
            raise ValueError(f"mean/std: expected {num_channels} values each, got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std: expected positive values, got {tuple(std)}")
        if image_size < 2:
            raise ValueError(f"image_size: expected >= 2, got {image_size}")
        base = recipe_defaults(views.recipe, views.crop_scale_min)
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Recipe)})
        if unknown:
            raise ValueError(f"unknown augmentation parameter(s) {', '.join(unknown)}; allowed: Recipe fields")
        self.recipe = dataclasses.replace(base, **overrides)
        self.recipe.validate()
        self.num_views, self.num_local_views = views.num_views, views.num_local_views
        self.image_size = image_size
        self.local_size = views.local_size or max(image_size // 2, 4)
        self.num_channels = num_channels
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self._stats_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def total_views(self) -> int:
        return self.num_views + self.num_local_views

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, generator: torch.Generator, *, offset: int = 0, total: int | None = None
    ) -> list[torch.Tensor]:
        """x: uint8 (B, C, H, W) (or float in [0, 1]) on any device -> list of V float32 views on
        x's device. All randomness comes from `generator`.

        x may be rows [offset, offset + B) of a batch of `total` images (one rank's share of a
        global batch): the random parameters are drawn for the whole batch and this share's rows
        kept, so W ranks with one generator seed make exactly the views one process makes of
        the whole batch (the draws are cheap next to the resampling)."""
        total = x.shape[0] if total is None else total
        if not 0 <= offset <= total - x.shape[0]:
            raise ValueError(f"offset/total: rows [{offset}, {offset + x.shape[0]}) do not lie in a batch of {total}")
        if x.ndim != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f"x: expected (B, {self.num_channels}, H, W), got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif x.is_floating_point():
            x = x.float()
        else:
            raise ValueError(f"x: expected uint8 or float images, got {x.dtype}")
        rec, views = self.recipe, []
        for count, size, scale in (
            (self.num_views, self.image_size, rec.crop_scale),
            (self.num_local_views, self.local_size, rec.local_crop_scale),
        ):
            if count:
                rows = _Rows(generator, count, total, offset, x.shape[0], x.device)
                views.extend(self._views(x, count, size, scale, rows).split(x.shape[0]))
        return views

    def _views(self, x: torch.Tensor, count: int, size: int, scale: tuple[float, float], rows: _Rows) -> torch.Tensor:
        """`count` views of every image, (count * B, C, size, size), view-major. All views go
        through one grid_sample (their grids stacked along the output height, so the input is
        not repeated) and one pass of each photometric op: a few kernel launches per view size."""
        b, c = x.shape[:2]
        theta = rows.pick(self._geometry(rows.n, x.shape[2], x.shape[3], x.device, scale, rows.gen))
        grid = F.affine_grid(theta, [count * b, c, size, size], align_corners=False)
        grid = grid.view(count, b, size, size, 2).transpose(0, 1).reshape(b, count * size, size, 2)
        v = F.grid_sample(
            x, grid, mode=self.recipe.interpolation, padding_mode=self.recipe.padding_mode, align_corners=False
        )
        if self.recipe.interpolation == "bicubic":
            v = v.clamp_(0.0, 1.0)  # the cubic kernel overshoots; PIL clips to 0..255
        v = v.view(b, c, count, size, size).permute(2, 0, 1, 3, 4).reshape(count * b, c, size, size)
        v = self._photometric(v, rows)
        mean, std = self._stats(v.device)
        return v.sub_(mean).div_(std)

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean/std on `device`, copied once (a pageable host-to-device copy per call would block
        the host until the GPU drains)."""
        if device not in self._stats_cache:
            self._stats_cache[device] = (self._mean.to(device), self._std.to(device))
        return self._stats_cache[device]

    def _geometry(
        self, b: int, h: int, w: int, dev: torch.device, scale: tuple[float, float], gen: torch.Generator
    ) -> torch.Tensor:
        rec = self.recipe
        boxes = sample_crop_boxes(b, h, w, scale, rec.crop_ratio, gen, dev)
        flip = bernoulli(b, rec.p_flip, gen, dev) if rec.p_flip > 0 else None
        angle = None
        if rec.rotate_deg > 0:
            angle = uniform((b,), -math.radians(rec.rotate_deg), math.radians(rec.rotate_deg), gen, dev)
        shift = uniform((b, 2), -2 * rec.translate, 2 * rec.translate, gen, dev) if rec.translate > 0 else None
        return crop_affine(boxes, h, w, flip, angle, shift)

    def _color_jitter(self, v: torch.Tensor, rows: _Rows, rgb: bool) -> torch.Tensor:
        """ColorJitter applied with probability p_color_jitter: the four ops in the fixed order,
        or with jitter_order=random in a random order per sample, torchvision's semantics: four
        rounds, and in round k each sample applies its k-th op (the others have the identity
        factor in that round)."""
        rec, dev = self.recipe, v.device
        on = rows.bernoulli(rec.p_color_jitter)
        one = torch.ones(v.shape[0], device=dev)
        ops = []  # (op, factor or None when the op is off)
        if rec.brightness > 0:
            ops.append((adjust_brightness, rows.uniform(1 - rec.brightness, 1 + rec.brightness)))
        if rec.contrast > 0:
            ops.append((adjust_contrast, rows.uniform(1 - rec.contrast, 1 + rec.contrast)))
        if rgb and rec.saturation > 0:
            ops.append((adjust_saturation, rows.uniform(1 - rec.saturation, 1 + rec.saturation)))
        if rgb and rec.hue > 0:
            ops.append((adjust_hue, rows.uniform(-rec.hue, rec.hue)))
        if rec.jitter_order == "fixed" or len(ops) < 2:
            for op, factor in ops:
                v = self._jitter_op(v, op, factor, on, one)
            return v
        keys = torch.stack([rows.uniform(0.0, 1.0) for _ in ops], dim=1)
        order = keys.argsort(dim=1)  # a uniformly random permutation of the ops per sample
        for k in range(len(ops)):
            for j, (op, factor) in enumerate(ops):
                v = self._jitter_op(v, op, factor, on & (order[:, k] == j), one)
        return v

    @staticmethod
    def _jitter_op(v: torch.Tensor, op, factor: torch.Tensor, mask: torch.Tensor, one: torch.Tensor) -> torch.Tensor:
        if op is adjust_hue:  # no identity factor is exact for the HSV round trip: select instead
            return torch.where(per_sample(mask), adjust_hue(v, factor), v)
        return op(v, torch.where(mask, factor, one))

    def _photometric(self, v: torch.Tensor, rows: _Rows) -> torch.Tensor:
        rec, dev = self.recipe, v.device
        rgb = v.shape[1] == 3
        if rec.p_color_jitter > 0:
            v = self._color_jitter(v, rows, rgb)
        if rgb and rec.p_grayscale > 0:
            on = rows.bernoulli(rec.p_grayscale)
            v = torch.where(per_sample(on), rgb_to_grayscale(v).expand_as(v), v)
        if rec.p_blur > 0:
            on = rows.bernoulli(rec.p_blur)
            sigma = rows.uniform(rec.blur_sigma[0], rec.blur_sigma[1])
            v = torch.where(per_sample(on), gaussian_blur(v, sigma, blur_kernel_size(v.shape[-1])), v)
        if rec.p_solarize > 0:
            on = rows.bernoulli(rec.p_solarize)
            v = torch.where(per_sample(on), solarize(v, rec.solarize_threshold), v)
        if rec.p_noise > 0 and rec.noise_std > 0:
            on = rows.bernoulli(rec.p_noise)
            noise = rows.pick(torch.randn((rows.n, *v.shape[1:]), generator=rows.gen, device=rows.gen.device)).to(
                dev, non_blocking=True
            )
            v = (v + per_sample(on * rec.noise_std) * noise).clamp_(0.0, 1.0)
        return v


class _Rows:
    """Random draws for the `count * total` view rows of a whole batch (view-major), of which
    this call keeps its own: view k of image offset + i is row k * total + offset + i."""

    def __init__(self, gen: torch.Generator, count: int, total: int, offset: int, local: int, device: torch.device):
        self.gen, self.n, self.device = gen, count * total, device
        self.index = None
        if local != total:
            starts = torch.arange(count) * total + offset
            self.index = (starts[:, None] + torch.arange(local)).flatten().to(device)

    def pick(self, values: torch.Tensor) -> torch.Tensor:
        return values if self.index is None else values.index_select(0, self.index.to(values.device))

    def uniform(self, lo: float, hi: float) -> torch.Tensor:
        return self.pick(uniform((self.n,), lo, hi, self.gen, self.device))

    def bernoulli(self, p: float) -> torch.Tensor:
        return self.pick(bernoulli(self.n, p, self.gen, self.device))


def measure_views_per_second(view_maker: ViewMaker, x_uint8: torch.Tensor, batch_size: int, repeats: int = 10) -> float:
    """Views produced per second on x's device (every view of every image counts), after one
    warm-up call; the generator lives on x's device as in training."""
    if repeats < 1 or batch_size < 1:
        raise ValueError(f"batch_size and repeats: expected >= 1, got {batch_size} and {repeats}")
    idx = torch.arange(batch_size, device=x_uint8.device) % x_uint8.shape[0]
    batch = x_uint8[idx]
    gen = torch.Generator(device=x_uint8.device).manual_seed(0)
    sync = torch.cuda.synchronize if x_uint8.device.type == "cuda" else (lambda: None)
    view_maker(batch, gen)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        view_maker(batch, gen)
    sync()
    return repeats * batch_size * view_maker.total_views / (time.perf_counter() - start)
