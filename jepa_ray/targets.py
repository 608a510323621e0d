"""Target distributions of the JEPA regularizer: Gaussian, generalized Gaussian GN_p(μ, σ) and
rectified generalized Gaussian ReLU(GN_p(μ, σ)) (see docs/design.md, "The method").

GN_p(μ, σ) has density ∝ exp(-|x - μ|^p / (p σ^p)); it equals
scipy.stats.gennorm(beta=p, loc=μ, scale=σ·p^(1/p)). Writing X = μ + a·W with a = σ·p^(1/p),
W is standard gennorm: symmetric, with |W|^p ~ Gamma(1/p, 1). All closed forms below follow
from that representation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import scipy.optimize
import scipy.special

from jepa_ray import lazy

if TYPE_CHECKING:
    import torch
else:
    torch = lazy.module("torch", __name__)  # a config resolves without torch; sampling loads it

# Gamma(k/2) up to this shape is drawn exactly as a sum of exponentials (p = 1, 1/2, 2/3, 1/3,
# 2/5, 1/4, ...): cheaper than rejection and free of GPU syncs.
_MAX_EXACT_GAMMA_SHAPE = 6.0
# A Marsaglia–Tsang proposal is accepted with probability > 0.95: with 8 proposals per
# rejected draw a repair pass leaves a draw unfilled with probability < 1e-10, and the bound
# on passes is never reached unless the random source is broken.
_REPAIR_PROPOSALS = 8
_MAX_REJECTION_PASSES = 64
# Search range of log σ in sigma_unit_variance: σ² stays far from float64 overflow.
_LOG_SIGMA_BOUND = 300.0


def _validate(
    p: float | None = None,
    mu: float | None = None,
    sigma: float | None = None,
    kind: str | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Raise ValueError naming the first bad parameter (None means: not given, not checked)."""
    if kind is not None and kind not in TARGETS:
        raise ValueError(f"kind={kind!r} is not allowed: kind must be one of {', '.join(TARGETS)}")
    if p is not None and not (math.isfinite(p) and p > 0):
        raise ValueError(f"p={p!r} is not allowed: p must be a finite number > 0")
    if mu is not None and not math.isfinite(mu):
        raise ValueError(f"mu={mu!r} is not allowed: mu must be a finite number")
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma={sigma!r} is not allowed: sigma must be a finite number > 0")
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype={dtype} is not allowed: dtype must be a floating-point dtype")


def sigma_gn(p: float) -> float:
    """σ for which GN_p(μ, σ) has unit variance (the default scale of the LpJEPA targets)."""
    _validate(p=p)
    # Var GN_p(0, σ) = σ² p^(2/p) Γ(3/p) / Γ(1/p); log-gamma keeps small p finite.
    log_sigma = 0.5 * (math.lgamma(1.0 / p) - math.lgamma(3.0 / p)) - math.log(p) / p
    return math.exp(log_sigma)


def _resolve_sigma(p: float, sigma: float | None) -> float:
    return sigma_gn(p) if sigma is None else float(sigma)


def _exp(x: float) -> float:
    """exp that saturates to inf where math.exp would raise OverflowError."""
    return math.exp(x) if x < 709.0 else math.inf


def _abs_pow(x: float, p: float) -> float:
    """|x|^p without OverflowError (inf) for any finite x and p > 0."""
    return 0.0 if x == 0.0 else _exp(p * math.log(abs(x)))


def expected_l0_density(p: float, mu: float, sigma: float | None = None) -> float:
    """P(ReLU(X) != 0) = P(X > 0) for X ~ GN_p(μ, σ): the ℓ0 density a perfectly matched
    rectified representation has (σ None: σ_GN(p))."""
    _validate(p=p, mu=mu, sigma=sigma)
    sigma = _resolve_sigma(p, sigma)
    z = mu / sigma
    # Φ_GN(z) = ½(1 + sgn(z)·P(1/p, |z|^p / p)), P the regularized lower incomplete gamma; below
    # z = 0 it is ½·Q(1/p, |z|^p / p) with Q = 1 - P computed directly, which keeps its relative
    # precision at densities far below 1e-9 (1 - P would cancel every digit there).
    x = _abs_pow(z, p) / p
    if z < 0:
        return 0.5 * float(scipy.special.gammaincc(1.0 / p, x))
    return 0.5 * (1.0 + float(scipy.special.gammainc(1.0 / p, x)))


