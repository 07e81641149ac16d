"""LLFlow's input pipeline, exactly as the official ``test_unpaired.py`` runs it.

1. ``auto_padding``: pad every axis by ``16 - size % 16`` pixels (so by 16 when the size is already a
   multiple), ``total // 2`` before and the rest after, mirroring with the edge pixel repeated
   (OpenCV ``BORDER_REFLECT`` = numpy ``symmetric``: ``cba|abc``).
2. Histogram-equalise each channel of the **padded** 8-bit image with OpenCV's ``equalizeHist``
   algorithm (re-implemented here; OpenCV is not a dependency).
3. Network input ``lq = cat(log(clamp(x + 1e-3, min=1e-3)), histeq / 255)``.

All functions are pure and work on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "Padding",
    "auto_padding",
    "pad_symmetric",
    "equalize_hist",
    "quantize_u8",
    "log_image",
    "symmetric_index",
    "network_input",
]


@dataclass(frozen=True)
class Padding:
    """Pixels added on each side; ``crop`` undoes ``pad_symmetric``."""

    top: int
    bottom: int
    left: int
    right: int

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return x[..., self.top : h - self.bottom, self.left : w - self.right]


def _split(total: int) -> tuple[int, int]:
    return total // 2, total - total // 2


def auto_padding(height: int, width: int, multiple: int = 16) -> Padding:
    """The official padding amounts: always 1..``multiple`` pixels per axis, never 0."""
    top, bottom = _split(multiple - height % multiple)
    left, right = _split(multiple - width % multiple)
    return Padding(top, bottom, left, right)


def symmetric_index(n: int, before: int, after: int, device: torch.device | None = None) -> torch.Tensor:
    """Source index of every output position of a symmetric (edge-repeating) mirror extension.

    Periodic with period 2n, so it also works when the padding is wider than the image.
    """
    pos = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(pos < n, pos, 2 * n - 1 - pos)


def pad_symmetric(x: torch.Tensor, pad: Padding) -> torch.Tensor:
    """Pad the last two axes like ``np.pad(.., 'symmetric')`` / ``cv2.BORDER_REFLECT``."""
    h, w = x.shape[-2:]
    rows = symmetric_index(h, pad.top, pad.bottom, x.device)
    cols = symmetric_index(w, pad.left, pad.right, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def quantize_u8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to the 8-bit codes they came from (exact for 8-bit sources: k/255 -> k)."""
    return torch.round(x.float().clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def equalize_hist(u8: torch.Tensor) -> torch.Tensor:
    """OpenCV ``equalizeHist`` applied to every (H, W) plane of a uint8 tensor (..., H, W).

    The algorithm, bit for bit: a 256-bin histogram; ``i0`` is the first non-empty bin; if every
    pixel sits in ``i0`` the output is constant ``i0``; otherwise, in float32,
    ``scale = 255 / (N - hist[i0])`` and ``lut[j] = rint(cumsum_{i0 < k <= j} hist[k] * scale)``,
    rounding half to even, so ``lut[i0] = 0``.
    """
    if u8.dtype != torch.uint8:
        raise TypeError(f"equalize_hist needs uint8 input, not {u8.dtype}")
    shape = u8.shape
    planes = u8.reshape(-1, shape[-2] * shape[-1]).long()
    p, n = planes.shape
    offsets = torch.arange(p, device=u8.device).unsqueeze(1) * 256
    hist = torch.bincount((planes + offsets).reshape(-1), minlength=p * 256).view(p, 256)
    i0 = (hist > 0).int().argmax(dim=1, keepdim=True)  # first non-empty bin
    cum = hist.cumsum(dim=1)
    cum_i0 = cum.gather(1, i0)
    hist_i0 = hist.gather(1, i0)
    counted = (cum - cum_i0).clamp(min=0)  # sum over i0 < k <= j; 0 for j <= i0
    rest = (n - hist_i0).to(torch.float32)
    scale = torch.where(rest > 0, torch.tensor(255.0, dtype=torch.float32, device=u8.device) / rest.clamp(min=1), 0.0)
    lut = torch.round(counted.to(torch.float32) * scale).clamp(0, 255)
    lut = torch.where(rest > 0, lut, i0.to(torch.float32))  # a one-valued plane stays that value
    return lut.to(torch.uint8).gather(1, planes).view(shape)


def log_image(x: torch.Tensor) -> torch.Tensor:
    """``log(clamp(x + 1e-3, min=1e-3))``: the official ``log_low`` transform of the input."""
    return torch.log(torch.clamp(x + 1e-3, min=1e-3))


def network_input(x: torch.Tensor, *, multiple: int = 16, histeq: bool = True) -> tuple[torch.Tensor, Padding]:
    """(B, 3, H, W) RGB in [0, 1] -> the official network input ``lq`` at the padded size, and the padding.

    The log channels use the floats as given (for an 8-bit source they are bit-identical to the
    official ``uint8 / 255``); histogram equalisation needs 8-bit codes, so it sees ``round(x * 255)``.
    """
    pad = auto_padding(x.shape[-2], x.shape[-1], multiple)
    padded = pad_symmetric(x, pad)
    parts = [log_image(padded)]
    if histeq:
        parts.append(equalize_hist(quantize_u8(padded)).to(x.dtype) / 255.0)
    return torch.cat(parts, dim=1), pad
