"""CLIP-guided losses of CLIP-LIT (ICCV 2023), CLIP-LIT-Latent and RAVE (ECCV 2024), as pure functions.

Equation numbers are those of the RAVE paper, which restates CLIP-LIT's. Where the paper and the
authors' training code differ in a constant, the code's form is used (it produced the published
weights) and the docstring says so:

* the identity loss (Eq. 4) is a per-layer *mean squared* difference of CLIP feature maps, weighted per
  layer and summed over the images of the batch;
* the residual loss (Eq. 12) compares the *cosine* of the image embedding with ``v_residual``;
* the latent scores (Eq. 6-9) are a softmax over ``100 * cos`` (CLIP's logit scale).

The latent pair is stored as a (2, D) tensor: row 0 is ``E_n`` (backlit), row 1 is ``E_p`` (well-lit),
so that the class index equals the label (0 backlit, 1 well-lit) as in the authors' code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "LOGIT_SCALE",
    "residual_loss",
    "identity_loss",
    "latent_logits",
    "latent_score",
    "latent_init_loss",
    "latent_clip_loss",
    "margin_ranking_loss",
]

LOGIT_SCALE = 100.0


def residual_loss(image_embeddings: torch.Tensor, residual: torch.Tensor, threshold: float) -> torch.Tensor:
    """Eq. 12: ``mean_i (cos(Phi(I_i), v_residual) - v_well-lit . v_residual)^2``.

    Pulls each enhanced image's projection on the residual direction to that of the well-lit mean.
    """
    cos = F.normalize(image_embeddings, dim=-1) @ F.normalize(residual.to(image_embeddings), dim=-1)
    return ((cos - threshold) ** 2).mean()


def identity_loss(features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Eq. 4 (code form): ``sum_images sum_l w_l * MSE(Phi^l(a), Phi^l(b))``.

    ``features_*`` are per-layer maps (B, ...); ``weights`` has one entry per layer (the authors use
    ``(1, 1, 1, 1, 0.5)`` on RN101's stem and four stages). Summed, not averaged, over the batch, like
    the authors' loop; their loss weights are tuned for that.
    """
    if len(weights) != len(features_a) or len(features_a) != len(features_b):
        raise ValueError(f"{len(weights)} layer weights for {len(features_a)}/{len(features_b)} feature maps")
    total = features_a[0].new_zeros(())
    for w, a, b in zip(weights, features_a, features_b):
        if w:
            total = total + w * ((a - b) ** 2).flatten(1).mean(1).sum()
    return total


def latent_logits(image_embeddings: torch.Tensor, latents: torch.Tensor, scale: float = LOGIT_SCALE) -> torch.Tensor:
    """``scale * cos(Phi(I), E_i)`` for ``E = (E_n, E_p)``: (B, 2)."""
    return scale * F.normalize(image_embeddings, dim=-1) @ F.normalize(latents, dim=-1).T


def latent_score(image_embeddings: torch.Tensor, latents: torch.Tensor, scale: float = LOGIT_SCALE) -> torch.Tensor:
    """Eq. 9: ``S(I)``, the softmax probability of the negative (backlit) vector ``E_n``; (B,)."""
    return latent_logits(image_embeddings, latents, scale).softmax(-1)[:, 0]


def latent_init_loss(image_embeddings: torch.Tensor, latents: torch.Tensor, labels: torch.Tensor, scale: float = LOGIT_SCALE) -> torch.Tensor:
    """Eq. 7: binary cross-entropy of classifying images as backlit (0) / well-lit (1) with ``E_n, E_p``."""
    return F.cross_entropy(latent_logits(image_embeddings, latents, scale), labels.long())


def latent_clip_loss(image_embeddings: torch.Tensor, latents: torch.Tensor, scale: float = LOGIT_SCALE) -> torch.Tensor:
    """Eq. 8: mean over the batch of ``S(I_t)``, the enhanced images' backlit probability."""
    return latent_score(image_embeddings, latents, scale).mean()


def margin_ranking_loss(
    s_backlit: torch.Tensor,
    s_welllit: torch.Tensor,
    enhanced: Sequence[torch.Tensor] = (),
    margins: tuple[float, float, float] = (0.9, 0.2, 0.2),
) -> torch.Tensor:
    """Eq. 5 on scores ``S`` (Eq. 9), each hinge averaged over the batch.

    ``enhanced`` holds the scores of earlier enhancement results, oldest first: none (first refinement:
    only the well-lit/backlit term), one (it is both ``I_{t-1}`` and ``I_t``, three terms, as the
    authors' code), or two (``I_{t-1}``, ``I_t``: all four terms). ``margins = (m0, m1, m2)``.
    """
    m0, m1, m2 = margins

    def hinge(x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, min=0).mean()

    loss = hinge(s_welllit - s_backlit + m0)
    if len(enhanced) > 2:
        raise ValueError("at most two earlier enhancement results take part in Eq. 5")
    if enhanced:
        prev, cur = enhanced[0], enhanced[-1]
        loss = loss + hinge(prev - s_backlit + m0) + hinge(s_welllit - cur + m1)
        if len(enhanced) == 2:
            loss = loss + hinge(cur - prev + m2)
    return loss
