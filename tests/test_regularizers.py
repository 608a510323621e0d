"""RDMReg, SIGReg, invariance and the total loss against independent references: brute-force
loops with numpy sorts, scipy quadrature of the Epps-Pulley integral, closed-form moments and
finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import torch

from jepa_ray import regularizers as R
from jepa_ray import seeding, targets


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit_directions(num: int, dim: int, seed: int) -> np.ndarray:
    d = np.random.default_rng(seed).standard_normal((num, dim))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# RDMReg


def _rdmreg_brute(z: np.ndarray, y: np.ndarray, directions: np.ndarray) -> float:
    """Sliced squared W2 written out: for each view and direction, sort both projections and
    average the squared differences of the order statistics."""
    z3, y3 = (z[None], y[None]) if z.ndim == 2 else (z, y)
    total = 0.0
    for v in range(z3.shape[0]):
        for c in directions:
            pz = np.sort(z3[v] @ c)
            py = np.sort(y3[v] @ c)
            total += float(np.mean((pz - py) ** 2))
    return total / (z3.shape[0] * len(directions))


@pytest.mark.parametrize("shape", [(7, 3), (9, 5), (3, 6, 4)])
def test_rdmreg_equals_brute_force(shape):
    rng = np.random.default_rng(1)
    z = rng.standard_normal(shape)
    y = np.maximum(rng.laplace(-0.5, 1.0, size=shape), 0.0)
    dirs = _unit_directions(11, shape[-1], seed=2)
    got = R.rdmreg(torch.from_numpy(z), torch.from_numpy(y), torch.from_numpy(dirs))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_rdmreg_brute(z, y, dirs), rel=1e-12, abs=1e-14)


def test_rdmreg_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    z = torch.from_numpy(rng.standard_normal((2, 6, 3))).requires_grad_(True)
    y = torch.from_numpy(rng.standard_normal((2, 6, 3)))
    dirs = torch.from_numpy(_unit_directions(5, 3, seed=4))
    assert torch.autograd.gradcheck(lambda x: R.rdmreg(x, y, dirs), (z,), eps=1e-6, atol=1e-8)


def test_rdmreg_is_small_on_target_samples_and_large_on_a_collapsed_batch():
    p, mu, shape = 1.0, -1.0, (4096, 16)
    z = targets.sample("rgg", shape, p=p, mu=mu, generator=_gen(0), dtype=torch.float64)
    y = targets.sample("rgg", shape, p=p, mu=mu, generator=_gen(1), dtype=torch.float64)
    dirs = torch.from_numpy(_unit_directions(128, shape[1], seed=5))
    matched = R.rdmreg(z, y, dirs).item()
    # Every row equal to the target mean: along a unit direction c the order statistics of the
    # target are matched to the constant c.m, so the loss is the projected variance, which for
    # independent coordinates is Var(ReLU(GN_p)) whatever c is.
    mean, var = targets.rectified_moments(p, mu)
    collapsed = R.rdmreg(torch.full(shape, mean, dtype=torch.float64), y, dirs).item()
    assert collapsed == pytest.approx(var, rel=0.1)
    assert matched < 0.02 * collapsed


def test_rdmreg_gradient_equals_autograd_through_sort():
    """The hand-written backward against autograd of the formula written with torch.sort."""
    z = torch.randn(3, 40, 7, dtype=torch.float64, generator=_gen(5), requires_grad=True)
    y = torch.randn(3, 40, 7, dtype=torch.float64, generator=_gen(6))
    dirs = torch.from_numpy(_unit_directions(13, 7, seed=7))
    (grad,) = torch.autograd.grad(R.rdmreg(z, y, dirs), z)
    proj = z @ dirs.t()
    ref = (torch.sort(proj, dim=1).values - torch.sort(y @ dirs.t(), dim=1).values).square().mean()
    (ref_grad,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sorted_matches_torch_sort_with_ties(dtype):
    """The CPU sort (numpy for float32/64, torch otherwise) gives torch.sort's values, and its
    gradient gives each group of tied inputs the same total as torch.sort's does."""
    x = torch.randint(0, 5, (6, 2, 30), generator=_gen(8)).to(dtype).requires_grad_(True)
    w = torch.randn(6, 2, 30, generator=_gen(9)).to(dtype)
    (mine,) = torch.autograd.grad((R._sorted(x) * w).sum(), x)
    (ref,) = torch.autograd.grad((x.sort(dim=-1).values * w).sum(), x)
    torch.testing.assert_close(R._sorted(x.detach()), x.detach().sort(dim=-1).values, rtol=0, atol=0)
    for value in range(5):
        tied = x.detach() == value
        torch.testing.assert_close((mine * tied).sum(-1), (ref * tied).sum(-1))


