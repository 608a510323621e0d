"""Every random draw of a trial comes from a generator seeded by (run seed, counter, stream):
the batch order of an epoch, the augmentations and slice directions and target samples of a
global step. Seeds depend on nothing else (not on the process, the rank or the world size),
so all ranks draw the same directions and targets without communicating, and a run resumed
from an epoch checkpoint repeats the uninterrupted one exactly. This table is every stream."""

from __future__ import annotations

import torch

STREAM_DIRECTIONS = 1  # per step: the regularizers' unit directions
STREAM_TARGETS = 2  # per step: RDMReg's target samples
STREAM_BATCHES = 3  # per epoch: the permutation of the training split
STREAM_AUGMENT = 100  # per step: the views of the global batch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_seed(seed: int, counter: int, stream: int) -> int:
    """A 63-bit seed from (run seed, step or epoch, stream id), well mixed (splitmix64)."""
    return _splitmix64(_splitmix64(_splitmix64(seed) ^ counter) ^ stream) & ((1 << 63) - 1)


def step_generator(device: torch.device | str, seed: int, counter: int, stream: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(step_seed(seed, counter, stream))
    return g
