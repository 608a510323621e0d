"""End-of-trial evaluation on frozen features: the grid of linear heads on backbone features
(`linear_acc`) and on z (`linear_acc_z`), weighted kNN (`knn_acc`), sparsity of z and of the
backbone features, RankMe, and the closed-form target density."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from jepa_ray import metrics, targets
from jepa_ray.config.schema import float_list
from jepa_ray.eval import probe

if TYPE_CHECKING:
    from jepa_ray.config import TrialConfig


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images_u8: torch.Tensor,
    normalize,
    *,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features and z of every image (eval mode, center = the whole image)."""
    was_training = model.training
    model.eval()
    feats, zs = [], []
    for start in range(0, images_u8.shape[0], batch_size):
        x = normalize(images_u8[start : start + batch_size].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            h, z = model(x)
        feats.append(h.float())
        zs.append(z.float())
    model.train(was_training)
    return torch.cat(feats), torch.cat(zs)


def target_l0_density(cfg: TrialConfig) -> float:
    """Closed-form fraction of non-zero coordinates of the target (1 without rectification)."""
    if cfg.target.target != "rgg":
        return 1.0
    return targets.expected_l0_density(cfg.target.p, cfg.target.mu, cfg.target.sigma)


def evaluate(
    cfg: TrialConfig,
    train_h: torch.Tensor,
    train_z: torch.Tensor,
    train_y: torch.Tensor,
    test_h: torch.Tensor,
    test_z: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    device: torch.device,
) -> dict[str, float]:
    """The docs/design.md final metrics from cached features of the train and test splits."""
    e = cfg.eval
    grid = dict(
        lrs=float_list(e.probe_lrs),
        wds=float_list(e.probe_wds),
        epochs=e.probe_epochs,
        val_fraction=e.val_fraction,
        seed=cfg.system.seed,
        device=device,
        num_classes=num_classes,
    )
    on_h = probe.fit_linear_grid(train_h, train_y, test_h, test_y, **grid)
    on_z = probe.fit_linear_grid(train_z, train_y, test_z, test_y, **grid)
    z_summary = metrics.summary(test_z)
    return {
        "linear_acc": on_h["test_acc"],
        "linear_acc_z": on_z["test_acc"],
        "knn_acc": probe.knn_accuracy(
            train_h, train_y, test_h, test_y, k=e.knn_k, temperature=e.knn_temperature, num_classes=num_classes
        ),
        "l0_density": z_summary["l0_density"],
        "target_l0_density": target_l0_density(cfg),
        "l0_density_backbone": metrics.l0_density(test_h),
        "rank_me": z_summary["rank_me"],
        "l1_sparsity": z_summary["l1_sparsity"],
        "dead_fraction": z_summary["dead_fraction"],
        "always_active_fraction": z_summary["always_active_fraction"],
        "probe_best_lr": on_h["best_lr"],
        "probe_best_wd": on_h["best_wd"],
    }


def evaluate_encoder(
    cfg: TrialConfig,
    model: nn.Module,
    splits,
    normalize,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    batch_size: int = 512,
) -> tuple[dict[str, float], torch.Tensor]:
    """`evaluate` on the frozen features of both splits of `splits` (an ImageSplits); also
    returns z of the test split."""
    kw = dict(batch_size=batch_size, device=device, autocast_dtype=autocast_dtype)
    tr_h, tr_z = extract_features(model, splits.train_x, normalize, **kw)
    te_h, te_z = extract_features(model, splits.test_x, normalize, **kw)
    result = evaluate(cfg, tr_h, tr_z, splits.train_y, te_h, te_z, splits.test_y, splits.num_classes, device)
    return result, te_z
