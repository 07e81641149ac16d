"""Losses of SCL-LLE (Liang et al., "Semantically Contrastive Learning for Low-light Image Enhancement",
AAAI 2022), as pure functions of images, labels and (frozen) network features.

* Contrastive brightness restoration (Eq. 2-5): triplet hinges that pull the enhanced image towards a
  positive (normal-light) and away from a negative (over/under-exposed) sample, once on VGG-16 Gram
  matrices (Eq. 2-3, margin alpha = 0.3) and once on image means, ``E`` (Eq. 4, margin beta = 0.04).
  Each sample of the batch is its own triplet and the hinges are averaged over the batch.
* Semantic brightness consistency (Eq. 6-7): within each ground-truth class of an image, the squared
  deviation of pixel brightness from the class mean, plus the segmentation cross-entropy of a frozen
  segmentation network on the enhanced image.
* Feature preservation (Eq. 8): mean squared difference of VGG features before and after enhancement.
  Colour constancy and illumination smoothness (Eq. 9) are Zero-DCE's, in ``lle_cli.losses``.

Brightness is the mean over the RGB channels, as in the authors' code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "IGNORE_INDEX",
    "gram_matrix",
    "gram_distance",
    "mean_distance",
    "triplet_hinge",
    "semantic_brightness_consistency",
    "segmentation_cross_entropy",
    "feature_preservation",
]

IGNORE_INDEX = 255  # Cityscapes trainId of "void" pixels


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ``G_ij = sum_k f_ik f_jk``, normalised by ``C*H*W`` like the authors' code; (B, C, C)."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def gram_distance(features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor]) -> torch.Tensor:
    """``d(G(a), G(b))`` per sample: summed squared Gram differences over the given layers; (B,)."""
    total = features_a[0].new_zeros(features_a[0].shape[0])
    for fa, fb in zip(features_a, features_b):
        total = total + ((gram_matrix(fa) - gram_matrix(fb)) ** 2).flatten(1).sum(1)
    return total


def mean_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``d(E(a), E(b)) = |E(a) - E(b)|`` per sample, ``E`` the mean over channels and pixels; (B,)."""
    return (a.flatten(1).mean(1) - b.flatten(1).mean(1)).abs()


def triplet_hinge(d_positive: torch.Tensor, d_negative: torch.Tensor, margin: float) -> torch.Tensor:
    """One term of Eq. 5: ``mean max(d(H, P) - d(H, N) + margin, 0)``."""
    return torch.clamp(d_positive - d_negative + margin, min=0).mean()


def semantic_brightness_consistency(enhanced: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """First term of Eq. 7 with the class means of Eq. 6, per image.

    ``sum_s sum_{i in class s} (B_i - B_s)^2``, divided by the number of pixels (the paper's plain sum
    would make the weight depend on the image size; the authors' code also averages over pixels).
    Pixels labelled ``ignore_index`` take no part.
    """
    b, _, h, w = enhanced.shape
    bright = enhanced.mean(1).reshape(b, -1)  # (B, HW)
    lab = labels.reshape(b, -1).long()
    valid = lab != ignore_index
    k = int(lab[valid].max()) + 1 if bool(valid.any()) else 1
    idx = torch.where(valid, lab, torch.full_like(lab, k))  # void pixels go to an extra bin
    sums = bright.new_zeros(b, k + 1).scatter_add_(1, idx, bright)
    counts = bright.new_zeros(b, k + 1).scatter_add_(1, idx, torch.ones_like(bright))
    means = sums / counts.clamp(min=1)
    dev = (bright - means.gather(1, idx)) ** 2 * valid
    return dev.sum() / (b * h * w)


def segmentation_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Second term of Eq. 7: ``-sum_s p_s log q_s`` of the segmentation of the enhanced image."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index)


def feature_preservation(features_input: torch.Tensor, features_enhanced: torch.Tensor) -> torch.Tensor:
    """Eq. 8: ``1/(C H W) ||f(I_L) - f(I_H)||^2`` (averaged over the batch too)."""
    return F.mse_loss(features_enhanced, features_input)
