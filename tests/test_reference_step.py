"""One full training step of the reference preset (forward, loss, backward, optimizer step) equals
the same step computed here, independently, from the published recipe of Rectified LpJEPA
(YilunKuang/rectified-lp-jepa, a solo-learn fork):

- loss = 25 MSE(z1, z2) + 250 (SWD(z1) + SWD(z2)) / 2, SWD the sliced squared 2-Wasserstein
  distance to fresh ReLU(GN_1) samples (sort each projection over the batch, mean of squared
  differences), plus the online classifiers' cross-entropy on detached features and on z,
  averaged over the two views;
- one encoder forward per view (BatchNorm statistics per view);
- solo-learn's LARS (clip_lr, eta 0.02, eps 1e-8, biases and norm parameters excluded, momentum
  0.9) over the backbone/projector (weight decay 1e-4) and the classifiers (their own lr, no
  weight decay), at the lr of solo-learn's warmup-cosine schedule.

The random draws (slice directions, target samples) are inputs here, taken from the trainer's
seeded streams; everything else is written from the formulas. In float64, so that the 1e-5
tolerance measures the formulas, not float32 rounding in gradient sums. Checked at a step where clip_lr
leaves every layer at plain SGD (the first warmup step) and one where the trust ratio caps the
steps (the peak lr).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from jepa_ray import config as config_lib
from jepa_ray import seeding, targets
from jepa_ray.model import create_model
from jepa_ray.regularizers import create_regularizer, random_directions
from jepa_ray.train import TrainModule, train_step
from jepa_ray.train.optim import create_optimizer, schedule_step

BATCH, SIZE, CLASSES = 256, 12, 10
TOTAL_STEPS, WARMUP_STEPS = 100, 10


def reference_config():
    """The cifar10-resnet18 preset as it is, on a small backbone and small images."""
    return config_lib.resolve(
        config_lib.apply_overrides(
            config_lib.preset("cifar10-resnet18"),
            {
                "backbone": "jepa_convnet_tiny",
                "cifar_stem": False,
                "image_size": SIZE,
                "proj_dims": "64-64-64",
                "num_slices": 512,
                "sync_bn": False,
            },
        )
    )


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64) for _ in range(2)]
    return views, torch.randint(0, CLASSES, (BATCH,), generator=g)


def solo_lr(step: int, base: float, start: float) -> float:
    """solo-learn's LinearWarmupCosineAnnealingLR at `step` (eta_min 0)."""
    if step < WARMUP_STEPS:
        return start + step * (base - start) / (WARMUP_STEPS - 1)
    return 0.5 * base * (1 + math.cos(math.pi * (step - WARMUP_STEPS) / (TOTAL_STEPS - WARMUP_STEPS)))


def sliced_w2(z: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    zs = torch.sort(z @ directions.T, dim=0).values
    ys = torch.sort(y @ directions.T, dim=0).values
    return torch.mean(torch.mean((zs - ys) ** 2, dim=0))


def reference_step(module: TrainModule, views, labels, step: int, cfg) -> tuple[float, list[float]]:
    """The published recipe's step on `module` (modified in place); returns (the SSL loss,
    each LARS-adapted parameter's trust ratio / lr before clipping)."""
    encoder = module.encoder
    h1, z1 = encoder(views[0])
    h2, z2 = encoder(views[1])
    dims = z1.shape[1]
    directions = random_directions(
        cfg.loss.num_slices, dims, seeding.step_generator("cpu", cfg.system.seed, step, seeding.STREAM_DIRECTIONS)
    )
    y = targets.sample(
        "rgg",
        (2, BATCH, dims),
        p=1.0,
        mu=0.0,
        sigma=targets.sigma_gn(1.0),
        generator=seeding.step_generator("cpu", cfg.system.seed, step, seeding.STREAM_TARGETS),
    )
    directions, y = directions.double(), y.double()
    ssl = 25.0 * F.mse_loss(z1, z2) + 250.0 * (sliced_w2(z1, y[0], directions) + sliced_w2(z2, y[1], directions)) / 2
    classifier = (
        F.cross_entropy(module.probe_h(h1.detach()), labels) + F.cross_entropy(module.probe_h(h2.detach()), labels)
    ) / 2
    projector_classifier = (
        F.cross_entropy(module.probe_z(z1.detach()), labels) + F.cross_entropy(module.probe_z(z2.detach()), labels)
    ) / 2
    (ssl + classifier + projector_classifier).backward()

    start, ratios = cfg.optim.warmup_start_lr, []
    encoder_lr = solo_lr(step, cfg.optim.lr * BATCH / 256, start)
    classifier_lr = solo_lr(step, cfg.eval.online_probe_lr * BATCH / 256, start)
    groups = [
        (list(encoder.parameters()), encoder_lr, 1e-4),
        (list(module.probe_h.parameters()) + list(module.probe_z.parameters()), classifier_lr, 0.0),
    ]
    with torch.no_grad():
        for params, lr, weight_decay in groups:
            for p in params:
                d = p.grad
                p_norm, g_norm = p.norm().item(), p.grad.norm().item()
                if p.ndim != 1 and p_norm != 0 and g_norm != 0:
                    lars_lr = 0.02 * p_norm / (g_norm + p_norm * weight_decay + 1e-8)
                    ratios.append(lars_lr / lr)
                    lars_lr = min(lars_lr / lr, 1)
                    d = (d + weight_decay * p) * lars_lr
                p -= lr * d  # the first step: momentum buffer = d
    return ssl.item(), ratios


@pytest.mark.parametrize("step, regime", [(0, "plain SGD"), (WARMUP_STEPS, "trust ratio caps")])
def test_one_step_equals_the_published_recipe(step, regime):
    cfg = reference_config()
    assert (cfg.loss.lambd, cfg.loss.loss_scale, cfg.optim.optimizer) == (pytest.approx(5 / 7), 350.0, "lars")
    torch.manual_seed(0)
    ours = TrainModule(create_model(cfg), CLASSES, cfg.model.joint_view_forward).double()  # float64: exact formulas
    theirs, initial = copy.deepcopy(ours), copy.deepcopy(ours).state_dict()
    optimizer = create_optimizer(cfg, ours.encoder, torch.nn.ModuleList([ours.probe_h, ours.probe_z]))
    views, labels = batch(step)

    schedule_step(optimizer, step, TOTAL_STEPS, WARMUP_STEPS, cfg)
    stats = train_step(ours, create_regularizer(cfg), optimizer, views, labels, step, cfg)
    want_loss, ratios = reference_step(theirs, views, labels, step, cfg)

    if regime == "plain SGD":
        assert min(ratios) > 1  # clip_lr: every layer steps at lr
    else:
        assert sum(r < 1 for r in ratios) >= 3  # the trust ratio caps the steps of several layers
    assert stats.loss.item() == pytest.approx(want_loss, rel=1e-5)
    changed = 0
    for (name, got), want, before in zip(ours.state_dict().items(), theirs.state_dict().values(), initial.values()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")
        changed += not torch.equal(got, before)
    assert changed > 20  # the step moved the weights, biases, norm parameters and statistics
