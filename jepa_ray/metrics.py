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


def _float(z: torch.Tensor) -> torch.Tensor:
    """z in float64 where the device supports it (float32 on MPS), so sums over large N stay exact."""
    return z.to(torch.float32 if z.device.type == "mps" else torch.float64)


def _active(z: Any) -> torch.Tensor:
    """Boolean mask of exactly non-zero entries."""
    return _as_matrix(z) != 0


def l0_density(z: Any) -> float:
    """Mean over samples of the fraction of non-zero coordinates (exact zeros, as ReLU makes them)."""
    return _float(_active(z)).mean().item()


def l1_sparsity(z: Any, eps: float = 1e-12) -> float:
    """Mean over samples of (‖z‖₁ / ‖z‖₂)² / D: 1 for vectors with equal magnitudes, 1/D for
    one-hot ones (the ℓ1 metric of the Rectified LpJEPA reference code). All-zero rows count 0."""
    x = _float(_as_matrix(z))
    l1 = x.abs().sum(dim=1)
    l2 = x.norm(dim=1).clamp_min(eps)
    return ((l1 / l2) ** 2 / x.shape[1]).mean().item()


def activation_rates(z: Any) -> torch.Tensor:
    """Per-dimension fraction of samples where the dimension is non-zero, shape (D,), float32 on
    the CPU (for per-trial plots)."""
    return _float(_active(z)).mean(dim=0).to(device="cpu", dtype=torch.float32)


def dead_fraction(z: Any) -> float:
    """Fraction of dimensions that are zero for every sample (dead units)."""
    return _float(~_active(z).any(dim=0)).mean().item()


def always_active_fraction(z: Any) -> float:
    """Fraction of dimensions that are non-zero for every sample (units that never switch off)."""
    return _float(_active(z).all(dim=0)).mean().item()


def rank_me(z: Any, eps: float = 1e-7) -> float:
    """RankMe effective rank (Garrido et al., 2023): exp(-Σ p_k log p_k) with
    p_k = σ_k / Σσ + eps over the singular values σ of z. About D for well spread features,
    1 for rank-one (collapsed) ones. An all-zero z gives about 1 (the denominator is clamped)."""
    x = _as_matrix(z)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"z must be finite to compute rank_me; got non-finite values in shape {tuple(x.shape)}")
    # float64 on the CPU: small singular values matter for the entropy, and not every
    # accelerator backend has a float64 SVD.
    sigma = torch.linalg.svdvals(x.to(device="cpu", dtype=torch.float64))
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