def mu_for_density(p: float, density: float, sigma: float | None = None) -> float:
    """The μ whose ReLU(GN_p(μ, σ)) has expected ℓ0 density `density` in (0, 1): the inverse of
    expected_l0_density in μ (σ None: σ_GN(p)).

    From Φ_GN(m) = ½(1 + sgn(m)·P(1/p, |m|^p / p)), m = μ/σ: the upper tail Q = 1 - P equals
    2·min(d, 1 - d), so |m| = (p · Q⁻¹(1/p, 2·min(d, 1 - d)))^(1/p) (Q⁻¹ the inverse regularized
    upper incomplete gamma, accurate near both ends), negative below d = ½."""
    _validate(p=p, sigma=sigma)
    if not (isinstance(density, (int, float)) and 0.0 < density < 1.0):
        raise ValueError(f"density={density!r} is not allowed: an l0 density in (0, 1)")
    sigma = _resolve_sigma(p, sigma)
    if density == 0.5:
        return 0.0
    x = float(scipy.special.gammainccinv(1.0 / p, 2.0 * min(density, 1.0 - density)))
    m = _exp(math.log(p * x) / p) if x > 0 else 0.0
    return math.copysign(m, density - 0.5) * sigma


def _scaled_upper_partial_moment(k: int, p: float, log_a: float, log_t: float) -> float:
    """a^k · E[|W|^k · 1{|W| > t}] = a^k Γ((k+1)/p, t^p) / Γ(1/p) for standard gennorm W.

    The scale a^k is folded into the log-gamma ratio: each alone overflows for small p
    while their product (a moment of X) is moderate.
    """
    s = (k + 1) / p
    tail = 1.0 if log_t == -math.inf else float(scipy.special.gammaincc(s, _exp(p * log_t)))
    return _exp(k * log_a + math.lgamma(s) - math.lgamma(1.0 / p)) * tail


def rectified_moments(p: float, mu: float, sigma: float | None = None) -> tuple[float, float]:
    """Closed-form (mean, variance) of Y = ReLU(X), X ~ GN_p(μ, σ) (σ None: σ_GN(p))."""
    _validate(p=p, mu=mu, sigma=sigma)
    sigma = _resolve_sigma(p, sigma)
    # X = μ + a·W, a = σ p^(1/p); Y > 0 exactly when W > c = -μ/a, and t = |c|.
    log_a = math.log(sigma) + math.log(p) / p
    log_t = -math.inf if mu == 0.0 else math.log(abs(mu)) - log_a
    m0, m1, m2 = (_scaled_upper_partial_moment(k, p, log_a, log_t) for k in range(3))
    if mu < 0:
        # Only the tail W > t survives: E[Y^k] = ½ a^k E[(|W| - t)^k 1{|W| > t}], a·t = -μ.
        mean = 0.5 * (m1 + mu * m0)
        second = 0.5 * (m2 + 2.0 * mu * m1 + mu * (mu * m0))
        return mean, max(second - mean * mean, 0.0)
    # μ >= 0: centre at μ (D = Y - μ) so that a large μ/σ does not cancel digits.
    # D = a·W on W > -t and -μ below; P(W <= -t) = ½m0 and, by symmetry of W,
    # E[aW 1{W > -t}] = ½m1 and E[(aW)² 1{W > -t}] = Var(aW) - ½m2.
    var_x = _exp(2.0 * log_a + math.lgamma(3.0 / p) - math.lgamma(1.0 / p))
    below = 0.5 * m0
    d_mean = 0.5 * m1 - mu * below
    d_second = var_x - 0.5 * m2 + mu * (mu * below)
    return mu + d_mean, max(d_second - d_mean * d_mean, 0.0)


