"""Sparsity and collapse metrics of a feature matrix z of shape (N samples, D dimensions).

These are the numbers a sweep trades off: how sparse the codes are (ℓ0 density, the ℓ1 ratio,
dead and always-on units) and how much of the space they use (RankMe effective rank).
Inputs may be torch tensors or numpy arrays; scalars come back as python floats so they can be
logged to MLflow directly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "l0_density",
    "l1_sparsity",
    "dead_fraction",
    "always_active_fraction",
    "activation_rates",
    "rank_me",
    "summary",
]


def _as_matrix(z: Any) -> torch.Tensor:
    """z as a 2-D torch tensor with at least one sample and one dimension."""
    if isinstance(z, np.ndarray):
        z = torch.from_numpy(z)
    elif not isinstance(z, torch.Tensor):
        raise ValueError(f"z must be a torch tensor or numpy array of shape (N, D), got {type(z).__name__}")
    if z.dim() != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"z must have shape (N, D) with N >= 1 and D >= 1, got shape {tuple(z.shape)}")
    return z.detach()


ROW_BLOCK = 4096
"""Rows of z read at a time by the metrics of a whole split: their temporaries (masks, float64
copies) are a block's, never the split's."""


def _float(z: torch.Tensor) -> torch.Tensor:
    """z in float64 where the device supports it (float32 on MPS), so sums over large N stay exact."""
    return z.to(torch.float32 if z.device.type == "mps" else torch.float64)


def _blocks(z: torch.Tensor) -> list[torch.Tensor]:
    """Consecutive blocks of at most ROW_BLOCK rows of z (views, not copies)."""
    return [z[start : start + ROW_BLOCK] for start in range(0, z.shape[0], ROW_BLOCK)]


def _active_counts(z: torch.Tensor) -> torch.Tensor:
    """Per-dimension count of samples where the dimension is non-zero, int64 (D,), read a block
    of rows at a time (no N x D mask)."""
    counts = torch.zeros(z.shape[1], dtype=torch.int64, device=z.device)
    for block in _blocks(z):
        counts += (block != 0).sum(dim=0)
    return counts


def _fraction(count: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    """count / total as the mean of a 0/1 matrix gives it (`_float` dtype): the sum of 0s and 1s
    is exact, then one division."""
    return _float(count.to(device)) / total


def l0_density(z: Any) -> float:
    """Mean over samples of the fraction of non-zero coordinates (exact zeros, as ReLU makes them)."""
    x = _as_matrix(z)
    return _fraction(_active_counts(x).sum(), x.numel(), x.device).item()


def l1_sparsity(z: Any, eps: float = 1e-12) -> float:
    """Mean over samples of (‖z‖₁ / ‖z‖₂)² / D: 1 for vectors with equal magnitudes, 1/D for
    one-hot ones (the ℓ1 metric of the Rectified LpJEPA reference code). All-zero rows count 0.
    Each row's ratio is computed in a block of rows (a row's value does not depend on the others)."""
    x = _as_matrix(z)
    ratios = []
    for block in _blocks(x):
        b = _float(block)
        ratios.append((b.abs().sum(dim=1) / b.norm(dim=1).clamp_min(eps)) ** 2 / x.shape[1])
    return torch.cat(ratios).mean().item()


def activation_rates(z: Any) -> torch.Tensor:
    """Per-dimension fraction of samples where the dimension is non-zero, shape (D,), float32 on
    the CPU (for per-trial plots)."""
    x = _as_matrix(z)
    return _fraction(_active_counts(x), x.shape[0], x.device).to(device="cpu", dtype=torch.float32)


def dead_fraction(z: Any) -> float:
    """Fraction of dimensions that are zero for every sample (dead units)."""
    x = _as_matrix(z)
    return _fraction((_active_counts(x) == 0).sum(), x.shape[1], x.device).item()


def always_active_fraction(z: Any) -> float:
    """Fraction of dimensions that are non-zero for every sample (units that never switch off)."""
    x = _as_matrix(z)
    return _fraction((_active_counts(x) == x.shape[0]).sum(), x.shape[1], x.device).item()


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every entry of x is finite, a block of rows at a time."""
    return all(bool(torch.isfinite(block).all()) for block in _blocks(x))


def _singular_values(x: torch.Tensor) -> torch.Tensor:
    """The singular values of x in float64 on the CPU. Above ROW_BLOCK rows, through a QR
    factorization built a block of rows at a time (R of [R; next block]): x and its R have the
    same singular values, and no float64 copy of x is held, only a (ROW_BLOCK + D) x D one.
    They then agree with those of the whole matrix to rounding (about 1e-15 of the largest)."""
    if x.shape[0] <= ROW_BLOCK:
        return torch.linalg.svdvals(x.to(device="cpu", dtype=torch.float64))
    r = torch.zeros(0, x.shape[1], dtype=torch.float64)
    for block in _blocks(x):
        r = torch.linalg.qr(torch.cat([r, block.to(device="cpu", dtype=torch.float64)]), mode="r").R
    return torch.linalg.svdvals(r)


def rank_me(z: Any, eps: float = 1e-7) -> float:
    """RankMe effective rank (Garrido et al., 2023): exp(-Σ p_k log p_k) with
    p_k = σ_k / Σσ + eps over the singular values σ of z. About D for well spread features,
    1 for rank-one (collapsed) ones. An all-zero z gives about 1 (the denominator is clamped)."""
    x = _as_matrix(z)
    if not _all_finite(x):
        raise ValueError(f"z must be finite to compute rank_me; got non-finite values in shape {tuple(x.shape)}")
    # float64 on the CPU: small singular values matter for the entropy, and not every
    # accelerator backend has a float64 SVD.
    sigma = _singular_values(x)
    p = sigma / sigma.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return math.exp(-(p * p.log()).sum().item())


def summary(z: Any) -> dict[str, float]:
    """All scalar metrics of z, keyed by name (the MLflow metric names, without prefix)."""
    x = _as_matrix(z)
    return {
        "l0_density": l0_density(x),
        "l1_sparsity": l1_sparsity(x),
        "dead_fraction": dead_fraction(x),
        "always_active_fraction": always_active_fraction(x),
        "rank_me": rank_me(x),
    }
