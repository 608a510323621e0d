"""Evaluation of representations by classifiers on frozen features.

- `fit_linear_grid`: DINOv2-style linear evaluation: a grid of linear heads (learning rate x
  weight decay) trained together in one pass over cached features; the head with the best
  accuracy on a held-out part of the train split is reported on the test split.
- `knn_accuracy`: the weighted kNN classifier of InstDisc/DINO (cosine similarity, top-k votes
  weighted exp(sim / T)).

The online probes, trained every step inside the trainer's optimizer, are jepa_ray.train.TrainModule's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jepa_ray.data.splits import stratified_indices
from jepa_ray.schedule import cosine_factor

__all__ = [
    "LinearHeadGrid",
    "fit_linear_grid",
    "stratified_split",
    "knn_predict",
    "knn_accuracy",
]


ROW_BLOCK = 4096
"""Rows of a feature matrix checked at a time (no N x D mask of a whole split)."""

GATHER_ROWS = 65_536
"""Training rows up to which the linear probe copies them into one matrix (its standardization
is then a float32 reduction over exactly that matrix, as every recorded table was made); above,
it reads them from the features a batch at a time (`RowSelection`), so that a large split's
probe holds no second copy of its features."""

KNN_BANK_BLOCK = 8192
"""Train rows (the kNN feature bank) compared with a chunk of test rows at a time: the
similarity matrix held is (chunk, KNN_BANK_BLOCK), whatever the size of the train split."""

# --------------------------------------------------------------------------------------------
# Input checks


def _tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, torch.Tensor):
        return x.detach()
    raise ValueError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")


def _features(x: Any, name: str) -> torch.Tensor:
    """Features as a finite float32 (N, D) tensor with N >= 1, D >= 1."""
    t = _tensor(x, name)
    if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, D) with N >= 1 and D >= 1, got shape {tuple(t.shape)}")
    t = t.float()
    if not all(bool(torch.isfinite(t[s : s + ROW_BLOCK]).all()) for s in range(0, t.shape[0], ROW_BLOCK)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return t


def _labels(y: Any, name: str, n: int) -> torch.Tensor:
    """Labels as an int64 (N,) tensor matching n feature rows."""
    t = _tensor(y, name)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D class indices, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {t.dtype}")
    if t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} labels but its features have {n} rows")
    return t.long()


def _num_classes(num_classes: int | None, *labels: tuple[str, torch.Tensor]) -> int:
    """The class count (inferred as max label + 1 when None), checking every label is in range."""
    if num_classes is None:
        num_classes = 1 + max(int(y.max()) for _, y in labels)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for name, y in labels:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} has labels in [{lo}, {hi}]; allowed: 0 .. {num_classes - 1}")
    return num_classes


def _same_dim(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_b} has {b.shape[1]} feature dims but {name_a} has {a.shape[1]}")


def _positive_int(value: int, name: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


# --------------------------------------------------------------------------------------------
# Linear-head grid


class LinearHeadGrid(nn.Module):
    """len(lrs) * len(wds) linear heads D -> C held as one (H, D, C) weight and (H, C) bias, so one
    pass over a batch trains every head. Head h = i * len(wds) + j uses (lrs[i], wds[j]).

    Inputs are standardized with a fixed mean/std (set by `set_standardization` from the train
    split) so one grid of learning rates suits features of any scale. `train_step` applies SGD
    with momentum per head (PyTorch's convention; weight decay on weights, not biases) using the
    closed-form cross-entropy gradient: one GEMM forward and one backward for all heads, and no
    autograd, so it also runs under `torch.inference_mode`.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        lrs: Sequence[float],
        wds: Sequence[float],
        *,
        momentum: float = 0.9,
        init_std: float = 0.01,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _positive_int(in_dim, "in_dim")
        _positive_int(num_classes, "num_classes")
        lrs, wds = [float(v) for v in lrs], [float(v) for v in wds]
        if not lrs:
            raise ValueError("lrs must hold at least one learning rate, got an empty grid")
        if not wds:
            raise ValueError("wds must hold at least one weight decay, got an empty grid")
        if not all(math.isfinite(v) and v > 0 for v in lrs):
            raise ValueError(f"lrs must be finite and > 0, got {lrs}")
        if not all(math.isfinite(v) and v >= 0 for v in wds):
            raise ValueError(f"wds must be finite and >= 0, got {wds}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.grid: list[tuple[float, float]] = [(lr, wd) for lr in lrs for wd in wds]
        self.momentum = momentum
        h = len(self.grid)
        self.weight = nn.Parameter(
            torch.randn(h, in_dim, num_classes, generator=generator) * init_std, requires_grad=False
        )
        self.bias = nn.Parameter(torch.zeros(h, num_classes), requires_grad=False)
        self.register_buffer("lrs", torch.tensor([g[0] for g in self.grid]))
        self.register_buffer("wds", torch.tensor([g[1] for g in self.grid]))
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.register_buffer("weight_buf", torch.zeros_like(self.weight))
        self.register_buffer("bias_buf", torch.zeros_like(self.bias))

    @property
    def num_heads(self) -> int:
        return len(self.grid)

    @torch.no_grad()
    def set_standardization(self, x: torch.Tensor | RowSelection, eps: float = 1e-6) -> None:
        """Use the per-dimension mean/std of x (the training features) to standardize inputs."""
        mean, std = x.moments() if isinstance(x, RowSelection) else (x.mean(dim=0), x.std(dim=0, unbiased=False))
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(eps))

    def _standardized_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(standardized x (B, D), logits (B, C, H)) with all heads in one matrix product. The
        heads are the innermost dimension: torch's CPU softmax over a short contiguous class
        dimension is much slower than over a strided one, and it dominated the probe."""
        xs = (x - self.mean) / self.std
        h, d, c = self.weight.shape
        w = self.weight.permute(1, 2, 0).reshape(d, c * h)
        return xs, torch.addmm(self.bias.t().reshape(-1), xs, w).view(-1, c, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every head, shape (H, B, C)."""
        return self._standardized_logits(x)[1].permute(2, 0, 1)

    @torch.no_grad()
    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr_scale: float = 1.0) -> torch.Tensor:
        """One SGD-with-momentum step of every head on the batch (x, y), each with its own
        lr * lr_scale and weight decay; returns each head's mean cross-entropy before the step (H,)."""
        xs, logits = self._standardized_logits(x)
        b, c, h = logits.shape
        log_p = logits.log_softmax(dim=1)
        target = y.view(b, 1, 1).expand(b, 1, h)
        loss = -log_p.gather(1, target).squeeze(1).mean(dim=0)
        # d(mean cross-entropy)/d(logits) = (softmax - onehot) / B.
        grad = log_p.exp_()
        grad.scatter_add_(1, target, torch.full_like(target, -1.0, dtype=grad.dtype))
        grad.div_(b)
        grad_w = (xs.T @ grad.view(b, c * h)).view(-1, c, h).permute(2, 0, 1)
        grad_b = grad.sum(dim=0).t()
        lr = self.lrs * lr_scale
        self.weight_buf.mul_(self.momentum).add_(grad_w).addcmul_(self.wds.view(-1, 1, 1), self.weight)
        self.bias_buf.mul_(self.momentum).add_(grad_b)
        self.weight.addcmul_(lr.view(-1, 1, 1), self.weight_buf, value=-1.0)
        self.bias.addcmul_(lr.view(-1, 1), self.bias_buf, value=-1.0)
        return loss

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor | RowSelection, y: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Accuracy of every head on (x, y), shape (H,), evaluated in batches to bound memory."""
        correct = torch.zeros(self.num_heads, device=y.device, dtype=torch.float64)
        for start in range(0, x.shape[0], batch_size):
            logits = self._standardized_logits(x[start : start + batch_size])[1]
            correct += (logits.argmax(dim=1) == y[start : start + batch_size, None]).sum(dim=0)
        return correct / max(x.shape[0], 1)


class RowSelection:
    """Rows `index` of a feature matrix x as the probe reads them, a batch at a time
    (`selection[i]` gathers rows index[i] onto `device`), without a copy of all of them."""

    def __init__(self, x: torch.Tensor, index: torch.Tensor, device: torch.device) -> None:
        self.x, self.index, self.device = x, index.to(x.device), device
        self.shape = (index.numel(), x.shape[1])

    def __getitem__(self, i: torch.Tensor | slice) -> torch.Tensor:
        if isinstance(i, torch.Tensor):
            i = i.to(self.index.device)
        return self.x[self.index[i]].to(self.device)

    def moments(self, block: int = 65_536) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and population std of the rows, float32 on `device`, accumulated in
        float64 over blocks of rows (two passes: the mean, then the squared deviations)."""
        n = self.shape[0]
        total = torch.zeros(self.shape[1], dtype=torch.float64, device=self.x.device)
        for s in range(0, n, block):
            total += self.x[self.index[s : s + block]].double().sum(dim=0)
        mean = total / n
        squares = torch.zeros_like(total)
        for s in range(0, n, block):
            squares += (self.x[self.index[s : s + block]].double() - mean).square().sum(dim=0)
        return mean.float().to(self.device), (squares / n).sqrt().float().to(self.device)