def sigma_unit_variance(p: float, mu: float) -> float:
    """σ for which ReLU(GN_p(μ, σ)) has unit variance (the reference code's alternative scale).

    Var(ReLU(μ + σV)) grows monotonically from 0 to ∞ in σ, so the root is unique; it is
    bracketed by expanding around σ_GN(p) in log σ.
    """
    _validate(p=p, mu=mu)

    def excess(log_sigma: float) -> float:
        return rectified_moments(p, mu, math.exp(log_sigma))[1] - 1.0

    lo = hi = math.log(sigma_gn(p))
    while excess(lo) > 0.0 and lo > -_LOG_SIGMA_BOUND:
        lo -= 2.0
    while excess(hi) < 0.0 and hi < _LOG_SIGMA_BOUND:
        hi += 2.0
    if not excess(lo) <= 0.0 <= excess(hi):
        raise ValueError(
            f"sigma_unit_variance(p={p!r}, mu={mu!r}): no sigma in "
            f"[e^-{_LOG_SIGMA_BOUND:g}, e^{_LOG_SIGMA_BOUND:g}] gives the rectified "
            "variable unit variance; use a smaller |mu| or a larger p"
        )
    if lo == hi:
        return math.exp(lo)
    return math.exp(scipy.optimize.brentq(excess, lo, hi, xtol=1e-13, rtol=1e-13))


