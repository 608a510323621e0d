"""Dominance on any number of objectives: the non-dominated set, non-dominated ranks, the exact
hypervolume and the knee point (all on points turned into minimization)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from jepa_ray.pareto.objectives import Objective


def _directions(directions: Sequence[str | Objective], k: int) -> np.ndarray:
    dirs = [d.direction if isinstance(d, Objective) else d for d in directions]
    if len(dirs) != k:
        raise ValueError(f"directions: {len(dirs)} given for {k} objectives")
    bad = [d for d in dirs if d not in ("max", "min")]
    if bad:
        raise ValueError(f"directions: {bad[0]!r} is not allowed; allowed: max, min")
    return np.array([-1.0 if d == "max" else 1.0 for d in dirs])


def _as_minimization(values: np.ndarray, directions: Sequence[str | Objective]) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values: expected an (n, k) array, got shape {values.shape}")
    if np.isnan(values).any():
        raise ValueError("values: NaN is not allowed (drop infeasible points first)")
    return values * _directions(directions, values.shape[1])


def _non_dominated_min(m: np.ndarray) -> np.ndarray:
    """Mask of points no other point weakly dominates (<= everywhere, < somewhere)."""
    n, k = m.shape
    if n == 0:
        return np.zeros(0, dtype=bool)
    if k == 2:
        return _non_dominated_2d(m)
    # A dominator precedes its victim in lexicographic order, and every dominated point has a
    # non-dominated dominator (a strict partial order has maximal elements): comparing each
    # block of points with the front found so far and with the block itself is enough.
    order = np.lexsort(m.T[::-1])
    keep = np.zeros(n, dtype=bool)
    front = np.empty((0, k))
    for start in range(0, n, _BLOCK):
        idx = order[start : start + _BLOCK]
        block = m[idx]
        alive = ~_dominated_by(block, front) & ~_dominated_by(block, block)
        keep[idx[alive]] = True
        front = np.concatenate([front, block[alive]])
    return keep


_BLOCK = 64


def _dominated_by(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Mask of points weakly dominated by at least one of others."""
    if len(others) == 0:
        return np.zeros(len(points), dtype=bool)
    le = np.ones((len(points), len(others)), dtype=bool)
    lt = np.zeros_like(le)
    for j in range(points.shape[1]):
        a, b = others[None, :, j], points[:, None, j]
        le &= a <= b
        lt |= a < b
    return np.any(le & lt, axis=1)


def _non_dominated_2d(m: np.ndarray) -> np.ndarray:
    """O(n log n): after sorting by (x, y), p is dominated iff a point with smaller x has
    y <= p.y, or a point with the same x has a smaller y."""
    n = len(m)
    order = np.lexsort((m[:, 1], m[:, 0]))
    x, y = m[order, 0], m[order, 1]
    idx = np.arange(n)
    new_group = np.r_[True, x[1:] != x[:-1]]
    start = np.maximum.accumulate(np.where(new_group, idx, 0))
    prefix_min = np.minimum.accumulate(y)
    before = np.where(start > 0, prefix_min[np.maximum(start - 1, 0)], np.inf)
    dominated = (before <= y) | (y[start] < y)
    keep = np.empty(n, dtype=bool)
    keep[order] = ~dominated
    return keep


def non_dominated(values: np.ndarray, directions: Sequence[str | Objective]) -> np.ndarray:
    """Mask of the Pareto-optimal rows of values (n, k) under per-column directions
    ("max"/"min"); equal points do not dominate each other, so duplicates share the front."""
    return _non_dominated_min(_as_minimization(values, directions))


def nondominated_ranks(values: np.ndarray, directions: Sequence[str | Objective]) -> np.ndarray:
    """Front index of every row (1 = Pareto front, 2 = front once the first is removed, ...)."""
    m = _as_minimization(values, directions)
    if m.shape[1] == 2:
        return _ranks_2d(m)
    ranks = np.zeros(len(m), dtype=np.int64)
    remaining = np.arange(len(m))
    rank = 0
    while len(remaining):
        rank += 1
        keep = _non_dominated_min(m[remaining])
        ranks[remaining[keep]] = rank
        remaining = remaining[~keep]
    return ranks


