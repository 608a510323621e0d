"""Target distributions checked against scipy (gennorm, numerical integration) and Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch

from jepa_ray import targets

P_VALUES = (0.5, 1.0, 1.5, 2.0, 3.0)


def _gennorm(p: float, mu: float, sigma: float | None = None):
    """The scipy reference for GN_p(μ, σ) (docs/design.md's parametrization)."""
    sigma = targets.sigma_gn(p) if sigma is None else sigma
    return scipy.stats.gennorm(beta=p, loc=mu, scale=sigma * p ** (1.0 / p))


def _draw(kind: str, n: int, seed: int, **kw) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return targets.sample(kind, (n,), generator=gen, dtype=torch.float64, **kw).numpy()


def _quad_rectified_moments(p: float, mu: float, sigma: float | None = None) -> tuple[float, float]:
    """Mean and variance of ReLU(X) by numerical integration of the gennorm density."""
    pdf = _gennorm(p, mu, sigma).pdf
    # Split at the mode so that quad sees the density's cusp (p <= 1) at an endpoint.
    pieces = [(0.0, mu), (mu, math.inf)] if mu > 0 else [(0.0, math.inf)]

    def integral(k: int) -> float:
        return sum(
            scipy.integrate.quad(lambda x: x**k * pdf(x), a, b, limit=400, epsabs=1e-14, epsrel=1e-12)[0]
            for a, b in pieces
        )

    m1, m2 = integral(1), integral(2)
    return m1, m2 - m1 * m1


def test_sigma_gn_known_values():
    assert targets.sigma_gn(1.0) == pytest.approx(1.0 / math.sqrt(2.0), rel=1e-14)
    assert targets.sigma_gn(2.0) == pytest.approx(1.0, rel=1e-14)


@pytest.mark.parametrize("p", (0.05, 0.3, 0.5, 1.0, 1.5, 2.0, 3.0, 8.0))
def test_sigma_gn_gives_unit_variance(p):
    assert _gennorm(p, 0.0).var() == pytest.approx(1.0, rel=1e-10)


@pytest.mark.parametrize("p", (0.5, 1.0, 3.0))
def test_sample_variance_is_one_at_sigma_gn(p):
    n = 200_000
    x = _draw("gn", n, seed=11, p=p)
    # s.e. of the sample variance: sqrt((μ4 - σ⁴) / n), μ4 = 3 + excess kurtosis at σ² = 1.
    kurtosis = 3.0 + float(_gennorm(p, 0.0).stats(moments="k"))
    assert abs(x.var() - 1.0) < 4.0 * math.sqrt((kurtosis - 1.0) / n)


@pytest.mark.parametrize(
    "p, mu, expected",
    [(1.0, -1.0, 0.122), (2.0, -1.0, 0.159), (0.5, -2.0, 0.026), (1.0, 0.0, 0.5), (0.5, 0.0, 0.5), (3.0, 0.0, 0.5)],
)
def test_expected_l0_density_design_examples(p, mu, expected):
    assert round(targets.expected_l0_density(p, mu), 3) == expected


@pytest.mark.parametrize("p", (0.3, 0.5, 1.0, 2.0, 3.0))
@pytest.mark.parametrize("mu", (-3.0, -1.0, -0.2, 0.0, 0.5, 2.0))
@pytest.mark.parametrize("sigma", (None, 0.4, 2.0))
def test_expected_l0_density_is_gennorm_survival_at_zero(p, mu, sigma):
    assert targets.expected_l0_density(p, mu, sigma) == pytest.approx(
        _gennorm(p, mu, sigma).sf(0.0), rel=1e-10, abs=1e-14
    )


@pytest.mark.parametrize("p", (0.5, 1.0, 2.0))
@pytest.mark.parametrize("mu", (-2.0, -1.0, 0.0, 0.5))
def test_rgg_sample_l0_density_matches_closed_form(p, mu):
    n = 100_000
    y = _draw("rgg", n, seed=3, p=p, mu=mu)
    expected = targets.expected_l0_density(p, mu)
    se = math.sqrt(expected * (1.0 - expected) / n)
    assert abs(np.count_nonzero(y) / n - expected) < 4.0 * se


@pytest.mark.parametrize("p", P_VALUES + (0.1, 0.8, 20.0))
@pytest.mark.parametrize("mu", (-1.0, 0.5))
def test_gn_samples_match_scipy_gennorm(p, mu):
    x = _draw("gn", 20_000, seed=7, p=p, mu=mu)
    assert scipy.stats.kstest(x, _gennorm(p, mu).cdf).pvalue > 1e-3


@pytest.mark.parametrize("shape", (1.0, 1.25, 1.5, 2.0, 2.5, 4.0, 7.5, 10.0))
@pytest.mark.parametrize("sampler", ("_log_standard_gamma", "_log_gamma_rejection"))
def test_gamma_draws_match_scipy_gamma(sampler, shape):
    """Both Gamma paths (exact sums of exponentials, Marsaglia–Tsang with repair passes)."""
    gen = torch.Generator().manual_seed(8)
    log_g = getattr(targets, sampler)(shape, 20_000, gen, torch.device("cpu"), torch.float64)
    assert scipy.stats.kstest(log_g.exp().numpy(), scipy.stats.gamma(shape).cdf).pvalue > 1e-3


@pytest.mark.parametrize("p", (0.5, 3.0))
def test_gn_samples_with_explicit_sigma_float32(p):
    gen = torch.Generator().manual_seed(5)
    x = targets.sample("gn", (20_000,), p=p, mu=0.3, sigma=2.5, generator=gen)
    assert x.dtype == torch.float32
    assert scipy.stats.kstest(x.double().numpy(), _gennorm(p, 0.3, 2.5).cdf).pvalue > 1e-3


def test_gaussian_is_standard_normal_whatever_p_mu_sigma():
    x = _draw("gaussian", 20_000, seed=2, p=0.5, mu=-2.0, sigma=3.0)
    assert scipy.stats.kstest(x, scipy.stats.norm().cdf).pvalue > 1e-3
    assert abs(x.mean()) < 4.0 / math.sqrt(x.size)
    assert (x < 0).any()


def test_gn_has_negatives_and_rgg_is_its_rectification():
    gn = _draw("gn", 10_000, seed=9, p=1.0, mu=0.5)
    rgg = _draw("rgg", 10_000, seed=9, p=1.0, mu=0.5)
    assert (gn < 0).any()
    assert (rgg >= 0).all() and (rgg == 0).any()
    np.testing.assert_array_equal(rgg, np.maximum(gn, 0.0))


def test_rectify_is_relu():
    x = torch.tensor([-2.0, -0.0, 0.0, 0.5, 3.0])
    assert torch.equal(targets.rectify(x), torch.tensor([0.0, 0.0, 0.0, 0.5, 3.0]))


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("mu", (-3.0, -1.0, 0.0, 0.5, 2.0))
def test_rectified_moments_match_numerical_integration(p, mu):
    mean, var = targets.rectified_moments(p, mu)
    ref_mean, ref_var = _quad_rectified_moments(p, mu)
    assert mean == pytest.approx(ref_mean, rel=1e-7, abs=1e-12)
    assert var == pytest.approx(ref_var, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("p, mu, sigma", [(0.7, -0.5, 1.3), (2.5, 1.0, 0.2), (1.0, 4.0, 0.5)])
def test_rectified_moments_with_explicit_sigma(p, mu, sigma):
    mean, var = targets.rectified_moments(p, mu, sigma)
    ref_mean, ref_var = _quad_rectified_moments(p, mu, sigma)
    assert mean == pytest.approx(ref_mean, rel=1e-7, abs=1e-12)
    assert var == pytest.approx(ref_var, rel=1e-7, abs=1e-12)


def _assert_moments_match_samples(y: np.ndarray, mean: float, var: float) -> None:
    """Sample mean and variance within 4 standard errors of (mean, var)."""
    n = y.size
    centred = y - y.mean()
    fourth = float(np.mean(centred**4))
    assert abs(y.mean() - mean) < 4.0 * math.sqrt(var / n)
    assert abs(y.var() - var) < 4.0 * math.sqrt(max(fourth - var * var, 0.0) / n)


@pytest.mark.parametrize("p", (0.5, 1.0, 2.0, 3.0))
@pytest.mark.parametrize("mu", (-1.0, 0.0, 1.0))
def test_rectified_moments_match_monte_carlo(p, mu):
    y = _draw("rgg", 100_000, seed=13, p=p, mu=mu)
    _assert_moments_match_samples(y, *targets.rectified_moments(p, mu))


@pytest.mark.parametrize("p, mu", [(0.5, 50.0), (0.5, -30.0), (1.0, 10.0), (1.0, -10.0), (3.0, -4.0)])
def test_rectified_moments_far_tails_match_numerical_integration(p, mu):
    """Far from zero, where a careless formula cancels most of its digits."""
    moments, reference = targets.rectified_moments(p, mu), _quad_rectified_moments(p, mu)
    assert moments == pytest.approx(reference, rel=1e-9, abs=0.0)


def test_rectified_moments_limits():
    # Far right of zero ReLU does nothing; far left it kills everything.
    for p in (0.5, 1.0, 2.0):
        assert targets.rectified_moments(p, 500.0) == pytest.approx((500.0, 1.0), rel=1e-12)
        mean, var = targets.rectified_moments(p, -500.0, 0.5)
        assert 0.0 <= mean < 1e-10 and 0.0 <= var < 1e-10


@pytest.mark.parametrize("p", (0.5, 1.0, 2.0, 3.0))
@pytest.mark.parametrize("mu", (-3.0, -1.0, 0.0, 0.5, 2.0))
def test_sigma_unit_variance_gives_unit_rectified_variance(p, mu):
    sigma = targets.sigma_unit_variance(p, mu)
    assert sigma > 0
    assert targets.rectified_moments(p, mu, sigma)[1] == pytest.approx(1.0, rel=1e-10)
    assert _quad_rectified_moments(p, mu, sigma)[1] == pytest.approx(1.0, rel=1e-7)


@pytest.mark.parametrize("p, mu", [(0.5, -1.0), (2.0, 0.5)])
def test_sigma_unit_variance_monte_carlo(p, mu):
    sigma = targets.sigma_unit_variance(p, mu)
    y = _draw("rgg", 100_000, seed=17, p=p, mu=mu, sigma=sigma)
    _assert_moments_match_samples(y, *targets.rectified_moments(p, mu, sigma))
    assert abs(y.var() - 1.0) < 0.05


@pytest.mark.parametrize("p", (0.5, 1.0, 2.0, 4.0))
@pytest.mark.parametrize("mu", (-3.0, 0.0, 0.5, 5.0))
def test_rectified_variance_increases_with_sigma(p, mu):
    """The monotonicity that makes sigma_unit_variance's root unique."""
    variances = np.array([targets.rectified_moments(p, mu, math.exp(t))[1] for t in np.linspace(-4, 4, 81)])
    steps = np.diff(variances)
    assert np.all(steps >= 0) and variances[-1] > 1.0 > variances[0]
    assert np.all(steps[variances[:-1] > 1e-250] > 0)  # strictly, wherever not underflowed


def test_sigma_unit_variance_without_root_raises():
    with pytest.raises(ValueError, match="sigma_unit_variance"):
        targets.sigma_unit_variance(2.0, -1e300)


@pytest.mark.parametrize("kind", targets.TARGET_KINDS)
@pytest.mark.parametrize("p", (0.5, 1.0, 2.0, 3.0))
def test_same_seed_same_samples(kind, p):
    def draw(seed: int) -> torch.Tensor:
        return targets.sample(kind, (64, 32), p=p, mu=-0.5, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    gen = torch.Generator().manual_seed(0)
    first = targets.sample(kind, (64, 32), p=p, mu=-0.5, generator=gen)
    assert not torch.equal(first, targets.sample(kind, (64, 32), p=p, mu=-0.5, generator=gen))


@pytest.mark.parametrize("p", (0.5, 1.0, 3.0))
def test_dtypes(p):
    def draw(dtype: torch.dtype | None) -> torch.Tensor:
        return targets.sample("rgg", (128,), p=p, mu=-0.5, dtype=dtype, generator=torch.Generator().manual_seed(4))

    assert draw(None).dtype == torch.get_default_dtype()
    assert draw(torch.float64).dtype == torch.float64
    # bfloat16 is drawn in float32 and only rounded at the end.
    bf16 = draw(torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert torch.equal(bf16, draw(torch.float32).to(torch.bfloat16))


def test_shapes():
    gen = torch.Generator().manual_seed(0)
    assert targets.sample("gn", (3, 4, 5), generator=gen).shape == (3, 4, 5)
    assert targets.sample("gn", torch.Size([7, 2]), generator=gen).shape == (7, 2)
    assert targets.sample("rgg", [6], generator=gen).shape == (6,)
    assert targets.sample("gaussian", 9, generator=gen).shape == (9,)
    assert targets.sample("gn", (0, 5), p=0.5, generator=gen).shape == (0, 5)
    with pytest.raises(ValueError, match=r"^shape="):
        targets.sample("gn", (3, -1))


def test_cpu_device_arguments():
    for device in ("cpu", torch.device("cpu")):
        x = targets.sample("rgg", (4, 4), device=device, generator=torch.Generator(device="cpu").manual_seed(1))
        assert x.device.type == "cpu"
    assert targets.sample("gn", (4,), p=0.5).device.type == "cpu"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("p", (0.5, 1.0, 2.0, 3.0))
def test_cuda_generator_decides_where_numbers_are_drawn(p):
    def draw(device: str | None) -> torch.Tensor:
        gen = torch.Generator(device="cuda").manual_seed(21)
        return targets.sample("gn", (20_000,), p=p, mu=0.5, generator=gen, device=device)

    on_gpu = draw(None)
    assert on_gpu.device.type == "cuda"
    assert torch.equal(draw("cpu"), on_gpu.cpu())  # same stream, moved afterwards
    assert torch.equal(draw("cuda"), on_gpu)
    x = on_gpu.double().cpu().numpy()
    assert scipy.stats.kstest(x, _gennorm(p, 0.5).cdf).pvalue > 1e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_without_generator():
    x = targets.sample("rgg", (256, 512), p=0.5, mu=-1.0, device="cuda", dtype=torch.bfloat16)
    assert x.device.type == "cuda" and x.dtype == torch.bfloat16
    assert (x >= 0).all()


# --------------------------------------------------------------------------------------------
# The inverse: mu from the wanted density


@pytest.mark.parametrize("p", [0.25, 0.5, 1.0, 1.5, 2.0, 3.0])
def test_mu_for_density_inverts_the_closed_form(p):
    for density in (1e-6, 1e-4, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.9999, 1 - 1e-6):
        mu = targets.mu_for_density(p, density)
        assert targets.expected_l0_density(p, mu) == pytest.approx(density, abs=1e-6), (p, density)
        sigma = targets.sigma_gn(p)
        ref = scipy.stats.gennorm(beta=p, loc=mu, scale=sigma * p ** (1 / p)).sf(0.0)
        assert ref == pytest.approx(density, abs=1e-6, rel=1e-6)
    assert targets.mu_for_density(p, 0.5) == 0.0
    assert targets.mu_for_density(p, 0.2, sigma=2.0) == pytest.approx(
        2.0 / targets.sigma_gn(p) * targets.mu_for_density(p, 0.2)
    )


@pytest.mark.parametrize("density", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_mu_for_density_refuses_densities_outside_0_1(density):
    with pytest.raises(ValueError, match="density"):
        targets.mu_for_density(1.0, density)
