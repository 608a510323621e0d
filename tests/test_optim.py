"""Optimizers and the learning-rate schedule: warmup/cosine values, a LARS step worked out by
hand, and no weight decay (nor LARS adaptation) on biases and norm parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jepa_ray import config as C
from jepa_ray.optim import LARS, create_optimizer, lr_at, param_groups, peak_lr, set_lr

# --------------------------------------------------------------------------------------------
# Schedule


@pytest.mark.parametrize("step, expected", [
    (0, 0.1),      # warmup: (step + 1) / warmup_steps of the peak
    (4, 0.5),
    (9, 1.0),      # the last warmup step reaches the peak
    (10, 1.0),     # cosine starts at the peak
    (40, 0.75),    # progress 1/3: (1 + cos(pi/3)) / 2
    (55, 0.5),     # progress 1/2
    (100, 0.0),    # the end of the schedule
    (130, 0.0),    # past the end: stays at the floor
])
def test_lr_at_warmup_then_cosine(step, expected):
    assert lr_at(step, total_steps=100, warmup_steps=10, peak=1.0) == pytest.approx(expected, abs=1e-12)


def test_lr_at_min_ratio_floor_and_no_warmup():
    assert lr_at(100, 100, 10, peak=2.0, min_ratio=0.1) == pytest.approx(0.2)
    assert lr_at(55, 100, 10, peak=2.0, min_ratio=0.1) == pytest.approx(1.1)  # midway between peak and floor
    assert lr_at(0, 100, 0, peak=2.0) == 2.0
    assert 0 < lr_at(99, 100, 0, peak=2.0) < 2.0 * 1e-3


def test_lr_at_rises_then_falls():
    lrs = [lr_at(s, 50, 8, peak=0.3) for s in range(50)]
    assert all(a < b for a, b in zip(lrs[:7], lrs[1:8]))  # steps 0..7 warm up to the peak
    assert all(a >= b for a, b in zip(lrs[7:], lrs[8:]))
    assert max(lrs) == pytest.approx(0.3)


def test_peak_lr_scales_with_batch_size():
    cfg = C.apply_overrides(C.TrialConfig(), {"lr": 0.03, "batch_size": 512})
    assert peak_lr(cfg) == pytest.approx(0.06)


# --------------------------------------------------------------------------------------------
# LARS


def tiny_linear() -> nn.Linear:
    """Linear(2 -> 1) in float64 with weight [[3, 4]] (norm 5) and bias [1]."""
    lin = nn.Linear(2, 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0]]))
        lin.bias.copy_(torch.tensor([1.0]))
    return lin


def lars_step(opt: torch.optim.Optimizer, lin: nn.Linear, weight_grad, bias_grad) -> None:
    lin.weight.grad = torch.tensor([weight_grad], dtype=torch.float64)
    lin.bias.grad = torch.tensor(bias_grad, dtype=torch.float64)
    opt.step()


def test_lars_two_steps_match_hand_computation():
    lin = tiny_linear()
    opt = LARS(param_groups(lin, weight_decay=0.1), lr=0.5, weight_decay=0.1, momentum=0.9, eta=0.02)

    # Step 1, weight: d = g + wd w = [0.6, 0.8] + 0.1 [3, 4] = [0.9, 1.2], |d| = 1.5;
    # trust = eta |w| / |d| = 0.02 * 5 / 1.5 = 1/15; buf = trust d = [0.06, 0.08];
    # w <- w - lr buf = [3, 4] - [0.03, 0.04].
    # Bias (no decay, no trust ratio): buf = 0.5; b <- 1 - 0.5 * 0.5 = 0.75.
    lars_step(opt, lin, [0.6, 0.8], [0.5])
    torch.testing.assert_close(lin.weight, torch.tensor([[2.97, 3.96]], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(lin.bias, torch.tensor([0.75], dtype=torch.float64), rtol=0, atol=1e-12)

    # Step 2, weight: w = 0.99 [3, 4]; d = [0.6, 0.8] + 0.099 [3, 4] = 0.299 [3, 4], |d| = 1.495;
    # trust d = 0.02 * 4.95 / 1.495 * 0.299 [3, 4] = 0.0198 [3, 4] = [0.0594, 0.0792];
    # buf = 0.9 [0.06, 0.08] + [0.0594, 0.0792] = [0.1134, 0.1512];
    # w <- [2.97, 3.96] - 0.5 buf = [2.9133, 3.8844].
    # Bias: buf = 0.9 * 0.5 + 0.5 = 0.95; b <- 0.75 - 0.475 = 0.275.
    lars_step(opt, lin, [0.6, 0.8], [0.5])
    torch.testing.assert_close(lin.weight, torch.tensor([[2.9133, 3.8844]], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(lin.bias, torch.tensor([0.275], dtype=torch.float64), rtol=0, atol=1e-12)


def test_lars_zero_weight_falls_back_to_plain_sgd():
    lin = tiny_linear()
    with torch.no_grad():
        lin.weight.zero_()
    opt = LARS(param_groups(lin, weight_decay=0.1), lr=0.5, weight_decay=0.1, momentum=0.9, eta=0.02)
    lars_step(opt, lin, [0.6, 0.8], [0.0])
    # |w| = 0: trust ratio 1, so w <- 0 - lr (g + wd * 0).
    torch.testing.assert_close(lin.weight, torch.tensor([[-0.3, -0.4]], dtype=torch.float64), rtol=0, atol=1e-12)


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
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in (net.conv.bias, net.bn.weight, net.bn.bias,
                                                                   net.fc.bias, net.ln.weight, net.ln.bias)}


def test_frozen_parameters_are_left_out():
    net = Net()
    net.conv.weight.requires_grad_(False)
    decay, _ = param_groups(net, weight_decay=0.3)
    assert {id(p) for p in decay["params"]} == {id(net.fc.weight)}


@pytest.mark.parametrize("optimizer, shrink", [
    # Zero gradients isolate the decay term. AdamW: w <- w (1 - lr wd) (the Adam step is 0).
    ("adamw", lambda lr, wd: 1 - lr * wd),
    # LARS: d = wd w, trust = eta |w| / (wd |w|), so w <- w - lr eta w (eta = 0.02).
    ("lars", lambda lr, wd: 1 - lr * 0.02),
])
def test_only_weights_decay(optimizer, shrink):
    cfg = C.apply_overrides(C.TrialConfig(), {"optimizer": optimizer, "lr": 0.5, "weight_decay": 0.2,
                                              "batch_size": 256})
    net = Net().double()
    with torch.no_grad():
        for p in (net.bn.weight, net.bn.bias, net.ln.weight, net.ln.bias):
            p.add_(torch.rand_like(p))  # norm parameters away from their 1/0 initialization
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = create_optimizer(cfg, net)
    assert isinstance(opt, LARS if optimizer == "lars" else torch.optim.AdamW)
    assert all(g["lr"] == peak_lr(cfg) for g in opt.param_groups)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in net.named_parameters():
        if name in ("conv.weight", "fc.weight"):
            torch.testing.assert_close(p.detach(), before[name] * shrink(0.5, 0.2), rtol=1e-12, atol=0)
        else:
            assert torch.equal(p.detach(), before[name]), name


def test_set_lr_sets_every_group():
    opt = create_optimizer(C.TrialConfig(), Net())
    set_lr(opt, 0.123)
    assert [g["lr"] for g in opt.param_groups] == [0.123, 0.123]
