"""The index streams that feed the trainer: each epoch's shuffled global batches, sharded per
rank from a permutation every rank computes identically (seeded by (seed, epoch), see
jepa_ray.seeding), so no DataLoader and no DistributedSampler are involved."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from jepa_ray.seeding import STREAM_BATCHES, step_seed


class BatchIterator:
    """Shuffled mini-batch indices of a train split for one rank of `world_size`.

    Each epoch draws one permutation of range(n) seeded by (seed, epoch), the same on every rank;
    step s uses rows [s*B, (s+1)*B) of it as the global batch and rank r takes its slice
    [r*B/W, (r+1)*B/W). The incomplete last batch is dropped so every rank runs the same number of
    steps (a collective would otherwise hang).
    """

    def __init__(self, n: int, global_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        if world_size < 1:
            raise ValueError(f"world_size: expected >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError(
                f"global_batch_size: expected a positive multiple of world_size={world_size}, got {global_batch_size}"
            )
        if global_batch_size > n:
            raise ValueError(f"global_batch_size: expected <= the number of samples n={n}, got {global_batch_size}")
        self.n, self.global_batch_size = n, global_batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.local_batch_size = global_batch_size // world_size
        self.epoch = 0
        self._cached: tuple[int, torch.Tensor] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.global_batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != epoch:
            gen = torch.Generator().manual_seed(step_seed(self.seed, epoch, STREAM_BATCHES))
            self._cached = (epoch, torch.randperm(self.n, generator=gen))
        return self._cached[1]

    def global_batch_indices(self, epoch: int, step: int) -> torch.Tensor:
        """The indices of the whole global batch of (epoch, step), as a single process sees it."""
        if not 0 <= step < len(self):
            raise ValueError(f"step: expected 0 <= step < {len(self)}, got {step}")
        start = step * self.global_batch_size
        return self.permutation(epoch)[start : start + self.global_batch_size]

    def local_batch_indices(self, epoch: int, step: int) -> torch.Tensor:
        start = self.rank * self.local_batch_size
        return self.global_batch_indices(epoch, step)[start : start + self.local_batch_size]

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch = self.epoch
        for step in range(len(self)):
            yield self.local_batch_indices(epoch, step)


def eval_batches(n: int, batch_size: int) -> Iterator[slice]:
    """Contiguous slices covering range(n) in order (feature extraction: views, not copies)."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
