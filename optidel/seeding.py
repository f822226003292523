"""The one seeded-randomness helper: every random choice derives from (seed, stable ids).

Deriving from ids, never from call order, keeps results identical whatever the worker count
or the order in which Ray hands out batches.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive(seed: int, *keys: object) -> int:
    """A 64-bit integer from the seed and any stable keys (ids, names, indices)."""
    text = "\x1f".join([str(int(seed)), *(str(k) for k in keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def rng(seed: int, *keys: object) -> np.random.Generator:
    """A numpy Generator for (seed, *keys)."""
    return np.random.default_rng(derive(seed, *keys))


def torch_seed(seed: int, *keys: object) -> int:
    """derive() folded into the non-negative int64 range that torch seeds must lie in."""
    return derive(seed, *keys) & 0x7FFF_FFFF_FFFF_FFFF


def torch_generator(seed: int, *keys: object):
    """A CPU torch.Generator for (seed, *keys); torch is imported only here, on demand."""
    import torch

    gen = torch.Generator()
    gen.manual_seed(torch_seed(seed, *keys))
    return gen
