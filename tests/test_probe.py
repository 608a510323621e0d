"""Frozen-feature evaluation: the linear-head grid, weighted kNN and the online probe, checked
against autograd + torch.optim.SGD, brute-force numpy kNN and problems with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from jepa_ray.eval import probe
from jepa_ray.eval.probe import (
    LinearHeadGrid,
    RowSelection,
    fit_linear_grid,
    knn_accuracy,
    knn_predict,
    stratified_split,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """These problems are small: one intra-op thread avoids OpenMP oversubscription on a shared
    CPU, which makes them many times slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _linear_labelling(n: int, d: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features with an offset and uneven scales, labelled by argmax of a random linear map."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, c, generator=g)
    x = torch.randn(n, d, generator=g)
    y = (x @ w).argmax(dim=1)
    scales = torch.logspace(-1, 1, d)
    return x * scales + 3.0, y


# --------------------------------------------------------------------------------------------
# Linear-head grid


def test_grid_recovers_a_linear_labelling():
    x, y = _linear_labelling(2000, 32, 5, seed=0)
    lrs, wds = [0.3, 0.1, 0.03], [0.0, 1e-4]
    res = fit_linear_grid(x[:1600], y[:1600], x[1600:], y[1600:], lrs=lrs, wds=wds, epochs=30, seed=0)
    assert set(res) == {"test_acc", "val_acc", "train_acc", "best_lr", "best_wd"}
    assert res["test_acc"] >= 0.9
    assert res["val_acc"] >= 0.9 and res["train_acc"] >= 0.9
    assert res["best_lr"] in lrs and res["best_wd"] in wds
    # Close to a converged multinomial logistic regression on the same split (scikit-learn).
    scaler = StandardScaler().fit(x[:1600].numpy())
    reference = LogisticRegression(max_iter=2000).fit(scaler.transform(x[:1600].numpy()), y[:1600].numpy())
    assert res["test_acc"] >= reference.score(scaler.transform(x[1600:].numpy()), y[1600:].numpy()) - 0.04


def test_grid_never_picks_an_absurdly_small_lr():
    x, y = _linear_labelling(1200, 16, 4, seed=1)
    res = fit_linear_grid(x[:1000], y[:1000], x[1000:], y[1000:], lrs=[1e-8, 0.1], wds=[0.0, 1e-3], epochs=10, seed=3)
    assert res["best_lr"] == 0.1
    assert res["test_acc"] >= 0.85


def test_grid_is_deterministic_for_a_seed_and_accepts_numpy():
    x, y = _linear_labelling(600, 8, 3, seed=2)
    kw = dict(lrs=[0.1, 0.01], wds=[0.0], epochs=5, seed=7)
    a = fit_linear_grid(x[:500], y[:500], x[500:], y[500:], **kw)
    b = fit_linear_grid(x[:500].numpy(), y[:500].numpy(), x[500:].numpy(), y[500:].numpy(), **kw)
    assert a == b


def test_a_large_train_split_is_read_a_batch_at_a_time_with_the_same_result(monkeypatch):
    """Above GATHER_ROWS training rows the probe reads them from the features a batch at a time
    (no copy of them all): its standardization (float64 blocks) equals the gathered rows' moments
    to float32 rounding, and the chosen head and its accuracies are the gathered path's."""
    x, y = _linear_labelling(2000, 32, 5, seed=4)
    kw = dict(lrs=[0.3, 0.03], wds=[0.0, 1e-4], epochs=8, seed=1)
    gathered = fit_linear_grid(x[:1600], y[:1600], x[1600:], y[1600:], **kw)
    index = torch.randperm(1600, generator=torch.Generator().manual_seed(0))[:1000]
    mean, std = RowSelection(x[:1600], index, torch.device("cpu")).moments(block=97)
    rows = x[index].double()
    assert torch.allclose(mean, rows.mean(dim=0).float(), rtol=1e-6, atol=1e-6)
    assert torch.allclose(std, rows.std(dim=0, unbiased=False).float(), rtol=1e-6)
    read = []
    real_getitem = RowSelection.__getitem__
    monkeypatch.setattr(RowSelection, "__getitem__", lambda self, i: read.append(1) or real_getitem(self, i))
    monkeypatch.setattr(probe, "GATHER_ROWS", 1000)
    selected = fit_linear_grid(x[:1600], y[:1600], x[1600:], y[1600:], batch_size=256, **kw)
    assert len(read) >= 8 * 6  # every training batch of every epoch went through the selection
    assert selected["best_lr"] == gathered["best_lr"] and selected["best_wd"] == gathered["best_wd"]
    for key in ("test_acc", "val_acc", "train_acc"):
        assert selected[key] == pytest.approx(gathered[key], abs=2e-3), key


def test_grid_step_matches_autograd_sgd_per_head():
    """Every head follows torch.optim.SGD (momentum, weight decay on the weight only) on the
    standardized features, with the closed-form gradient equal to autograd's."""
    g = torch.Generator().manual_seed(4)
    n, d, c = 64, 6, 3
    x = torch.randn(n, d, generator=g) * 2.0 + 1.0
    y = torch.randint(0, c, (n,), generator=g)
    lrs, wds = [0.5, 0.05], [0.0, 0.01]
    grid = LinearHeadGrid(d, c, lrs, wds, generator=g)
    grid.set_standardization(x)
    xs = (x - x.mean(0)) / x.std(0, unbiased=False)

    refs = []
    for h, (lr, wd) in enumerate(grid.grid):
        lin = torch.nn.Linear(d, c)
        with torch.no_grad():
            lin.weight.copy_(grid.weight[h].T)
            lin.bias.copy_(grid.bias[h])
        opt = torch.optim.SGD(
            [{"params": [lin.weight], "weight_decay": wd}, {"params": [lin.bias], "weight_decay": 0.0}],
            lr=lr,
            momentum=0.9,
        )
        refs.append((lin, opt, lr))

    for step, scale in enumerate([1.0, 0.8, 0.5, 0.2, 0.05]):
        batch = slice(16 * (step % 4), 16 * (step % 4) + 16)
        losses = grid.train_step(x[batch], y[batch], lr_scale=scale)
        for h, (lin, opt, lr) in enumerate(refs):
            for group in opt.param_groups:
                group["lr"] = lr * scale
            opt.zero_grad()
            loss = F.cross_entropy(lin(xs[batch]), y[batch])
            loss.backward()
            opt.step()
            assert losses[h].item() == pytest.approx(loss.item(), rel=1e-5)
    for h, (lin, _, _) in enumerate(refs):
        torch.testing.assert_close(grid.weight[h], lin.weight.detach().T, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grid.bias[h], lin.bias.detach(), rtol=1e-5, atol=1e-6)
    logits = grid(x)
    assert logits.shape == (4, n, c)
    torch.testing.assert_close(logits[3], refs[3][0](xs).detach(), rtol=1e-5, atol=1e-5)


def test_grid_runs_under_inference_mode():
    x, y = _linear_labelling(400, 8, 3, seed=5)
    with torch.inference_mode():
        res = fit_linear_grid(x[:300], y[:300], x[300:], y[300:], lrs=[0.1], wds=[0.0], epochs=5)
    assert res["test_acc"] > 0.7


def test_stratified_split_keeps_class_proportions():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20 + [3] * 1)
    tr, va = stratified_split(y, 0.1, seed=0)
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(len(y)))
    assert np.bincount(y[va].numpy(), minlength=4).tolist() == [5, 3, 2, 0]
    tr2, va2 = stratified_split(y, 0.1, seed=0)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    assert not torch.equal(va, stratified_split(y, 0.1, seed=1)[1])


