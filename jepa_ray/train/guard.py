"""Why a trial stops early on its own: a non-finite loss, or a collapsed representation (the
collapse guard). Both raise TrialFailure, which is not retried (it would fail again), with the
failure kind the sweep reports (jepa_ray.contract.FailureKind). Without torch: a replayed
sweep's driver applies the collapse guard to every row of its table."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from jepa_ray.config.resolve import target_l0_density
from jepa_ray.contract import FailureKind
from jepa_ray.targets import get_target

if TYPE_CHECKING:
    from jepa_ray.config import TrialConfig


class TrialFailure(RuntimeError):
    """A trial that cannot produce a useful result; `kind` says why (failed or collapsed)."""

    def __init__(self, message: str, kind: FailureKind = FailureKind.FAILED):
        super().__init__(message)
        self.kind = kind


def check_finite(pending, epoch: int) -> None:
    """Raise TrialFailure if the recorded (step, loss, invariance, regularizer) is not finite."""
    if pending is None:
        return
    step, loss, inv, reg = pending
    if not math.isfinite(loss):  # a 0-d tensor (one sync, as torch.isfinite's bool would be)
        raise TrialFailure(
            f"non-finite loss at epoch {epoch} step {step}: invariance={inv.item():.4g} regularizer={reg.item():.4g}"
        )


def collapse_reason(cfg: TrialConfig, m: dict) -> str | None:
    """Why a trial is hopeless after the warm-up (None while it is not): z all zeros or far
    sparser than its target, z never sparse although the target is, or an effective rank
    near 1."""
    s = cfg.system
    if not s.collapse_guard or m["epoch"] + 1 <= s.collapse_warmup_epochs:
        return None
    density = m["train/l0_density"]
    if density <= 1e-4:
        return f"train/l0_density={density:.2g}: z is all zeros (dead projector)"
    target = target_l0_density(cfg)
    if density >= 0.9999 and target < 0.9:
        return f"train/l0_density={density:.4f}: z never sparse although the target density is {target:.3f}"
    if get_target(cfg.target.target).rectified and density < s.collapse_min_density_ratio * target:
        return (
            f"train/l0_density={density:.4f} is below {s.collapse_min_density_ratio:g} x the target density "
            f"{target:.3f}: z is collapsing to all zeros"
        )
    if m["train/rank_me"] < s.collapse_min_rank:
        return f"train/rank_me={m['train/rank_me']:.3f} < {s.collapse_min_rank}: representation collapsed"
    return None


def check_collapse(cfg: TrialConfig, m: dict) -> None:
    """Raise TrialFailure (kind collapsed) when collapse_reason finds one."""
    why = collapse_reason(cfg, m)
    if why:
        raise TrialFailure(f"collapse at epoch {m['epoch']}: {why}", FailureKind.COLLAPSED)
