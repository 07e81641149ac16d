"""A loaded model with everything the caller needs to run it on an arbitrary image.

Padding to the family's size constraints, precision, inference mode, clamping and cropping are done
here once instead of in every model or command.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import LLEError
from .models import FAMILIES, FamilySpec
from .registry import ModelEntry

__all__ = ["LoadedModel", "NonFiniteOutputError"]


class NonFiniteOutputError(LLEError):
    """The network produced NaN or Inf; nothing is written."""


def _pad_amounts(size: int, spec: FamilySpec) -> tuple[int, int]:
    target = max(size, spec.min_size)
    target = -(-target // spec.multiple_of) * spec.multiple_of
    extra = target - size
    return extra // 2, extra - extra // 2


@dataclass
class LoadedModel:
    entry: ModelEntry
    module: nn.Module
    device: torch.device
    dtype: torch.dtype
    weights_source: str

    @property
    def spec(self) -> FamilySpec:
        return FAMILIES[self.entry.family]

    @property
    def name(self) -> str:
        return self.entry.name

    def enhance_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> enhanced (B, 3, H, W) float32 in [0, 1] on the CPU."""
        h, w = x.shape[-2:]
        top, bottom = _pad_amounts(h, self.spec)
        left, right = _pad_amounts(w, self.spec)
        x = x.to(self.device, self.dtype)
        if top or bottom or left or right:
            # reflect needs more pixels than it pads; tiny images fall back to edge replication
            mode = "reflect" if min(h, w) > max(top, bottom, left, right) else "replicate"
            x = F.pad(x, (left, right, top, bottom), mode=mode)
        with torch.inference_mode():
            y = self.module(x)
        y = y[..., top : top + h, left : left + w].float().cpu()
        if not torch.isfinite(y).all():
            raise NonFiniteOutputError(
                f"model {self.name} produced NaN/Inf values (precision {str(self.dtype).removeprefix('torch.')}); "
                "try --precision fp32"
            )
        return y.clamp(0.0, 1.0)

    def enhance(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1] -> enhanced (H, W, 3) float32 in [0, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        return self.enhance_tensor(x)[0].permute(1, 2, 0).numpy()
