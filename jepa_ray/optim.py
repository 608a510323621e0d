"""Optimizers and the learning-rate schedule: AdamW or LARS (the reference's CIFAR optimizer),
no weight decay on biases and norm parameters, linear warmup then cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn

from jepa_ray.config import TrialConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights of matrices/convs get weight decay and LARS adaptation; biases and norm
    parameters (1-D) get neither (as in SimCLR/VICReg's LARS)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lars": True},
            {"params": no_decay, "weight_decay": 0.0, "lars": False}]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio eta * ||w|| / ||g + wd w|| (You et al.
    2017), applied only to groups with `lars=True`."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 eta: float = 0.02):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=g["weight_decay"]) if g["weight_decay"] else p.grad.clone()
                if g["lars"]:
                    w_norm, d_norm = p.norm(), d.norm()
                    trust = torch.where((w_norm > 0) & (d_norm > 0), g["eta"] * w_norm / d_norm,
                                        torch.ones_like(w_norm))
                    d.mul_(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d
                else:
                    buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-g["lr"])
        return loss


def peak_lr(cfg: TrialConfig) -> float:
    """Base lr scaled linearly by global batch / 256."""
    return cfg.optim.lr * cfg.optim.batch_size / 256.0


def create_optimizer(cfg: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.optim.weight_decay)
    lr = peak_lr(cfg)
    if cfg.optim.optimizer == "lars":
        return LARS(groups, lr=lr, weight_decay=cfg.optim.weight_decay)
    for g in groups:
        g.pop("lars")
    return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.optim.weight_decay)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, min_ratio: float = 0.0) -> float:
    """Linear warmup from 0 to peak over warmup_steps, then cosine decay to peak * min_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = peak * min_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
