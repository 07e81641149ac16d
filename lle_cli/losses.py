"""Zero-reference losses of Zero-DCE (Guo et al., CVPR 2020, section 3.3), as pure functions.

Each follows the published training code's definition (which is what produced the official weights):
the spatial-consistency term compares 4-neighbour differences of 4x4-pooled luminance, the exposure
term pulls 16x16 patch means towards a well-exposed level ``E``, the colour-constancy term follows
the grey-world hypothesis, and the smoothness term is a total-variation penalty on the curve maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "spatial_consistency",
    "exposure_control",
    "color_constancy",
    "illumination_smoothness",
    "ZeroReferenceWeights",
    "zero_reference_loss",
]


def _neighbour_differences(y: torch.Tensor) -> torch.Tensor:
    """Differences to the left/right/up/down neighbour, zero outside the image; (B, 4, H, W)."""
    p = F.pad(y, (1, 1, 1, 1))
    c = p[:, :, 1:-1, 1:-1]
    return torch.cat(
        [c - p[:, :, 1:-1, :-2], c - p[:, :, 1:-1, 2:], c - p[:, :, :-2, 1:-1], c - p[:, :, 2:, 1:-1]], 1
    )


def spatial_consistency(original: torch.Tensor, enhanced: torch.Tensor, region: int = 4) -> torch.Tensor:
    """L_spa (eq. 5): keep the contrast between neighbouring regions; mean over regions and batch."""
    o = F.avg_pool2d(original.mean(1, keepdim=True), region)
    e = F.avg_pool2d(enhanced.mean(1, keepdim=True), region)
    d = (_neighbour_differences(o) - _neighbour_differences(e)) ** 2
    return d.sum(1).mean()


def exposure_control(enhanced: torch.Tensor, level: float = 0.6, patch: int = 16) -> torch.Tensor:
    """L_exp (eq. 6): mean squared distance of patch luminance to the well-exposed ``level``."""
    m = F.avg_pool2d(enhanced.mean(1, keepdim=True), patch)
    return ((m - level) ** 2).mean()


def color_constancy(enhanced: torch.Tensor) -> torch.Tensor:
    """L_col (eq. 7, code form): sqrt of the summed squared pairwise channel-mean gaps, batch mean."""
    r, g, b = enhanced.mean((2, 3)).unbind(1)
    drg, drb, dgb = (r - g) ** 2, (r - b) ** 2, (g - b) ** 2
    return torch.sqrt(drg**2 + drb**2 + dgb**2).mean()


def illumination_smoothness(curves: torch.Tensor) -> torch.Tensor:
    """L_tvA (eq. 8): total variation of the curve maps, normalised like the training code."""
    b, _, h, w = curves.shape
    tv_h = ((curves[:, :, 1:, :] - curves[:, :, :-1, :]) ** 2).sum() / ((h - 1) * w)
    tv_w = ((curves[:, :, :, 1:] - curves[:, :, :, :-1]) ** 2).sum() / (h * (w - 1))
    return 2.0 * (tv_h + tv_w) / b


@dataclass(frozen=True)
class ZeroReferenceWeights:
    """Loss weights of the official training script (``200 TV + spa + 5 col + 10 exp``)."""

    spatial: float = 1.0
    exposure: float = 10.0
    color: float = 5.0
    smoothness: float = 200.0
    exposure_level: float = 0.6


def zero_reference_loss(
    original: torch.Tensor, enhanced: torch.Tensor, curves: torch.Tensor, w: ZeroReferenceWeights | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total zero-reference loss and its parts (as floats, for logging)."""
    w = w or ZeroReferenceWeights()
    parts = {
        "spatial": spatial_consistency(original, enhanced),
        "exposure": exposure_control(enhanced, w.exposure_level),
        "color": color_constancy(enhanced),
        "smoothness": illumination_smoothness(curves),
    }
    total = (
        w.spatial * parts["spatial"]
        + w.exposure * parts["exposure"]
        + w.color * parts["color"]
        + w.smoothness * parts["smoothness"]
    )
    return total, {k: float(v.detach()) for k, v in parts.items()}
