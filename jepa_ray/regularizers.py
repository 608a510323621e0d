"""The JEPA losses: invariance between views, RDMReg (Rectified LpJEPA / LpJEPA: two-sample
sliced 2-Wasserstein distance to fresh target samples) and SIGReg (LeJEPA: Epps-Pulley test of
the projections against N(0, 1)), and the total loss with the fixed lambda convention.

`rdmreg` and `sigreg` are the plain single-process formulas on (B, D) features; the modules
`RDMReg` and `SIGReg` draw the per-step directions and target samples and are
distributed-correct (see jepa_ray.distributed for the gradient convention).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from jepa_ray import distributed as dist_lib
from jepa_ray import targets
from jepa_ray.seeding import STREAM_DIRECTIONS, STREAM_TARGETS, step_generator


def _check_features(z: torch.Tensor, name: str = "z") -> torch.Tensor:
    """(B, D) -> (1, B, D); (V, B, D) unchanged."""
    if z.dim() == 2:
        return z.unsqueeze(0)
    if z.dim() != 3:
        raise ValueError(f"{name} must have shape (B, D) or (V, B, D), got {tuple(z.shape)}")
    return z


def _check_directions(directions: torch.Tensor, dim: int) -> None:
    if directions.dim() != 2 or directions.shape[1] != dim:
        raise ValueError(f"directions must have shape (N, {dim}), got {tuple(directions.shape)}")


def random_directions(
    num: int, dim: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """num unit vectors in R^dim, uniform on the sphere (normalized Gaussians), float32."""
    d = torch.randn(num, dim, generator=generator, device=device, dtype=torch.float32)
    return d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)


# --------------------------------------------------------------------------------------------
# Plain formulas


def _check_pair(z: torch.Tensor, y: torch.Tensor) -> None:
    if z.dim() not in (2, 3):
        raise ValueError(f"z must have shape (B, D) or (V, B, D), got {tuple(z.shape)}")
    if z.shape != y.shape:
        raise ValueError(f"z and y must have the same shape, got {tuple(z.shape)} and {tuple(y.shape)}")


def _sorted(x: torch.Tensor) -> torch.Tensor:
    """Values of x sorted along the last dim, differentiable. On CPU (float32/64) numpy
    sorts: at RDMReg shapes (thousands of rows of a few hundred) its sort is several times faster
    than torch's, and an 8192-slice step spent most of its time sorting. The gradient flows through
    a gather by the argsort, as through torch.sort's values."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return x.sort(dim=-1).values
    if not x.requires_grad:
        return torch.from_numpy(np.sort(x.numpy(), axis=-1))
    order = torch.from_numpy(np.argsort(x.detach().numpy(), axis=-1))
    return x.gather(-1, order)