def test_grid_input_errors_name_the_input():
    x, y = _linear_labelling(100, 4, 3, seed=0)
    kw = dict(lrs=[0.1], wds=[0.0], epochs=1)
    with pytest.raises(ValueError, match="train_y"):
        fit_linear_grid(x, y[:-1], x, y, **kw)
    with pytest.raises(ValueError, match="test_y"):
        fit_linear_grid(x, y, x, y[:-1], **kw)
    with pytest.raises(ValueError, match="test_x"):
        fit_linear_grid(x, y, x[:, :3], y, **kw)
    with pytest.raises(ValueError, match=r"test_y has labels in \[7, 7\]"):
        fit_linear_grid(x, y, x, torch.full_like(y, 7), num_classes=3, **kw)
    with pytest.raises(ValueError, match="train_y has labels in"):
        fit_linear_grid(x, y - 1, x, y, **kw)
    with pytest.raises(ValueError, match="train_y must hold integer"):
        fit_linear_grid(x, y.float(), x, y, **kw)
    with pytest.raises(ValueError, match="lrs"):
        fit_linear_grid(x, y, x, y, lrs=[], wds=[0.0], epochs=1)
    with pytest.raises(ValueError, match="wds"):
        fit_linear_grid(x, y, x, y, lrs=[0.1], wds=[], epochs=1)
    with pytest.raises(ValueError, match="lrs must be finite and > 0"):
        fit_linear_grid(x, y, x, y, lrs=[0.0], wds=[0.0], epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        fit_linear_grid(x, y, x, y, lrs=[0.1], wds=[0.0], epochs=0)
    with pytest.raises(ValueError, match="val_fraction"):
        fit_linear_grid(x, y, x, y, val_fraction=1.0, **kw)
    with pytest.raises(ValueError, match="train_x contains non-finite"):
        fit_linear_grid(x * float("nan"), y, x, y, **kw)


# --------------------------------------------------------------------------------------------
# Weighted kNN


def _knn_brute_force(train_x, train_y, test_x, k, temperature, num_classes):
    """Independent reference: float64 numpy, one test sample and one neighbour at a time."""
    train_x = np.asarray(train_x, dtype=np.float64)
    test_x = np.asarray(test_x, dtype=np.float64)
    preds = []
    for q in test_x:
        sims = []
        for t in train_x:
            sims.append(float(q @ t) / (np.linalg.norm(q) * np.linalg.norm(t)))
        order = np.argsort(-np.array(sims), kind="stable")[:k]
        votes = [0.0] * num_classes
        for j in order:
            votes[int(train_y[j])] += np.exp(sims[j] / temperature)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


@pytest.mark.parametrize("k,temperature,chunk", [(5, 0.1, 7), (200, 0.07, 1024), (3, 0.005, 16)])
def test_knn_matches_brute_force(k, temperature, chunk):
    rng = np.random.default_rng(k)
    train_x = rng.standard_normal((120, 8)).astype(np.float32)
    train_y = rng.integers(0, 4, 120)
    test_x = rng.standard_normal((40, 8)).astype(np.float32)
    test_y = rng.integers(0, 4, 40)
    ref = _knn_brute_force(train_x, train_y, test_x, min(k, 120), temperature, 4)
    pred = knn_predict(train_x, train_y, test_x, k=k, temperature=temperature, num_classes=4, chunk=chunk)
    assert pred.tolist() == ref.tolist()
    acc = knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=temperature, chunk=chunk)
    assert acc == pytest.approx(float(np.mean(ref == test_y)), abs=0)


