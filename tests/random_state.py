"""Deterministic random weights for parity fixtures made with the authors' code.

The fixture scripts (run in a scratch environment with the official code) and the parity tests (run
with lle) must put the same numbers into two different implementations of one architecture. Both
call ``seeded_state`` with the official module's state-dict keys and shapes; the values depend only
on the seed and on each key's name and shape, not on module creation order or the init either side
uses. Only torch is imported, so the scratch scripts can load this file by path.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import torch

__all__ = ["seeded_state"]


def _key_seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & (2**63 - 1)


def seeded_state(shapes: Mapping[str, tuple[int, ...]], seed: int = 0, *, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Float32 tensors for ``shapes``: weights with >= 2 dims ~ N(0, (scale / sqrt(fan_in))^2) (so
    activations neither vanish nor explode through a deep network), 1-dim tensors (biases, norms'
    shifts) ~ N(0, 0.1^2) except names ending in ``weight`` (norm scales), which are 1 + N(0, 0.1^2);
    scalars ~ N(0, 0.1^2). Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are zeros;
    ``running_var`` is 1 + |N(0, 0.1^2)|."""
    out: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = tuple(int(s) for s in shapes[key])
        g = torch.Generator().manual_seed(_key_seed(seed, key))
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.long)
            continue
        noise = torch.randn(shape, generator=g, dtype=torch.float32)
        if key.endswith("running_var"):
            out[key] = 1 + 0.1 * noise.abs()
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            out[key] = noise * (scale / math.sqrt(fan_in))
        elif key.endswith("weight") and len(shape) == 1:
            out[key] = 1 + 0.1 * noise
        else:
            out[key] = 0.1 * noise
    return out
