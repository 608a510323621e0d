"""Sparsity and collapse metrics against hand-computed values and an independent numpy RankMe."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from jepa_ray import metrics


@pytest.fixture(autouse=True)
def _one_thread():
    """Small matrices: one intra-op thread avoids OpenMP oversubscription on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Rows: one active coordinate; two of equal magnitude; two of different magnitude.
# Columns: 0 always active, 2 dead.
HAND = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, -2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 5.0]])


def test_hand_matrix_exact_values():
    assert metrics.l0_density(HAND) == pytest.approx((1 / 4 + 2 / 4 + 2 / 4) / 3, abs=1e-15)
    # (‖z‖₁/‖z‖₂)² / D per row: 1/4, (4²/8)/4, (8²/34)/4.
    expected_l1 = (1 / 4 + (16 / 8) / 4 + (64 / 34) / 4) / 3
    assert metrics.l1_sparsity(HAND) == pytest.approx(expected_l1, abs=1e-15)
    assert metrics.dead_fraction(HAND) == pytest.approx(0.25)
    assert metrics.always_active_fraction(HAND) == pytest.approx(0.25)
    rates = metrics.activation_rates(HAND)
    assert rates.shape == (4,) and rates.device.type == "cpu"
    torch.testing.assert_close(rates, torch.tensor([1.0, 1 / 3, 0.0, 1 / 3]))


def test_one_hot_rows_are_maximally_sparse():
    d = 8
    z = torch.eye(d).repeat(3, 1) * 7.5
    assert metrics.l0_density(z) == pytest.approx(1 / d)
    assert metrics.l1_sparsity(z) == pytest.approx(1 / d)
    assert metrics.dead_fraction(z) == 0.0
    assert metrics.always_active_fraction(z) == 0.0


def test_all_ones_rows_are_dense():
    z = torch.ones(5, 6)
    assert metrics.l0_density(z) == 1.0
    assert metrics.l1_sparsity(z) == pytest.approx(1.0)
    assert metrics.dead_fraction(z) == 0.0
    assert metrics.always_active_fraction(z) == 1.0


def test_exact_zeros_only_and_zero_rows():
    tiny = torch.tensor([[1e-30, 0.0], [0.0, 0.0]])
    assert metrics.l0_density(tiny) == pytest.approx(0.25)
    assert metrics.dead_fraction(tiny) == pytest.approx(0.5)
    # An all-zero row contributes 0 to the ℓ1 ratio; a one-hot row 1/D.
    z = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    assert metrics.l1_sparsity(z) == pytest.approx((0.5 + 0.0) / 2)


def test_l1_sparsity_matches_numpy_on_random_rectified_codes():
    rng = np.random.default_rng(0)
    z = np.maximum(rng.standard_normal((300, 20)) - 0.8, 0.0)
    z[:3] = 0.0
    ratios = []
    for row in z:
        l2 = math.sqrt(float(np.sum(row**2)))
        ratios.append(0.0 if l2 == 0 else (float(np.sum(np.abs(row))) / l2) ** 2 / z.shape[1])
    assert metrics.l1_sparsity(z) == pytest.approx(float(np.mean(ratios)), rel=1e-12)
    assert metrics.l0_density(z) == pytest.approx(float(np.mean(z != 0)), rel=1e-12)


def test_numpy_and_integer_inputs_agree_with_torch():
    assert metrics.summary(HAND.numpy()) == metrics.summary(HAND)
    ints = torch.tensor([[0, 3], [1, 0]], dtype=torch.int64)
    assert metrics.l0_density(ints) == 0.5
    assert metrics.l0_density(ints.bool()) == 0.5


