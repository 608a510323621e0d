"""The learning-rate schedule as numbers: solo-learn's linear warmup then per-step cosine decay
(the trainer's optimizer groups, jepa_ray.train.optim) and the cosine factor the grid of linear
heads decays by (jepa_ray.eval.probe)."""

from __future__ import annotations

import math


def cosine_factor(step: float, total: float) -> float:
    """(1 + cos(pi * min(step / total, 1))) / 2: from 1 at step 0 down to 0 at `total` (the
    decay of the probes' grid and of the trainer's schedule, lr_at)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(total, 1))))


def lr_at(
    step: int, total_steps: int, warmup_steps: int, peak: float, min_ratio: float = 0.0, start: float = 0.0
) -> float:
    """solo-learn's LinearWarmupCosineAnnealingLR stepped per step: `start` at step 0, linear
    to `peak` at step warmup_steps - 1, then cosine from the peak at step warmup_steps down to
    peak * min_ratio at the last step. No warmup: cosine from step 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return start if warmup_steps == 1 else start + step * (peak - start) / (warmup_steps - 1)
    floor = peak * min_ratio
    return floor + (peak - floor) * cosine_factor(step - warmup_steps, total_steps - warmup_steps)
