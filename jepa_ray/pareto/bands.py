"""Accuracy regret per density band: a front metric that reads the whole sparsity-accuracy front.
The hypervolume at reference (0, 1) can rest on one point (on the cifar10-cpu table the row at
2.8% density holds 0.454 of the table's 0.483), so a search that finds that row scores as if it
found the front; this metric weighs every density band the table covers equally."""

from __future__ import annotations

import math
from collections.abc import Sequence

BAND_FACTOR = 2.0


def band_of(density: float, factor: float = BAND_FACTOR) -> int:
    """The band holding `density`: [factor**k, factor**(k+1))."""
    return math.floor(math.log(max(density, 1e-9)) / math.log(factor))


def band_regret(
    found: Sequence[tuple[float, float]], reference: Sequence[tuple[float, float]], factor: float = BAND_FACTOR
) -> float:
    """Mean over the bands the reference's (accuracy, density) points cover of how far the best
    accuracy found at a density below the band's upper edge falls short of the reference's best
    there (never negative; 0 for nothing found is an accuracy of 0). Read at the upper edges, a
    sparser point serves every denser band too: the epsilon-constraint view of the front."""
    bands = sorted({band_of(d, factor) for _, d in reference})
    if not bands:
        raise ValueError("band_regret: the reference has no points")
    total = 0.0
    for band in bands:
        edge = factor ** (band + 1)
        best = max(a for a, d in reference if d < edge)
        got = max((a for a, d in found if d < edge), default=0.0)
        total += max(0.0, best - got)
    return total / len(bands)
