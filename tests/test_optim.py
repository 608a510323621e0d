"""Optimizers and the learning-rate schedule against solo-learn's semantics: the warmup/cosine
values, LARS steps worked out by hand (the trust ratio capping a step and clip_lr leaving plain
SGD), an independent LARS written from solo-learn's formula, no weight decay (nor trust ratio)
on biases and norm parameters, and the online probes' groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jepa_ray import config as C
from jepa_ray.train.optim import (
    LARS,
    create_optimizer,
    lr_at,
    param_groups,
    peak_lr,
    probe_lr,
    schedule_step,
    warmup_steps,
)

# --------------------------------------------------------------------------------------------
# Schedule


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.01),  # warmup starts at `start`
        (3, 0.34),  # start + step (peak - start) / (warmup - 1)
        (9, 1.0),  # the last warmup step reaches the peak
        (10, 1.0),  # cosine starts at the peak
        (40, 0.75),  # progress 1/3: (1 + cos(pi/3)) / 2
        (55, 0.5),  # progress 1/2
        (100, 0.0),  # the end of the schedule
        (130, 0.0),  # past the end: stays at the floor
    ],
)
def test_lr_at_warmup_then_cosine(step, expected):
    assert lr_at(step, total_steps=100, warmup_steps=10, peak=1.0, start=0.01) == pytest.approx(expected, abs=1e-12)


def test_lr_at_matches_solo_learn_chained_scheduler():
    """solo-learn's LinearWarmupCosineAnnealingLR computes each step's lr from the previous one
    (chainable form); the closed form must give the same sequence."""
    total, warm, base, start, eta_min = 60, 7, 0.3, 3e-5, 0.0
    lrs = [start]
    for t in range(1, total):
        prev = lrs[-1]
        if t < warm:
            lrs.append(prev + (base - start) / (warm - 1))
        elif t == warm:
            lrs.append(base)
        elif (t - 1 - total) % (2 * (total - warm)) == 0:
            lrs.append(prev + (base - eta_min) * (1 - math.cos(math.pi / (total - warm))) / 2)
        else:
            lrs.append(
                (1 + math.cos(math.pi * (t - warm) / (total - warm)))
                / (1 + math.cos(math.pi * (t - warm - 1) / (total - warm)))
                * (prev - eta_min)
                + eta_min
            )
    assert [lr_at(t, total, warm, base, start=start) for t in range(total)] == pytest.approx(lrs, rel=1e-9, abs=1e-15)


def test_lr_at_min_ratio_floor_and_no_warmup():
    assert lr_at(100, 100, 10, peak=2.0, min_ratio=0.1) == pytest.approx(0.2)
    assert lr_at(55, 100, 10, peak=2.0, min_ratio=0.1) == pytest.approx(1.1)  # midway between peak and floor
    assert lr_at(0, 100, 0, peak=2.0, start=3e-5) == 2.0  # no warmup: cosine from the peak
    assert 0 < lr_at(99, 100, 0, peak=2.0) < 2.0 * 1e-3
    assert lr_at(0, 100, 1, peak=2.0, start=3e-5) == 3e-5 and lr_at(1, 100, 1, peak=2.0) == 2.0


def test_peak_lr_scales_with_batch_size():
    cfg = C.apply_overrides(C.TrialConfig(), {"lr": 0.03, "batch_size": 512, "online_probe_lr": 0.01})
    assert peak_lr(cfg) == pytest.approx(0.06) and probe_lr(cfg) == pytest.approx(0.02)


def test_a_shortened_preset_warms_up_for_at_most_half_its_run():
    """README: the warmup lasts warmup_epochs (the reference's 10), at most warmup_max_fraction
    (half) of the schedule: 1000 epochs warm up for 10, 40 for 10, 10 for 5, 1 for 0.5."""
    full = C.preset("cifar10-resnet18")
    assert warmup_steps(full, 195) == 10 * 195
    for epochs, warm in ((40, 10), (10, 5), (1, 0.5)):
        assert warmup_steps(C.apply_overrides(full, {"epochs": epochs}), 195) == round(warm * 195), epochs
    assert warmup_steps(C.apply_overrides(full, {"epochs": 40, "warmup_epochs": 2}), 195) == 2 * 195
    whole = C.apply_overrides(full, {"epochs": 10, "warmup_epochs": 10, "warmup_max_fraction": 1.0})
    assert warmup_steps(whole, 19) == 190  # the whole run, when asked for
    digits = C.preset("digits-sweep")
    assert warmup_steps(digits, 5) == 10 and warmup_steps(C.apply_overrides(digits, {"epochs": 1}), 5) == 2
    C.validate(C.apply_overrides(digits, {"epochs": 1}))  # --epochs 1 is not refused for its warmup


def test_schedule_step_sets_each_group_from_its_base_lr():
    cfg = C.resolve(
        C.apply_overrides(
            C.preset("cifar10-resnet18"), {"backbone": "jepa_convnet_tiny", "cifar_stem": False, "epochs": 10}
        )
    )
    opt = create_optimizer(cfg, Net(), nn.Linear(3, 2))
    schedule_step(opt, 0, 100, 10, cfg)
    assert {g["lr"] for g in opt.param_groups} == {cfg.optim.warmup_start_lr}
    schedule_step(opt, 10, 100, 10, cfg)
    by_name = {g["name"]: g["lr"] for g in opt.param_groups}
    assert by_name["encoder/decay"] == by_name["encoder/no_decay"] == pytest.approx(peak_lr(cfg))
    assert by_name["probes/decay"] == by_name["probes/no_decay"] == pytest.approx(probe_lr(cfg))


# --------------------------------------------------------------------------------------------
# LARS


def tiny_linear() -> nn.Linear:
    """Linear(2 -> 1) in float64 with weight [[3, 4]] (norm 5) and bias [1]."""
    lin = nn.Linear(2, 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0]]))
        lin.bias.copy_(torch.tensor([1.0]))
    return lin


def lars_step(opt: torch.optim.Optimizer, lin: nn.Linear, weight_grad, bias_grad, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
    lin.weight.grad = torch.tensor([weight_grad], dtype=torch.float64)
    lin.bias.grad = torch.tensor(bias_grad, dtype=torch.float64)
    opt.step()


def test_lars_step_where_the_trust_ratio_caps_it():
    lin = tiny_linear()
    opt = LARS(param_groups(lin, weight_decay=0.1), lr=0.5, weight_decay=0.1, momentum=0.9, eta=0.02)
    # g = [0.6, 0.8], |g| = 1, |w| = 5: t = 0.02 * 5 / (1 + 0.1 * 5 + 1e-8) = 0.1 / 1.5 (+eps);
    # clip_lr: min(t / lr, 1) = min(0.1333, 1) = 0.1333: it binds, the step is scaled.
    # d = (g + wd w) * 0.1333 = [0.9, 1.2] * 0.1333 = [0.12, 0.16]; w <- w - 0.5 d = [2.94, 3.92].
    # Bias: plain SGD, no weight decay: b <- 1 - 0.5 * 0.5 = 0.75.
    lars_step(opt, lin, [0.6, 0.8], [0.5], lr=0.5)
    t = 0.1 / (1.5 + 1e-8) / 0.5
    torch.testing.assert_close(
        lin.weight, torch.tensor([[3 - 0.5 * 0.9 * t, 4 - 0.5 * 1.2 * t]], dtype=torch.float64), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(lin.weight, torch.tensor([[2.94, 3.92]], dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(lin.bias, torch.tensor([0.75], dtype=torch.float64), rtol=0, atol=1e-12)
    # Step 2 (lr 0.5): w = [2.94, 3.92], |w| = 4.9; t = 0.02 * 4.9 / (1 + 0.49) / 0.5 = 0.13154;
    # d = ([0.6, 0.8] + 0.1 w) t = [0.894, 1.192] t; buf = 0.9 [0.12, 0.16] + d.
    lars_step(opt, lin, [0.6, 0.8], [0.5], lr=0.5)
    t2 = 0.02 * 4.9 / (1 + 0.49 + 1e-8) / 0.5
    buf = torch.tensor([0.9 * 0.12 + 0.894 * t2, 0.9 * 0.16 + 1.192 * t2], dtype=torch.float64)
    torch.testing.assert_close(
        lin.weight, torch.tensor([[2.94, 3.92]], dtype=torch.float64) - 0.5 * buf, rtol=0, atol=1e-8
    )  # step 1's eps is left out of the hand values
    torch.testing.assert_close(lin.bias, torch.tensor([0.75 - 0.5 * 0.95], dtype=torch.float64), rtol=0, atol=1e-12)


def test_lars_step_is_plain_sgd_where_clip_lr_leaves_it():
    lin = tiny_linear()
    opt = LARS(param_groups(lin, weight_decay=0.1), lr=1e-3, weight_decay=0.1, momentum=0.9, eta=0.02)
    # t / lr = 0.0667 / 0.001 = 66.7 > 1: clipped to 1, so d = g + wd w = [0.9, 1.2].
    lars_step(opt, lin, [0.6, 0.8], [0.5], lr=1e-3)
    torch.testing.assert_close(
        lin.weight, torch.tensor([[3 - 0.0009, 4 - 0.0012]], dtype=torch.float64), rtol=0, atol=1e-12
    )


def test_lars_zero_weight_or_gradient_takes_the_plain_gradient_without_decay():
    lin = tiny_linear()
    with torch.no_grad():
        lin.weight.zero_()
    opt = LARS(param_groups(lin, weight_decay=0.1), lr=0.5, weight_decay=0.1, momentum=0.9, eta=0.02)
    lars_step(opt, lin, [0.6, 0.8], [0.0], lr=0.5)
    torch.testing.assert_close(lin.weight, torch.tensor([[-0.3, -0.4]], dtype=torch.float64), rtol=0, atol=1e-12)
    lin = tiny_linear()
    opt = LARS(param_groups(lin, weight_decay=0.1), lr=0.5, weight_decay=0.1, momentum=0.9, eta=0.02)
    lars_step(opt, lin, [0.0, 0.0], [0.0], lr=0.5)  # a zero gradient: no step, not even weight decay
    torch.testing.assert_close(lin.weight, tiny_linear().weight, rtol=0, atol=0)


def solo_learn_lars(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list,
    lr: float,
    wd: float,
    eta: float = 0.02,
    momentum: float = 0.9,
    eps: float = 1e-8,
) -> None:
    """An independent LARS step written from solo-learn's formula (solo/utils/lars.py with
    clip_lr=True, exclude_bias_n_norm=True), in plain Python control flow."""
    for i, (p, g) in enumerate(zip(params, grads)):
        d = g
        p_norm, g_norm = float(p.norm()), float(g.norm())
        if p.ndim != 1 and p_norm != 0 and g_norm != 0:
            lars_lr = eta * p_norm / (g_norm + p_norm * wd + eps)
            lars_lr = min(lars_lr / lr, 1)
            d = (g + wd * p) * lars_lr
        bufs[i] = d.clone() if bufs[i] is None else bufs[i] * momentum + d
        p -= lr * bufs[i]


@pytest.mark.parametrize("lr", [1e-4, 0.05, 3.0])
def test_lars_equals_an_independent_solo_learn_lars_over_steps(lr):
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 3, 3), (4,), (4,), (10, 36), (10,)]
    params = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    mine = [nn.Parameter(p.clone()) for p in params]
    opt = LARS(
        [
            {"params": [q for q in mine if q.ndim > 1], "lars": True},
            {"params": [q for q in mine if q.ndim <= 1], "lars": False, "weight_decay": 0.0},
        ],
        lr=lr,
        weight_decay=1e-4,
    )
    bufs = [None] * len(params)
    for _ in range(4):
        grads = [torch.randn(s, generator=g, dtype=torch.float64) * 3 for s in shapes]
        for q, gr in zip(mine, grads):
            q.grad = gr.clone()
        opt.step()
        solo_learn_lars(params, grads, bufs, lr=lr, wd=1e-4)
    for q, p in zip(mine, params):
        torch.testing.assert_close(q.detach(), p, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Parameter groups


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)
        self.ln = nn.LayerNorm(3)

    def forward(self, x):
        return self.ln(self.fc(self.bn(self.conv(x)).flatten(1)))


def test_param_groups_exclude_biases_and_norms_from_decay():
    net = Net()
    decay, no_decay = param_groups(net, weight_decay=0.3)
    assert (decay["weight_decay"], decay["lars"]) == (0.3, True)
    assert (no_decay["weight_decay"], no_decay["lars"]) == (0.0, False)
    assert {id(p) for p in decay["params"]} == {id(net.conv.weight), id(net.fc.weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(p) for p in (net.conv.bias, net.bn.weight, net.bn.bias, net.fc.bias, net.ln.weight, net.ln.bias)
    }


def test_frozen_parameters_are_left_out():
    net = Net()
    net.conv.weight.requires_grad_(False)
    decay, _ = param_groups(net, weight_decay=0.3)
    assert {id(p) for p in decay["params"]} == {id(net.fc.weight)}


def test_the_probes_have_their_own_lr_and_no_weight_decay():
    cfg = C.apply_overrides(
        C.TrialConfig(),
        {"optimizer": "lars", "lr": 0.03, "online_probe_lr": 0.01, "weight_decay": 1e-4, "batch_size": 512},
    )
    probes = nn.ModuleList([nn.Linear(8, 3), nn.Linear(5, 3)])
    opt = create_optimizer(cfg, Net(), probes)
    groups = {g["name"]: g for g in opt.param_groups}
    assert (groups["encoder/decay"]["weight_decay"], groups["encoder/decay"]["base_lr"]) == (1e-4, pytest.approx(0.06))
    assert groups["probes/decay"]["weight_decay"] == groups["probes/no_decay"]["weight_decay"] == 0.0
    assert groups["probes/decay"]["lars"] and not groups["probes/no_decay"]["lars"]  # solo-learn: ndim > 1
    assert groups["probes/decay"]["base_lr"] == pytest.approx(0.02)
    assert sum(len(g["params"]) for g in opt.param_groups) == 8 + 4


@pytest.mark.parametrize("optimizer", ["adamw", "lars"])
def test_only_weights_decay(optimizer):
    """AdamW with zero gradients: w <- w (1 - lr wd). LARS: a plain-SGD step (lr small enough
    that clip_lr leaves it) on a gradient of the weights' own direction g = c w moves
    w by -lr (c + wd) w; biases and norm parameters with a zero gradient do not move."""
    cfg = C.apply_overrides(
        C.TrialConfig(), {"optimizer": optimizer, "lr": 0.01, "weight_decay": 0.2, "batch_size": 256}
    )
    net = Net().double()
    with torch.no_grad():
        for p in (net.bn.weight, net.bn.bias, net.ln.weight, net.ln.bias):
            p.add_(torch.rand_like(p))  # norm parameters away from their 1/0 initialization
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = create_optimizer(cfg, net)
    assert isinstance(opt, LARS if optimizer == "lars" else torch.optim.AdamW)
    assert all(g["lr"] == peak_lr(cfg) for g in opt.param_groups)
    c = 0.0 if optimizer == "adamw" else 1e-3
    for n, p in net.named_parameters():
        p.grad = c * p.detach().clone() if n in ("conv.weight", "fc.weight") else torch.zeros_like(p)
    opt.step()
    shrink = 1 - 0.01 * (0.2 if optimizer == "adamw" else c + 0.2)
    for name, p in net.named_parameters():
        if name in ("conv.weight", "fc.weight"):
            torch.testing.assert_close(p.detach(), before[name] * shrink, rtol=1e-12, atol=0)
        else:
            assert torch.equal(p.detach(), before[name]), name