def stratified_split(y: torch.Tensor, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val): val is the stratified subset (jepa_ray.data.stratified_indices) of
    round(val_fraction * n) samples, train the rest."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    y = y.cpu()
    val_idx = stratified_indices(y, int(round(val_fraction * y.numel())), seed=seed)
    if val_idx.numel() == 0:
        raise ValueError(f"val_fraction={val_fraction} leaves no validation sample out of {y.numel()} training labels")
    in_val = torch.zeros(y.numel(), dtype=torch.bool)
    in_val[val_idx] = True
    return torch.nonzero(~in_val).flatten(), val_idx


def fit_linear_grid(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    lrs: Sequence[float],
    wds: Sequence[float],
    epochs: int,
    batch_size: int = 256,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | str | None = None,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Train a grid of linear heads on frozen features and report the best one.

    A seeded stratified part of the train split (val_fraction) chooses the head; every head is
    trained on the rest for `epochs` passes with a cosine-decayed learning rate. Returns
    {"test_acc", "val_acc", "train_acc", "best_lr", "best_wd"} of the chosen head.
    """
    train_x, test_x = _features(train_x, "train_x"), _features(test_x, "test_x")
    _same_dim(train_x, test_x, "train_x", "test_x")
    train_y = _labels(train_y, "train_y", train_x.shape[0])
    test_y = _labels(test_y, "test_y", test_x.shape[0])
    num_classes = _num_classes(num_classes, ("train_y", train_y), ("test_y", test_y))
    _positive_int(epochs, "epochs")
    _positive_int(batch_size, "batch_size")
    device = torch.device(device) if device is not None else train_x.device

    tr_idx, va_idx = stratified_split(train_y, val_fraction, seed)
    y_tr = train_y[tr_idx].to(device)
    x_tr = train_x[tr_idx].to(device) if tr_idx.numel() <= GATHER_ROWS else RowSelection(train_x, tr_idx, device)
    x_va, y_va = train_x[va_idx].to(device), train_y[va_idx].to(device)
    x_te, y_te = test_x.to(device), test_y.to(device)

    g = torch.Generator().manual_seed(seed)
    grid = LinearHeadGrid(train_x.shape[1], num_classes, lrs, wds, generator=g).to(device)
    grid.set_standardization(x_tr)

    n = x_tr.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).to(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            grid.train_step(x_tr[idx], y_tr[idx], cosine_factor(step, total))
            step += 1

    val_acc = grid.accuracy(x_va, y_va)
    # First head of the best validation accuracy (grid order), identical on every device.
    best = int(torch.nonzero(val_acc == val_acc.max()).flatten()[0])
    test_acc = grid.accuracy(x_te, y_te)[best]
    train_acc = grid.accuracy(x_tr, y_tr)[best]
    best_lr, best_wd = grid.grid[best]
    return {
        "test_acc": float(test_acc),
        "val_acc": float(val_acc[best]),
        "train_acc": float(train_acc),
        "best_lr": best_lr,
        "best_wd": best_wd,
    }


# --------------------------------------------------------------------------------------------
# Weighted kNN


def _knn_top(q: torch.Tensor, train_x: torch.Tensor, k: int, bank_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest cosine similarities of the L2-normalized queries q to the rows of train_x,
    descending, with their row indices: the bank normalized and compared a block of rows at a
    time, each block's top k merged into the running top k. A bank of one block is the
    unblocked computation; with several, the similarities are the same dot products (the BLAS
    may round a block's last bit differently) and the top k the same but for which of equal
    similarities is kept."""
    best_sim, best_idx = None, None
    for start in range(0, train_x.shape[0], bank_block):
        bank = F.normalize(train_x[start : start + bank_block], dim=1)
        sim, idx = (q @ bank.T).topk(min(k, bank.shape[0]), dim=1)
        idx += start
        if best_sim is not None:
            sim = torch.cat([best_sim, sim], dim=1)
            sim, pos = sim.topk(min(k, sim.shape[1]), dim=1)
            idx = torch.cat([best_idx, idx], dim=1).gather(1, pos)
        best_sim, best_idx = sim, idx
    return best_sim, best_idx


def knn_predict(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
    bank_block: int | None = None,
) -> torch.Tensor:
    """Class predictions (int64) of the weighted kNN classifier: cosine similarity on
    L2-normalized features, the k most similar train samples vote with weight
    exp(sim / temperature) (Wu et al. 2018; Caron et al. 2021). Ties go to the lower class.
    Runs on train_x's device (the feature bank), test_x `chunk` rows at a time against
    `bank_block` (None: KNN_BANK_BLOCK) train rows at a time: no similarity matrix, and no
    normalized copy of the bank, grows with the train split."""
    train_x, test_x = _features(train_x, "train_x"), _features(test_x, "test_x")
    _same_dim(train_x, test_x, "train_x", "test_x")
    train_y = _labels(train_y, "train_y", train_x.shape[0])
    num_classes = _num_classes(num_classes, ("train_y", train_y))
    _positive_int(k, "k")
    _positive_int(chunk, "chunk")
    bank_block = KNN_BANK_BLOCK if bank_block is None else bank_block
    _positive_int(bank_block, "bank_block")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = train_x.device
    bank_y = train_y.to(device)
    k = min(k, train_x.shape[0])
    preds = torch.empty(test_x.shape[0], dtype=torch.int64, device=device)
    for start in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[start : start + chunk].to(device), dim=1)
        sim, idx = _knn_top(q, train_x, k, bank_block)
        votes = torch.zeros(q.shape[0], num_classes, device=device)
        # Shifting by the row's top similarity rescales a row's votes (same argmax) and keeps
        # exp() finite for small temperatures.
        votes.scatter_add_(1, bank_y[idx], ((sim - sim[:, :1]) / temperature).exp())
        preds[start : start + q.shape[0]] = votes.argmax(dim=1)
    return preds


def knn_accuracy(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
    bank_block: int | None = None,
) -> float:
    """Accuracy of the weighted kNN classifier (see `knn_predict`) on (test_x, test_y)."""
    test_t = _features(test_x, "test_x")
    test_y = _labels(test_y, "test_y", test_t.shape[0])
    train_y_t = _labels(train_y, "train_y", _tensor(train_y, "train_y").shape[0])
    num_classes = _num_classes(num_classes, ("train_y", train_y_t), ("test_y", test_y))
    pred = knn_predict(
        train_x,
        train_y_t,
        test_t,
        k=k,
        temperature=temperature,
        num_classes=num_classes,
        chunk=chunk,
        bank_block=bank_block,
    )
    return (pred == test_y.to(pred.device)).double().mean().item()