def test_rdmreg_under_autocast_runs_in_the_input_dtype():
    z = torch.randn(16, 8, generator=_gen(1), requires_grad=True)
    y, dirs = torch.randn(16, 8, generator=_gen(2)), R.random_directions(32, 8, _gen(3))
    expected = R.rdmreg(z, y, dirs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = R.rdmreg(z, y, dirs)
    got.backward()
    assert got.dtype == torch.float32 and z.grad.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_rdmreg_target_branch_carries_no_gradient():
    z = torch.randn(8, 4, requires_grad=True)
    y = torch.randn(8, 4, requires_grad=True)
    R.rdmreg(z, y, R.random_directions(6, 4, _gen(0))).backward()
    assert z.grad is not None and y.grad is None


@pytest.mark.parametrize(
    "z_shape, y_shape, d_shape",
    [
        ((8, 4), (8, 5), (3, 4)),  # y does not match z
        ((8, 4), (8, 4), (3, 5)),  # directions of the wrong dimension
        ((8,), (8,), (3, 1)),  # features must be (B, D) or (V, B, D)
    ],
)
def test_rdmreg_rejects_bad_shapes(z_shape, y_shape, d_shape):
    with pytest.raises(ValueError, match="must have"):
        R.rdmreg(torch.randn(z_shape), torch.randn(y_shape), torch.randn(d_shape))


def test_random_directions_are_unit_and_seeded():
    a = R.random_directions(64, 10, _gen(7))
    assert a.shape == (64, 10) and a.dtype == torch.float32
    torch.testing.assert_close(a.norm(dim=1), torch.ones(64))
    torch.testing.assert_close(a, R.random_directions(64, 10, _gen(7)), rtol=0, atol=0)


@pytest.fixture
def one_thread():
    """torch on one thread: for many small ops, extra threads only add synchronisation (and
    on a shared CPU, spin-waiting against other processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_rdmreg_drives_relu_features_to_the_target_l0_density(one_thread):
    """A free tensor through a ReLU, pulled toward ReLU(GN_1(-1, 1/sqrt 2)) by the RDMReg
    module (fresh directions and target samples each step), ends with the target's fraction
    of non-zeros (0.122)."""
    torch.manual_seed(0)
    steps = 200
    w = torch.randn(512, 64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    # Units pushed below zero get no gradient again, so noise keeps killing units; the cosine
    # decay ends the walk once the distribution matches instead of letting density drift down.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    reg = R.RDMReg(128, target="rgg", p=1.0, mu=-1.0, seed=0)
    first = None
    for step in range(steps):
        loss = reg(torch.relu(w), step)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    density = (torch.relu(w) != 0).float().mean().item()
    expected = targets.expected_l0_density(1.0, -1.0)
    assert expected == pytest.approx(0.122, abs=5e-4)
    assert density == pytest.approx(expected, abs=0.03)
    assert loss.item() < 0.1 * first


# --------------------------------------------------------------------------------------------
# SIGReg


def _ep_integrand(x: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """B |phi_B(t) - exp(-t^2/2)|^2 exp(-t^2/2), phi_B the empirical characteristic function
    of the 1-D sample x, for each t."""
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    ecf = np.exp(1j * np.outer(t, x)).mean(axis=1)
    gauss = np.exp(-0.5 * t**2)
    return len(x) * np.abs(ecf - gauss) ** 2 * gauss


def _projections(z: np.ndarray, dirs: np.ndarray) -> list[np.ndarray]:
    z3 = z[None] if z.ndim == 2 else z
    return [z3[v] @ c for v in range(z3.shape[0]) for c in dirs]


def _sigreg_quad(z: np.ndarray, dirs: np.ndarray, t_max: float) -> float:
    vals = [
        scipy.integrate.quad(
            lambda t, x=x: _ep_integrand(x, t)[0], -t_max, t_max, limit=200, epsabs=1e-12, epsrel=1e-10
        )[0]
        for x in _projections(z, dirs)
    ]
    return float(np.mean(vals))


def _sigreg_full_trapezoid(z: np.ndarray, dirs: np.ndarray, t_max: float, knots: int) -> float:
    """Plain trapezoid on the full symmetric grid of 2*knots-1 points over [-t_max, t_max]."""
    ts = np.linspace(-t_max, t_max, 2 * knots - 1)
    return float(np.mean([np.trapezoid(_ep_integrand(x, ts), ts) for x in _projections(z, dirs)]))


def _trapezoid_error_bound(z: np.ndarray, dirs: np.ndarray, t_max: float, knots: int) -> float:
    """(b - a) h^2 / 12 * max|f''| (the composite trapezoid error bound), averaged over
    directions; f'' from second differences on a fine grid."""
    h = t_max / (knots - 1)
    fine = np.linspace(-t_max, t_max, 40001)
    step = fine[1] - fine[0]
    bounds = [
        2 * t_max * h**2 / 12 * np.abs(np.diff(_ep_integrand(x, fine), 2)).max() / step**2
        for x in _projections(z, dirs)
    ]
    return float(np.mean(bounds))


@pytest.mark.parametrize("shape, t_max, knots", [((128, 4), 3.0, 17), ((2, 96, 3), 4.0, 17), ((64, 5), 5.0, 33)])
@pytest.mark.parametrize("law", ["gaussian", "uniform"])
def test_sigreg_matches_the_epps_pulley_integral(shape, t_max, knots, law):
    rng = np.random.default_rng(11)
    z = rng.standard_normal(shape) if law == "gaussian" else rng.uniform(-math.sqrt(3), math.sqrt(3), shape)
    dirs = _unit_directions(3, shape[-1], seed=12)
    got = R.sigreg(torch.from_numpy(z), torch.from_numpy(dirs), t_max=t_max, knots=knots).item()
    # Same knots as our half grid mirrored: equal up to float64 rounding.
    assert got == pytest.approx(_sigreg_full_trapezoid(z, dirs, t_max, knots), rel=1e-6, abs=1e-12)
    # Against the exact integral: only the trapezoid rule's own error is allowed, and that
    # error is small next to the value (a wrong weight or scale would not hide in it).
    exact = _sigreg_quad(z, dirs, t_max)
    bound = _trapezoid_error_bound(z, dirs, t_max, knots)
    assert abs(got - exact) <= bound
    assert bound < 0.25 * exact


def test_sigreg_mean_on_gaussian_samples_is_the_null_expectation():
    """Under H0, E|phi_B(t) - phi(t)|^2 = (1 - exp(-t^2)) / B, so E[SIGReg] is the integral of
    (1 - exp(-t^2)) exp(-t^2/2): checks the batch-size scaling."""
    z = torch.randn(32, 256, 64, dtype=torch.float64, generator=_gen(0))
    got = R.sigreg(z, torch.eye(64, dtype=torch.float64)).item()
    expected = scipy.integrate.quad(lambda t: (1 - math.exp(-t * t)) * math.exp(-t * t / 2), -3, 3)[0]
    assert got == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("law", ["uniform", "exponential", "collapsed"])
def test_sigreg_is_larger_for_non_gaussian_features(law):
    g, shape = _gen(0), (1024, 8)
    gaussian = torch.randn(shape, generator=g, dtype=torch.float64)
    other = {
        "uniform": lambda: (torch.rand(shape, generator=g, dtype=torch.float64) - 0.5) * math.sqrt(12),
        "exponential": lambda: torch.empty(shape, dtype=torch.float64).exponential_(generator=g) - 1.0,
        "collapsed": lambda: torch.zeros(shape, dtype=torch.float64),
    }[law]()
    # Axis directions: random ones would mix independent coordinates toward a Gaussian.
    eye = torch.eye(shape[1], dtype=torch.float64)
    assert R.sigreg(other, eye).item() > 4 * R.sigreg(gaussian, eye).item()


def test_sigreg_rejects_bad_grids_and_shapes():
    z, dirs = torch.randn(8, 3), R.random_directions(4, 3)
    with pytest.raises(ValueError, match="knots"):
        R.sigreg(z, dirs, knots=1)
    with pytest.raises(ValueError, match="t_max"):
        R.sigreg(z, dirs, t_max=0.0)
    with pytest.raises(ValueError, match="directions"):
        R.sigreg(z, R.random_directions(4, 5))


# --------------------------------------------------------------------------------------------
# Modules (single process): the per-step draws and the plain formulas


@pytest.mark.parametrize("shape", [(32, 6), (2, 32, 6)])
def test_rdmreg_module_is_the_formula_on_the_steps_draws(shape):
    z = torch.randn(shape, generator=_gen(1))
    reg = R.RDMReg(40, target="rgg", p=0.5, mu=-0.5, seed=3)
    dirs = R.random_directions(40, 6, seeding.step_generator(z.device, 3, 9, seeding.STREAM_DIRECTIONS))
    y = targets.sample(
        "rgg", shape, p=0.5, mu=-0.5, generator=seeding.step_generator(z.device, 3, 9, seeding.STREAM_TARGETS)
    )
    torch.testing.assert_close(reg(z, 9), R.rdmreg(z, y, dirs), rtol=0, atol=0)
    assert reg(z, 9).item() == reg(z, 9).item()
    assert reg(z, 10).item() != reg(z, 9).item()


def test_rdmreg_module_runs_in_float32_under_autocast():
    z = torch.randn(32, 6, generator=_gen(1), requires_grad=True)
    reg = R.RDMReg(40, target="rgg", p=1.0, mu=-1.0, seed=3)
    expected = reg(z, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = reg(z.to(torch.bfloat16), 4)
    assert got.dtype == torch.float32
    # Only the bf16 rounding of z itself remains.
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=1e-3)


def test_sigreg_module_is_the_formula_on_the_steps_directions():
    z = torch.randn(2, 32, 6, generator=_gen(1))
    reg = R.SIGReg(40, t_max=4.0, knots=9, seed=3)
    dirs = R.random_directions(40, 6, seeding.step_generator(z.device, 3, 9, seeding.STREAM_DIRECTIONS))
    torch.testing.assert_close(reg(z, 9), R.sigreg(z, dirs, t_max=4.0, knots=9), rtol=1e-6, atol=1e-6)
    assert reg(z, 10).item() != reg(z, 9).item()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_slices=8, target="laplace"), "target"),
        (dict(num_slices=0), "num_slices"),
    ],
)
def test_rdmreg_module_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        R.RDMReg(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_slices=0), "num_slices"),
        (dict(num_slices=8, knots=1), "knots"),
        (dict(num_slices=8, t_max=-1.0), "t_max"),
    ],
)
def test_sigreg_module_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        R.SIGReg(**kwargs)


# --------------------------------------------------------------------------------------------
# Invariance and the total loss


def test_invariance_on_hand_made_views():
    # Views (1, 3) and (3, 5) of two samples: centres 2 and 4, every deviation +-1.
    z = torch.tensor([[[1.0], [3.0]], [[3.0], [5.0]]])
    assert R.invariance(z).item() == pytest.approx(1.0)
    # Two dims, one constant across views: the mean over dims halves the value.
    z2 = torch.tensor([[[1.0, 7.0]], [[3.0, 7.0]]])
    assert R.invariance(z2).item() == pytest.approx(0.5)


def test_invariance_centres_on_the_global_views():
    # Global views 0 and 2 (centre 1), a local view at 4: deviations 1, 1, 3 -> (1 + 1 + 9) / 3.
    z = torch.tensor([[[0.0]], [[2.0]], [[4.0]]])
    assert R.invariance(z, num_global=2).item() == pytest.approx(11.0 / 3.0)
    # All three as global views: centre 2, deviations 2, 0, 2 -> 8 / 3.
    assert R.invariance(z).item() == pytest.approx(8.0 / 3.0)


@pytest.mark.parametrize("shape", [(1, 4, 3), (4, 3)])
def test_invariance_rejects_single_view_input(shape):
    with pytest.raises(ValueError, match="V >= 2"):
        R.invariance(torch.zeros(shape))


def test_total_loss_weights_invariance_and_regularizer():
    inv, reg = torch.tensor(2.0), torch.tensor(4.0)
    assert R.total_loss(inv, reg, 0.25).item() == pytest.approx(0.75 * 2.0 + 0.25 * 4.0)
    assert R.total_loss(inv, reg, 250 / 275).item() == pytest.approx((25 * 2.0 + 250 * 4.0) / 275)


@pytest.mark.parametrize("lambd", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_total_loss_rejects_lambd_outside_the_open_unit_interval(lambd):
    with pytest.raises(ValueError, match="lambd"):
        R.total_loss(torch.tensor(1.0), torch.tensor(1.0), lambd)