@pytest.mark.parametrize("bank_block", [1, 7, 64, 119, 120, 10_000])
def test_knn_reads_its_bank_in_blocks_and_predicts_as_the_whole_bank(bank_block):
    """The train features are compared a block of rows at a time (the similarities held do not
    grow with the train split); the predictions are those of the whole bank as one block (the
    unblocked computation) and of brute force."""
    rng = np.random.default_rng(3)
    train_x = rng.standard_normal((120, 16)).astype(np.float32)
    train_y = rng.integers(0, 5, 120)
    test_x = rng.standard_normal((50, 16)).astype(np.float32)
    kw = dict(k=20, temperature=0.07, num_classes=5, chunk=16)
    whole = knn_predict(train_x, train_y, test_x, bank_block=120, **kw)
    pred = knn_predict(train_x, train_y, test_x, bank_block=bank_block, **kw)
    assert pred.tolist() == whole.tolist() == _knn_brute_force(train_x, train_y, test_x, 20, 0.07, 5).tolist()


def test_knn_separates_gaussian_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 32, generator=g) * 5.0
    y = torch.randint(0, 6, (1500,), generator=g)
    x = centers[y] + torch.randn(1500, 32, generator=g)
    assert knn_accuracy(x[:1000], y[:1000], x[1000:], y[1000:], k=20, temperature=0.07) >= 0.99


def test_knn_input_errors_name_the_input():
    x = torch.randn(10, 3)
    y = torch.arange(10) % 2
    with pytest.raises(ValueError, match="k must"):
        knn_accuracy(x, y, x, y, k=0)
    with pytest.raises(ValueError, match="temperature"):
        knn_accuracy(x, y, x, y, temperature=0.0)
    with pytest.raises(ValueError, match="train_y"):
        knn_accuracy(x, y[:5], x, y)
    with pytest.raises(ValueError, match="test_y"):
        knn_accuracy(x, y, x, y[:5])
    with pytest.raises(ValueError, match="test_x"):
        knn_accuracy(x, y, x[:, :2], y)
    with pytest.raises(ValueError, match="test_y has labels in"):
        knn_accuracy(x, y, x, y + 5, num_classes=2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = _linear_labelling(1200, 16, 4, seed=8)
    kw = dict(lrs=[0.3, 0.03], wds=[0.0, 1e-4], epochs=10, seed=0)
    cpu = fit_linear_grid(x[:1000], y[:1000], x[1000:], y[1000:], **kw)
    gpu = fit_linear_grid(x[:1000].cuda(), y[:1000].cuda(), x[1000:].cuda(), y[1000:].cuda(), **kw)
    assert gpu["test_acc"] == pytest.approx(cpu["test_acc"], abs=0.02)
    assert (
        knn_predict(x[:1000].cuda(), y[:1000], x[1000:], k=10).tolist()
        == knn_predict(x[:1000], y[:1000], x[1000:], k=10).tolist()
    )
