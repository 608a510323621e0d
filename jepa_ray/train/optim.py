"""Optimizers and the learning-rate schedule, as the reference Rectified LpJEPA code (a
solo-learn fork) trains: LARS with solo-learn's semantics or AdamW; no weight decay (nor trust
ratio) on biases and norm parameters; the online linear probes in the same optimizer with their
own base learning rate and no weight decay; a linear warmup from `warmup_start_lr` then a
per-step cosine decay, applied to every group relative to its own base learning rate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from jepa_ray.schedule import lr_at

if TYPE_CHECKING:
    from jepa_ray.config import TrialConfig

LARS_EPS = 1e-8  # solo-learn's LARS eps (the denominator of the trust ratio)


def param_groups(model: nn.Module, weight_decay: float, *, lr: float | None = None, name: str = "") -> list[dict]:
    """Weights of matrices and convolutions get weight decay and the LARS trust ratio; biases
    and norm parameters (ndim <= 1) get neither (solo-learn's `exclude_bias_n_norm`).
    `lr` is the group's base learning rate (None: the optimizer's)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    extra = {} if lr is None else {"lr": lr}
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lars": True, "name": f"{name}decay", **extra},
        {"params": no_decay, "weight_decay": 0.0, "lars": False, "name": f"{name}no_decay", **extra},
    ]
    return [g for g in groups if g["params"]]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and solo-learn's layer-wise trust ratio (You et al. 2017).

    For a parameter of a group with `lars=True` (ndim > 1) whose weight and gradient are both
    non-zero, the step direction is d = (g + wd w) * t with
    t = eta ||w|| / (||g|| + wd ||w|| + eps), and with `clip_lr` t = min(t / lr, 1): the step is
    plain SGD at lr unless the trust ratio caps it. Otherwise (biases, norm parameters, a zero
    weight or gradient) d = g, with no weight decay. Then buf = m buf + d (buf = d at the first
    step) and w = w - lr buf. No host-device synchronization: the branches are tensor selects."""

    def __init__(
        self,
        params: Iterable,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 0.02,
        clip_lr: bool = True,
        eps: float = LARS_EPS,
    ):
        super().__init__(
            params,
            dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, lars=True, clip_lr=clip_lr, eps=eps),
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            lr, wd = g["lr"], g["weight_decay"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if g["lars"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = g["eta"] * w_norm / (g_norm + w_norm * wd + g["eps"])
                    if g["clip_lr"]:
                        trust = (trust / lr).clamp(max=1.0) if lr > 0 else torch.ones_like(trust)
                    scaled = (d + wd * p) * trust if wd else d * trust
                    d = torch.where((w_norm > 0) & (g_norm > 0), scaled, d)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-lr)
        return loss


def peak_lr(cfg: TrialConfig) -> float:
    """Base lr scaled linearly by global batch / 256 (solo-learn's rule)."""
    return cfg.optim.lr * cfg.optim.batch_size / 256.0


def probe_lr(cfg: TrialConfig) -> float:
    """Base lr of the online linear probes, scaled like the encoder's (solo-learn's classifier_lr)."""
    return cfg.eval.online_probe_lr * cfg.optim.batch_size / 256.0


def create_optimizer(cfg: TrialConfig, encoder: nn.Module, probes: nn.Module | None = None) -> torch.optim.Optimizer:
    """One optimizer for the encoder (weight decay on weights) and the online probes (their own
    base lr, no weight decay), each group keeping its base lr in `base_lr` for the schedule."""
    groups = param_groups(encoder, cfg.optim.weight_decay, lr=peak_lr(cfg), name="encoder/")
    if probes is not None:
        groups += param_groups(probes, 0.0, lr=probe_lr(cfg), name="probes/")
    for g in groups:
        g["base_lr"] = g["lr"]
    if cfg.optim.optimizer == "lars":
        return LARS(
            groups,
            lr=peak_lr(cfg),
            weight_decay=cfg.optim.weight_decay,
            momentum=cfg.optim.momentum,
            eta=cfg.optim.lars_eta,
        )
    for g in groups:
        g.pop("lars")
    return torch.optim.AdamW(groups, lr=peak_lr(cfg), weight_decay=cfg.optim.weight_decay)


def schedule_step(
    optimizer: torch.optim.Optimizer, step: int, total_steps: int, warmup_steps: int, cfg: TrialConfig
) -> None:
    """Set every group's lr for `step` from its own base lr (warmup starts from the same
    warmup_start_lr for every group, as in solo-learn)."""
    for g in optimizer.param_groups:
        g["lr"] = lr_at(
            step, total_steps, warmup_steps, g["base_lr"], cfg.optim.min_lr_ratio, cfg.optim.warmup_start_lr
        )


def warmup_steps(cfg: TrialConfig, steps_per_epoch: int) -> int:
    """Warmup length in steps: `warmup_epochs`, at most `warmup_max_fraction` of the schedule.

    Why not a fixed share of the schedule: the reference warms up for 10 epochs of 1000 (1%),
    and 1% of a 10-epoch CPU run on CIFAR-10 is 2 steps, after which the encoder ended worse than
    its random initialisation; 1, 2, 5 and 10 warmup epochs gained +1.6, +4.1, +7.8 and +11.8
    linear-probe points (docs/benchmarks.md, quality). Warmup steadies the first steps, whose
    number does not shrink with the schedule."""
    epochs = min(cfg.optim.warmup_epochs, cfg.optim.warmup_max_fraction * cfg.optim.epochs)
    return int(round(epochs * steps_per_epoch))
