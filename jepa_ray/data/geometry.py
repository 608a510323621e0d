"""Random geometry of views, batched: RandomResizedCrop boxes drawn for a whole batch and turned
(with flips, rotations and shifts) into one affine matrix per sample for grid_sample, and the
uniform/Bernoulli draws on the generator's device."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def uniform(
    shape: Sequence[int], lo: float | torch.Tensor, hi: float | torch.Tensor, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    """U[lo, hi) drawn on the generator's device, then moved (a generator on the data's device
    avoids host-to-device copies)."""
    u = torch.rand(tuple(shape), generator=gen, device=gen.device).to(device, non_blocking=True)
    return lo + (hi - lo) * u


def bernoulli(n: int, p: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return uniform((n,), 0.0, 1.0, gen, device) < p


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator,
    device: torch.device,
    tries: int = 10,
) -> torch.Tensor:
    """RandomResizedCrop boxes (n, 4) as (x0, y0, w, h) in pixels, batched.

    As torchvision: area ~ U(scale) * H * W, log aspect ~ U(log ratio); the first of `tries`
    candidates that fits is kept, else the whole image clipped to the ratio range; the offset is
    uniform. Sizes and offsets stay continuous (no rounding)."""
    area = height * width
    s = uniform((n, tries), scale[0], scale[1], gen, device)
    r = torch.exp(uniform((n, tries), math.log(ratio[0]), math.log(ratio[1]), gen, device))
    w, h = torch.sqrt(area * s * r), torch.sqrt(area * s / r)
    fits = (w <= width) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    ok = fits.any(dim=1)
    w = torch.where(ok, w, torch.full_like(w, fw))
    h = torch.where(ok, h, torch.full_like(h, fh))
    x0 = uniform((n,), 0.0, 1.0, gen, device) * (width - w)
    y0 = uniform((n,), 0.0, 1.0, gen, device) * (height - h)
    return torch.stack([x0, y0, w, h], dim=1)


def crop_affine(
    boxes: torch.Tensor,
    height: int,
    width: int,
    flip: torch.Tensor | None = None,
    angle: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Affine matrices (n, 2, 3) for F.affine_grid (align_corners=False) that sample the boxes
    (x0, y0, w, h in pixels), mirrored where `flip`, rotated by `angle` (radians) about the box
    center and shifted by `shift` (n, 2) in normalized units (2 = one image side).

    In pixels: p_in = c + Rot(angle) diag(±w/2, h/2) v, v the output's normalized coordinate;
    dividing by (W/2, H/2) gives input normalized coordinates (rotation stays rigid in pixels
    for non-square images)."""
    x0, y0, w, h = boxes.unbind(1)
    sx = w / 2 if flip is None else torch.where(flip, -w / 2, w / 2)
    sy = h / 2
    cos = torch.ones_like(w) if angle is None else torch.cos(angle)
    sin = torch.zeros_like(w) if angle is None else torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * sx * (2 / width), -sin * sy * (2 / width), (2 * x0 + w) / width - 1], dim=1),
            torch.stack([sin * sx * (2 / height), cos * sy * (2 / height), (2 * y0 + h) / height - 1], dim=1),
        ],
        dim=1,
    )
    if shift is not None:
        theta[:, :, 2] += shift
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor, size: int, padding_mode: str = "border") -> torch.Tensor:
    """Resample each image of x (B, C, H, W) through its affine matrix into (B, C, size, size)."""
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