def _sliced_w2(z: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """The rdmreg formula on checked inputs, with projections laid out (N, [V,] B): F.linear
    gives directions @ z^T in one op and each sort then runs along contiguous memory (several
    times faster on CPU than sorting the (B, N) product over the batch). Few ops on purpose:
    at B = 256 on a GPU the step is bound by kernel launches, not arithmetic."""
    if z.dim() == 3:
        v, b, dim = z.shape
        zp = F.linear(directions, z.reshape(v * b, dim)).view(-1, v, b)
        yp = F.linear(directions, y.reshape(v * b, dim)).view(-1, v, b)
    else:
        zp, yp = F.linear(directions, z), F.linear(directions, y)
    return (_sorted(zp) - _sorted(yp)).square().mean()


def rdmreg(z: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Sliced squared 2-Wasserstein distance between the empirical distributions of z and y:
    project both on each direction, sort over the batch, mean of squared differences.

    z, y: (B, D) or (V, B, D) with the same shape; directions: (N, D). Returns the mean over
    views, samples and directions, computed in z's dtype (also under autocast). Only z gets a
    gradient (not the target samples y)."""
    _check_pair(z, y)
    _check_directions(directions, z.shape[-1])
    if y.requires_grad:
        y = y.detach()
    if y.dtype != z.dtype:
        y = y.to(z.dtype)
    if directions.dtype != z.dtype:
        directions = directions.to(z.dtype)
    if torch.is_autocast_enabled(z.device.type):
        with torch.autocast(z.device.type, enabled=False):
            return _sliced_w2(z, y, directions)
    return _sliced_w2(z, y, directions)


def _sigreg_grid(t_max: float, knots: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Knots on [0, t_max] and trapezoid weights of the symmetric integral over [-t_max, t_max]
    (the integrand is even in t, so the half grid is integrated twice)."""
    t = torch.linspace(0.0, t_max, knots, device=device, dtype=dtype)
    h = t_max / (knots - 1)
    w = torch.full((knots,), 2.0 * h, device=device, dtype=dtype)
    # fill_ rather than `w[0] = h`, which copies a host scalar to the device (a blocking copy
    # every step on CUDA, and not allowed inside a CUDA graph).
    w[0].fill_(h)  # t = 0 is shared by both halves
    w[-1].fill_(h)
    return t, w


def _sigreg_from_moments(
    cos_mean: torch.Tensor, sin_mean: torch.Tensor, t: torch.Tensor, w: torch.Tensor, n: int
) -> torch.Tensor:
    """n * integral of |phi_n(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt, averaged over directions."""
    phi0 = torch.exp(-0.5 * t.square())
    err = (cos_mean - phi0).square() + sin_mean.square()
    return (err * (phi0 * w)).sum(-1).mean() * n


def sigreg(z: torch.Tensor, directions: torch.Tensor, *, t_max: float = 3.0, knots: int = 17) -> torch.Tensor:
    """Epps-Pulley statistic of the projections of z against N(0, 1) (LeJEPA's SIGReg):
    B * integral over [-t_max, t_max] of |ECF(t) - exp(-t^2/2)|^2 exp(-t^2/2), trapezoid rule,
    mean over directions (and views for (V, B, D) input)."""
    z3 = _check_features(z)
    _check_directions(directions, z3.shape[-1])
    if knots < 2 or t_max <= 0:
        raise ValueError(f"need knots >= 2 and t_max > 0, got knots={knots}, t_max={t_max}")
    t, w = _sigreg_grid(t_max, knots, z3.device, z3.dtype)
    xt = (z3 @ directions.to(z3.dtype).t()).unsqueeze(-1) * t  # (V, B, N, T)
    return _sigreg_from_moments(xt.cos().mean(1), xt.sin().mean(1), t, w, z3.shape[1])


def invariance(z: torch.Tensor, num_global: int | None = None) -> torch.Tensor:
    """Mean over views, samples and dims of (z_v - z_bar)^2, z_bar the mean over the global
    views (the first num_global; all views when None). z: (V, B, D)."""
    if z.dim() != 3 or z.shape[0] < 2:
        raise ValueError(f"z must have shape (V >= 2, B, D), got {tuple(z.shape)}")
    center = z[: num_global or z.shape[0]].mean(0, keepdim=True)
    return (z - center).square().mean()


def total_loss(inv: torch.Tensor, reg: torch.Tensor, lambd: float, scale: float = 1.0) -> torch.Tensor:
    """scale * ((1 - lambd) * invariance + lambd * regularizer), the fixed convention of
    docs/design.md. The reference CIFAR loss 25 MSE(z1, z2) + 250 mean_v RDMReg(z_v) is
    lambd = 5/7, scale = 350 (the invariance of two views is MSE / 4)."""
    if not 0.0 < lambd < 1.0:
        raise ValueError(f"lambd={lambd} is not allowed: lambd must be in (0, 1)")
    if not scale > 0:
        raise ValueError(f"scale={scale} is not allowed: the loss scale must be > 0")
    return scale * ((1.0 - lambd) * inv + lambd * reg)


# --------------------------------------------------------------------------------------------
# Distributed modules


class RDMReg(nn.Module):
    """RDMReg over the global batch: fresh directions and target samples each step, the same
    on every rank (seeded from the global step), features gathered with gradients."""

    def __init__(
        self,
        num_slices: int,
        target: str = "rgg",
        p: float = 1.0,
        mu: float = 0.0,
        sigma: float | None = None,
        seed: int = 0,
    ):
        super().__init__()
        targets.get_target(target)  # ValueError naming the registered ones
        if num_slices < 1:
            raise ValueError(f"num_slices={num_slices} is not allowed: num_slices must be >= 1")
        self.num_slices, self.target, self.p, self.mu = num_slices, target, p, mu
        self.sigma = targets.sigma_gn(p) if sigma is None else sigma
        self.seed = seed

    def forward(self, z: torch.Tensor, step: int) -> torch.Tensor:
        _check_features(z)
        z = dist_lib.full_precision(z)
        z = dist_lib.gather_with_grad(z, dim=z.dim() - 2)  # the batch dimension
        gen_d = step_generator(z.device, self.seed, step, STREAM_DIRECTIONS)
        directions = random_directions(self.num_slices, z.shape[-1], gen_d, z.device)
        gen_t = step_generator(z.device, self.seed, step, STREAM_TARGETS)
        y = targets.sample(
            self.target,
            tuple(z.shape),
            p=self.p,
            mu=self.mu,
            sigma=self.sigma,
            generator=gen_t,
            device=z.device,
            dtype=torch.float32,
        )
        return rdmreg(z, y, directions)  # float32 under autocast too (directions and samples cast to z's dtype)


class SIGReg(nn.Module):
    """SIGReg with the empirical characteristic function averaged over the global batch through
    an autograd-aware all-reduce, scaled by the global batch size."""

    def __init__(self, num_slices: int, t_max: float = 3.0, knots: int = 17, seed: int = 0):
        super().__init__()
        if num_slices < 1:
            raise ValueError(f"num_slices={num_slices} is not allowed: num_slices must be >= 1")
        if knots < 2 or not t_max > 0:
            raise ValueError(f"knots={knots}, t_max={t_max} are not allowed: knots >= 2, t_max > 0")
        self.num_slices, self.t_max, self.knots, self.seed = num_slices, t_max, knots, seed
        self._grids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _grid(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The quadrature knots and weights, built once per device and dtype."""
        key = (device, dtype)
        if key not in self._grids:
            self._grids[key] = _sigreg_grid(self.t_max, self.knots, device, dtype)
        return self._grids[key]

    def forward(self, z: torch.Tensor, step: int) -> torch.Tensor:
        z3 = dist_lib.full_precision(_check_features(z))
        gen = step_generator(z3.device, self.seed, step, STREAM_DIRECTIONS)
        directions = random_directions(self.num_slices, z3.shape[-1], gen, z3.device)
        with torch.autocast(z3.device.type, enabled=False):
            t, w = self._grid(z3.device, z3.dtype)
            xt = (z3 @ directions.to(z3.dtype).t()).unsqueeze(-1) * t  # (V, B_local, N, T)
            moments = torch.stack([xt.cos().sum(1), xt.sin().sum(1)])  # one all-reduce for both
            moments = dist_lib.all_reduce_sum(moments)
            n = z3.shape[1] * dist_lib.world_size()
            return _sigreg_from_moments(moments[0] / n, moments[1] / n, t, w, n)


def create_regularizer(cfg) -> nn.Module:
    """The regularizer a resolved TrialConfig asks for."""
    loss, tgt, seed = cfg.loss, cfg.target, cfg.system.seed
    if loss.regularizer == "sigreg":
        return SIGReg(loss.num_slices, t_max=loss.t_max, knots=loss.knots, seed=seed)
    return RDMReg(loss.num_slices, target=tgt.target, p=tgt.p, mu=tgt.mu, sigma=tgt.sigma, seed=seed)