def _rank_me_numpy(z: np.ndarray, eps: float = 1e-7) -> float:
    s = np.linalg.svd(np.asarray(z, dtype=np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def test_rank_me_full_rank_for_orthonormal_and_whitened_gaussian():
    g = torch.Generator().manual_seed(0)
    d = 64
    q, _ = torch.linalg.qr(torch.randn(2000, d, generator=g, dtype=torch.float64))
    assert metrics.rank_me(q) == pytest.approx(d, rel=1e-4)
    gauss = torch.randn(4000, d, generator=g)
    assert metrics.rank_me(gauss) > 0.9 * d
    assert metrics.rank_me(gauss) <= d + 1e-3


def test_rank_me_is_one_for_rank_one_matrix():
    g = torch.Generator().manual_seed(1)
    z = torch.outer(torch.randn(500, generator=g), torch.randn(32, generator=g))
    assert metrics.rank_me(z) == pytest.approx(1.0, abs=1e-3)


def test_rank_me_matches_independent_numpy():
    rng = np.random.default_rng(2)
    # A decaying spectrum so that every term of the entropy matters.
    z = rng.standard_normal((400, 24)) @ np.diag(np.geomspace(1.0, 1e-3, 24)) @ rng.standard_normal((24, 24))
    assert metrics.rank_me(torch.from_numpy(z).float()) == pytest.approx(_rank_me_numpy(z.astype(np.float32)), rel=1e-6)
    assert metrics.rank_me(z, eps=1e-5) == pytest.approx(_rank_me_numpy(z, eps=1e-5), rel=1e-12)
    wide = rng.standard_normal((10, 50))  # N < D: at most N non-zero singular values
    assert metrics.rank_me(wide) == pytest.approx(_rank_me_numpy(wide), rel=1e-12)
    assert metrics.rank_me(wide) <= 10 + 1e-3


def test_summary_holds_every_scalar():
    s = metrics.summary(HAND)
    assert set(s) == {"l0_density", "l1_sparsity", "dead_fraction", "always_active_fraction", "rank_me"}
    assert all(isinstance(v, float) for v in s.values())
    assert s["rank_me"] == pytest.approx(_rank_me_numpy(HAND.numpy()), rel=1e-6)
    assert s["dead_fraction"] == metrics.dead_fraction(HAND)


@pytest.mark.parametrize("shape", [(5,), (0, 3), (3, 0), (2, 3, 4)])
def test_bad_shapes_name_z_and_the_shape(shape):
    bad = torch.zeros(shape)
    for fn in (
        metrics.l0_density,
        metrics.l1_sparsity,
        metrics.dead_fraction,
        metrics.always_active_fraction,
        metrics.activation_rates,
        metrics.rank_me,
        metrics.summary,
    ):
        with pytest.raises(ValueError, match=r"z .*" + re.escape(str(tuple(shape)))):
            fn(bad)


def test_non_tensor_and_non_finite_inputs_are_rejected():
    with pytest.raises(ValueError, match="z must be a torch tensor or numpy array"):
        metrics.l0_density([[1.0, 0.0]])
    with pytest.raises(ValueError, match="z must be finite"):
        metrics.rank_me(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    z = torch.relu(torch.randn(500, 40, generator=torch.Generator().manual_seed(3)) - 0.5)
    cpu, gpu = metrics.summary(z), metrics.summary(z.cuda())
    assert gpu == pytest.approx(cpu, rel=1e-6)
    assert metrics.activation_rates(z.cuda()).device.type == "cpu"


def test_a_split_is_read_in_blocks_of_rows_with_the_unblocked_values(monkeypatch):
    """Over ROW_BLOCK rows the metrics read z a block at a time (no mask or float64 copy of the
    whole split): the values are the unblocked formulas' bit for bit, RankMe (a QR built block
    by block) to rounding."""
    g = torch.Generator().manual_seed(4)
    z = torch.relu(torch.randn(1000, 48, generator=g) - 0.5)
    z[:, 3], z[:, 5] = 0.0, 1.0 + torch.rand(1000, generator=g)  # a dead unit, an always active one
    active = (z != 0).double()
    x = z.double()
    unblocked = {
        "l0_density": active.mean().item(),
        "l1_sparsity": ((x.abs().sum(dim=1) / x.norm(dim=1).clamp_min(1e-12)) ** 2 / 48).mean().item(),
        "dead_fraction": (1 - active.max(dim=0).values).mean().item(),
        "always_active_fraction": active.min(dim=0).values.mean().item(),
    }
    rates = active.mean(dim=0).float()
    sigma = torch.linalg.svdvals(x)
    p = sigma / sigma.sum() + 1e-7
    rank = math.exp(-(p * p.log()).sum().item())
    for rows in (7, 999, 4096):
        monkeypatch.setattr(metrics, "ROW_BLOCK", rows)
        got = metrics.summary(z)
        assert {k: got[k] for k in unblocked} == unblocked
        assert got["rank_me"] == pytest.approx(rank, rel=1e-12)
        assert torch.equal(metrics.activation_rates(z), rates)
    assert unblocked["dead_fraction"] == 1 / 48 and unblocked["always_active_fraction"] >= 1 / 48