def _marsaglia_tsang_proposals(
    d: float, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposals log(d·v) of Gamma(d + 1/3, 1) and whether Marsaglia–Tsang accepts each."""
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    log_u = torch.rand(shape, generator=generator, device=device, dtype=dtype).log_()
    v = (x * (1.0 / math.sqrt(9.0 * d))).add_(1.0).pow_(3)
    log_v = v.log()  # NaN or -inf where v <= 0: the comparison below then rejects
    bound = x.square_().mul_(0.5).add_(d).sub_(v, alpha=d).add_(log_v, alpha=d)
    return log_v.add_(math.log(d)), log_u < bound


def _log_standard_gamma(
    shape: float, n: int, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """log of n draws of Gamma(shape, 1), shape >= 1.

    torch._standard_gamma takes no generator; this draws only through torch.randn/torch.rand
    so that a seeded generator reproduces the samples on any device. The log is returned
    because the power (p·G)^(1/p) needs it (and the rejection test computes it anyway).
    """
    if (2.0 * shape).is_integer() and shape <= _MAX_EXACT_GAMMA_SHAPE:
        return _log_gamma_half_integer(shape, n, generator, device, dtype)
    return _log_gamma_rejection(shape, n, generator, device, dtype)


def _log_gamma_half_integer(
    shape: float, n: int, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """log Gamma(k/2, 1) without rejection (so without a GPU sync): a sum of ⌊shape⌋
    exponentials -log(1 - U), plus Z²/2 (a χ²₁/2) for the half."""
    k = int(shape)
    u = torch.rand((k, n), generator=generator, device=device, dtype=dtype)
    g = u.neg_().add_(1.0).log_().sum(dim=0).neg_()
    if shape != k:
        g.add_(torch.randn(n, generator=generator, device=device, dtype=dtype).square_(), alpha=0.5)
    return g.log_()


def _log_gamma_rejection(
    shape: float, n: int, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """log Gamma(shape, 1), shape >= 1, by Marsaglia–Tsang rejection.

    One proposal per draw first; the few rejected draws (< 5%) then get _REPAIR_PROPOSALS
    proposals each and keep the first accepted one (the sequential sampler's choice), so that
    a GPU synchronizes on the rejected count about twice per call instead of once per pass.
    """
    d = shape - 1.0 / 3.0
    log_g, accept = _marsaglia_tsang_proposals(d, (n,), generator, device, dtype)
    todo = (~accept).nonzero().squeeze(1)
    for _ in range(_MAX_REJECTION_PASSES):
        if todo.numel() == 0:
            return log_g
        log_draw, accept = _marsaglia_tsang_proposals(d, (todo.numel(), _REPAIR_PROPOSALS), generator, device, dtype)
        first = accept.to(torch.uint8).argmax(dim=1, keepdim=True)  # first accepted, if any
        log_g[todo] = log_draw.gather(1, first).squeeze(1)
        todo = todo[~accept.any(dim=1)]
    raise RuntimeError(
        f"gamma sampler: {todo.numel()} of {n} draws still rejected after "
        f"{_MAX_REJECTION_PASSES} passes (shape={shape})"
    )


def _standard_gn(
    p: float, n: int, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """n draws of GN_p(0, 1): s·(p·G)^(1/p), s = ±1 with probability ½, G ~ Gamma(1/p, 1)."""
    if p == 2.0:
        return torch.randn(n, generator=generator, device=device, dtype=dtype)
    shape = 1.0 / p
    if shape >= 1.0:
        log_g = _log_standard_gamma(shape, n, generator, device, dtype)
        magnitude = log_g.add_(math.log(p)).div_(p).exp_()
    else:
        # Gamma(a) = Gamma(a + 1)·U^(1/a) for a < 1; raised to 1/p = a this is
        # (p·Gamma(a + 1))^a·U, which cannot underflow the way U^(1/a) does for large p.
        log_g = _log_standard_gamma(shape + 1.0, n, generator, device, dtype)
        u = torch.rand(n, generator=generator, device=device, dtype=dtype)
        magnitude = log_g.add_(math.log(p)).mul_(shape).exp_().mul_(u)
    sign = torch.rand(n, generator=generator, device=device, dtype=dtype).sub_(0.5)  # < 0 w.p. ½
    return torch.copysign(magnitude, sign)


def rectify(x: torch.Tensor) -> torch.Tensor:
    """ReLU: the map from GN_p samples to the rectified (RGG) target."""
    return torch.relu(x)


def _shape_tuple(shape: int | Sequence[int] | torch.Size) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in dims):
        raise ValueError(f"shape={shape!r} is not allowed: shape must be non-negative ints")
    return dims


def sample(
    kind: str,
    shape: int | Sequence[int] | torch.Size,
    *,
    p: float = 1.0,
    mu: float = 0.0,
    sigma: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Fresh samples of a registered target, of the given shape.

    kind: "gaussian" (N(0, 1), LeJEPA's target; p, mu and sigma are validated, not used), "gn"
    (GN_p(μ, σ), LpJEPA), "rgg" (ReLU(GN_p(μ, σ)), Rectified LpJEPA) or any registered target.
    σ None: σ_GN(p). Random numbers are drawn on the generator's device (else on `device`), in
    float32 (float64 when dtype is float64), then moved to `device` and cast to `dtype`
    (default: torch's).
    """
    _validate(p=p, mu=mu, sigma=sigma, kind=kind, dtype=dtype)
    dims = _shape_tuple(shape)
    out_dtype = torch.get_default_dtype() if dtype is None else dtype
    work_dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    out_device = (
        torch.device(device)
        if device is not None
        else (generator.device if generator is not None else torch.device("cpu"))
    )
    draw_device = generator.device if generator is not None else out_device
    x = TARGETS[kind].draw(math.prod(dims), p, mu, _resolve_sigma(p, sigma), generator, draw_device, work_dtype)
    return x.reshape(dims).to(device=out_device, dtype=out_dtype)


# --------------------------------------------------------------------------------------------
# The target registry: what the rest of the package asks of a target, declared once.

Draw = Callable[[int, float, float, float, "torch.Generator | None", "torch.device", "torch.dtype"], "torch.Tensor"]
"""(n, p, mu, sigma, generator, device, dtype) -> n flat samples."""


@dataclass(frozen=True)
class Target:
    """A target distribution of the regularizer, with everything the config, the model, the
    guard and the evaluation need to know of it."""

    name: str
    doc: str
    rectified: bool
    """Samples pass a ReLU: the projector ends in one, z is sparse and non-negative, and the
    closed-form l0 density is its knob (`target_density` solves mu from it; the collapse guard
    watches z's density against it)."""
    shaped: bool
    """p, mu and sigma parametrize it (False: a fixed N(0, 1); configs resolve p 2, mu 0, sigma 1)."""
    regularizers: tuple[str, ...]
    """The regularizers that can pull z toward it (SIGReg tests against N(0, 1) only)."""
    draw: Draw
    l0_density: Callable[[float, float, float], float]
    """(p, mu, sigma) -> expected fraction of non-zero coordinates (1 for a continuous target)."""
    moments: Callable[[float, float, float], tuple[float, float]]
    """(p, mu, sigma) -> (mean, variance) of one coordinate."""
    unit_variance_sigma: Callable[[float, float], float] = lambda p, mu: sigma_gn(p)
    """(p, mu) -> the sigma giving one coordinate unit variance (config sigma_mode=unit_var)."""
    mu_for_density: Callable[[float, float, float], float] | None = None
    """(p, density, sigma) -> the mu whose l0 density is `density` (the inverse of l0_density in
    mu; config target_density): None where the target has no density knob."""

    def default_sigma(self, p: float, mu: float, sigma_mode: str) -> float:
        """The sigma a config with sigma = 0 resolves to."""
        if not self.shaped:
            return 1.0
        return self.unit_variance_sigma(p, mu) if sigma_mode == "unit_var" else sigma_gn(p)


TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    """Add a target to the registry (a new target is this call: configs, the model, the
    regularizers, the guard and the evaluation all read the registry)."""
    if target.name in TARGETS:
        raise ValueError(f"target {target.name!r} is already registered")
    TARGETS[target.name] = target
    return target


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise ValueError(f"target={name!r} is not allowed: one of {', '.join(TARGETS)}")
    return TARGETS[name]


def _gn_variance(p: float, sigma: float) -> float:
    return _exp(2.0 * (math.log(sigma) + math.log(p) / p) + math.lgamma(3.0 / p) - math.lgamma(1.0 / p))


def _draw_gn(n, p, mu, sigma, generator, device, dtype) -> torch.Tensor:
    return _standard_gn(p, n, generator, device, dtype).mul_(sigma).add_(mu)


register_target(
    Target(
        name="gaussian",
        doc="N(0, 1) in every coordinate: LeJEPA's isotropic Gaussian (dense).",
        rectified=False,
        shaped=False,
        regularizers=("rdmreg", "sigreg"),
        draw=lambda n, p, mu, sigma, generator, device, dtype: torch.randn(
            n, generator=generator, device=device, dtype=dtype
        ),
        l0_density=lambda p, mu, sigma: 1.0,
        moments=lambda p, mu, sigma: (0.0, 1.0),
    )
)
register_target(
    Target(
        name="gn",
        doc="The generalized Gaussian GN_p(mu, sigma): LpJEPA's target (dense).",
        rectified=False,
        shaped=True,
        regularizers=("rdmreg",),
        draw=_draw_gn,
        l0_density=lambda p, mu, sigma: 1.0,
        moments=lambda p, mu, sigma: (mu, _gn_variance(p, sigma)),
    )
)
register_target(
    Target(
        name="rgg",
        doc="ReLU(GN_p(mu, sigma)): Rectified LpJEPA's sparse, non-negative target.",
        rectified=True,
        shaped=True,
        regularizers=("rdmreg",),
        draw=lambda n, p, mu, sigma, generator, device, dtype: rectify(
            _draw_gn(n, p, mu, sigma, generator, device, dtype)
        ),
        l0_density=expected_l0_density,
        moments=rectified_moments,
        unit_variance_sigma=sigma_unit_variance,
        mu_for_density=mu_for_density,
    )
)

TARGET_KINDS = tuple(TARGETS)
"""The built-in targets (the registry may hold more)."""