def _ranks_2d(m: np.ndarray) -> np.ndarray:
    """O(n log n) non-dominated sorting in 2-D (points in (x, y) order; a front's last point
    dominates p iff its (y, x) key is lexicographically below p's, and these keys increase
    with the front index, so a bisection finds p's front)."""
    order = np.lexsort((m[:, 1], m[:, 0]))
    ranks = np.zeros(len(m), dtype=np.int64)
    keys: list[tuple[float, float]] = []
    for i in order:
        key = (float(m[i, 1]), float(m[i, 0]))
        front = bisect.bisect_left(keys, key)
        if front == len(keys):
            keys.append(key)
        else:
            keys[front] = key
        ranks[i] = front + 1
    return ranks


def crowding_distance(values: np.ndarray, directions: Sequence[str | Objective] | None = None) -> np.ndarray:
    """NSGA-II's crowding distance of the points of one front (infinite at each objective's
    ends; directions do not change it, they are checked when given)."""
    m = np.asarray(values, dtype=float) if directions is None else _as_minimization(values, directions)
    n, k = m.shape
    if n <= 2:
        return np.full(n, np.inf)
    dist = np.zeros(n)
    for j in range(k):
        order = np.argsort(m[:, j], kind="stable")
        span = m[order[-1], j] - m[order[0], j]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (m[order[2:], j] - m[order[:-2], j]) / span
    return dist


def dominator_counts(values: np.ndarray, directions: Sequence[str | Objective]) -> np.ndarray:
    """How many rows dominate each row (<= in every objective, < in one)."""
    m = _as_minimization(values, directions)
    le = np.all(m[None, :, :] <= m[:, None, :], axis=2)
    lt = np.any(m[None, :, :] < m[:, None, :], axis=2)
    return np.sum(le & lt, axis=1)


def hypervolume(values: np.ndarray, directions: Sequence[str | Objective], reference: Sequence[float]) -> float:
    """Exact volume of the objective space dominated by the points and bounded by the reference
    point. Points not strictly better than the reference in every objective add nothing.
    2-D: one sweep; k >= 3: slicing along the last objective (HSO), cost ~ n^(k-1), meant for
    fronts of tens to hundreds of points."""
    m = _as_minimization(values, directions)
    ref = np.asarray(reference, dtype=float) * _directions(directions, m.shape[1])
    if ref.shape != (m.shape[1],) or not np.isfinite(ref).all():
        raise ValueError(f"reference: expected {m.shape[1]} finite numbers, got {list(reference)}")
    return float(_hv_min(m, ref))


def _hv_min(m: np.ndarray, ref: np.ndarray) -> float:
    m = m[np.all(m < ref, axis=1)]
    if len(m) == 0:
        return 0.0
    m = m[_non_dominated_min(m)]
    k = m.shape[1]
    if k == 1:
        return float(ref[0] - m[:, 0].min())
    if k == 2:
        return _hv_2d(m, ref)
    m = m[np.argsort(m[:, -1], kind="stable")]
    upper = np.r_[m[1:, -1], ref[-1]]
    volume = 0.0
    for i in range(len(m)):
        depth = upper[i] - m[i, -1]
        if depth > 0:
            volume += depth * _hv_min(m[: i + 1, :-1], ref[:-1])
    return volume


def _hv_2d(m: np.ndarray, ref: np.ndarray) -> float:
    """Sum of the rectangles between consecutive front points (x ascending, y descending)."""
    m = m[np.argsort(m[:, 0], kind="stable")]
    widths = np.r_[m[1:, 0], ref[0]] - m[:, 0]
    return float(np.sum(widths * (ref[1] - m[:, 1])))


def knee_point(front_values: np.ndarray, directions: Sequence[str | Objective]) -> int:
    """Index of the knee of a front: each objective is scaled to [0, 1] over the front (0 =
    best), and the knee is the point with the smallest sum of scaled objectives, i.e. the one
    farthest on the ideal side of the hyperplane sum = 1; in 2-D this hyperplane is the line
    through the two extreme points, so this is the classic maximum-distance-to-chord knee.
    Ties go to the first point."""
    m = _as_minimization(front_values, directions)
    if len(m) == 0:
        raise ValueError("knee_point: the front is empty")
    lo, hi = m.min(axis=0), m.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return int(np.argmin(((m - lo) / span).sum(axis=1)))
