"""RAVE's residual vector and its interpretation through the CLIP vocabulary (pure functions).

Gaintseva et al., "RAVE: Residual Vector Embedding for CLIP-Guided Backlit Image Enhancement",
ECCV 2024: Eq. 10 (residual vector), Eq. 13 (well-lit direction), Eq. 14 (token similarity) and
Eq. 15-16 (the "shifted" residual that removes the direction of the most/least similar tokens).

On the shift, the authors' ``train_rave.py`` differs from the paper: it uses ``scores`` where it
means ``token_scores`` (a NameError, so that path never ran as published), always takes 15 tokens
whatever ``remove_first_n_tokens`` says, weights each token embedding by its similarity instead of
normalising it, and does not normalise the token embeddings before averaging. We follow the paper:
``v_closest``/``v_farthest`` are normalised means of normalised text embeddings of the ``n`` most/least
similar tokens, ``v_add = f_norm(v_closest - v_farthest)``, and ``v - cos(v, v_add) v_add``. That
vector is then normalised again (as the authors' script does), because Eq. 12's threshold and the
paper's Table 6 similarities are those of a unit residual vector.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import InputError, UsageError, WeightsError
from .weights import load_safetensors, save_safetensors

__all__ = [
    "f_norm",
    "mean_direction",
    "ResidualVector",
    "residual_vector",
    "token_similarities",
    "rank_tokens",
    "shift_residual",
    "save_residual",
    "load_residual",
    "residual_from_folders",
    "token_report",
]


def f_norm(v: torch.Tensor) -> torch.Tensor:
    """``v / ||v||_2`` along the last axis."""
    return v / v.norm(dim=-1, keepdim=True)


def mean_direction(embeddings: torch.Tensor) -> torch.Tensor:
    """``f_norm(mean_i f_norm(e_i))`` of (N, D) embeddings (the inner terms of Eq. 10, and Eq. 13)."""
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise InputError("need at least one image embedding to compute a mean direction")
    return f_norm(f_norm(embeddings.double()).mean(0))


@dataclass
class ResidualVector:
    """The guidance of RAVE: ``residual`` (unit, D) and ``welllit`` (unit, D), plus provenance."""

    residual: torch.Tensor
    welllit: torch.Tensor
    backlit: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        """``v_well-lit . v_residual``: where Eq. 12 wants an image's projection on ``v_residual`` to be."""
        return float(self.welllit.double() @ self.residual.double())


def residual_vector(welllit: torch.Tensor, backlit: torch.Tensor) -> ResidualVector:
    """Eq. 10: ``f_norm(v_well-lit - v_backlit)`` from (N_p, D) and (N_n, D) image embeddings."""
    vw = mean_direction(welllit)
    vb = mean_direction(backlit)
    diff = vw - vb
    if float(diff.norm()) < 1e-9:  # identical directions up to rounding
        raise InputError("the well-lit and backlit images have the same mean CLIP embedding; use different folders")
    return ResidualVector(f_norm(diff).float(), vw.float(), vb.float(),
                          {"welllit_images": int(welllit.shape[0]), "backlit_images": int(backlit.shape[0])})


def token_similarities(text_embeddings: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Eq. 14: ``f_norm(Phi_text(e_token)) . v_residual`` for every row of (V, D)."""
    return f_norm(text_embeddings.double()) @ f_norm(residual.double())


def rank_tokens(similarities: torch.Tensor, top: int) -> tuple[list[int], list[int]]:
    """Token ids of the ``top`` lowest (most negative first) and highest (largest first) similarities.

    Ties are broken by token id so that the ranking is reproducible.
    """
    top = max(0, min(int(top), similarities.numel()))
    s = similarities.double()
    lowest = torch.argsort(s, stable=True)[:top].tolist()  # stable: equal scores keep id order
    highest = torch.argsort(-s, stable=True)[:top].tolist()
    return lowest, highest


def shift_residual(residual: torch.Tensor, text_embeddings: torch.Tensor, n: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Eq. 15-16: remove from ``v_residual`` the direction between its ``n`` closest and farthest tokens.

    Returns the shifted unit vector and what was removed (the token ids and ``cos(v, v_add)``).
    """
    if n < 1:
        raise InputError("--shift-tokens must be at least 1")
    if 2 * n > text_embeddings.shape[0]:
        raise InputError(f"--shift-tokens {n}: the vocabulary has only {text_embeddings.shape[0]} tokens")
    v = f_norm(residual.double())
    sims = token_similarities(text_embeddings, v)
    farthest, closest = rank_tokens(sims, n)
    t = f_norm(text_embeddings.double())
    v_closest = f_norm(t[closest].mean(0))
    v_farthest = f_norm(t[farthest].mean(0))
    v_add = f_norm(v_closest - v_farthest)
    cos = float(F.cosine_similarity(v, v_add, dim=0))
    shifted = v - cos * v_add
    info = {"shift_tokens": n, "closest_ids": closest, "farthest_ids": farthest, "cos_removed": cos}
    return f_norm(shifted).float(), info


def save_residual(rv: ResidualVector, path: Path, *, clip_key: str) -> None:
    """Write the vectors as safetensors with an ``lle`` JSON metadata key (atomically)."""
    tensors = {"residual": rv.residual.float().contiguous(), "welllit": rv.welllit.float().contiguous()}
    if rv.backlit is not None:
        tensors["backlit"] = rv.backlit.float().contiguous()
    meta = {"kind": "rave_residual", "clip": clip_key, **rv.info}
    save_safetensors(tensors, Path(path), metadata={"lle": json.dumps(meta, sort_keys=True)})


def load_residual(path: Path, *, clip_key: str | None = None) -> ResidualVector:
    """Read a vector written by ``save_residual``; refuse one computed with a different CLIP."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such residual-vector file")
    state = load_safetensors(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("lle", "{}"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable residual-vector metadata ({e})") from e
    if "residual" not in state or "welllit" not in state:
        raise WeightsError(f"{path}: not a residual-vector file (no 'residual'/'welllit' tensors); write one with --save")
    if clip_key is not None and meta.get("clip") not in (None, clip_key):
        raise WeightsError(
            f"{path}: computed with CLIP {meta.get('clip')}, not {clip_key}; pass the same --clip-model/--clip-weights "
            "or recompute it from the image folders"
        )
    info = {k: v for k, v in meta.items() if k not in ("kind", "clip")}
    return ResidualVector(state["residual"].float(), state["welllit"].float(), state.get("backlit"), info)


# ---- with a CLIP model (``lle_cli.clip.ClipModel``) ----------------------------------------------
def residual_from_folders(clip, backlit: Path, welllit: Path, *, shift_tokens: int = 0, batch_size: int = 32,
                          progress=None) -> ResidualVector:
    """Eq. 10 (then Eq. 15-16 when ``shift_tokens``) from two image folders; embeddings are cached."""
    _, eb = clip.encode_folder(Path(backlit), batch_size=batch_size, progress=progress)
    _, ew = clip.encode_folder(Path(welllit), batch_size=batch_size, progress=progress)
    rv = residual_vector(ew, eb)
    return shifted(clip, rv, shift_tokens, progress=progress) if shift_tokens else rv


def shifted(clip, rv: ResidualVector, shift_tokens: int, *, progress=None) -> ResidualVector:
    """``rv`` with Eq. 15-16 applied against ``clip``'s vocabulary."""
    vocab = clip.vocabulary_embeddings(progress=progress)
    vec, info = shift_residual(rv.residual, vocab, shift_tokens)
    return ResidualVector(vec, rv.welllit, rv.backlit, {**rv.info, **info})


def token_report(clip, rv: ResidualVector, *, top: int = 7, progress=None) -> dict[str, Any]:
    """Table 2 of the paper as data: the ``top`` lowest and highest tokens of Eq. 14, with scores."""
    if top < 1:
        raise UsageError("--top must be at least 1")
    vocab_emb = clip.vocabulary_embeddings(progress=progress)
    if vocab_emb.shape[1] != rv.residual.shape[0]:
        raise UsageError(f"the vector has {rv.residual.shape[0]} dimensions but this CLIP embeds in {vocab_emb.shape[1]}")
    sims = token_similarities(vocab_emb, rv.residual)
    lowest, highest = rank_tokens(sims, top)
    words = clip.vocabulary()

    def rows(ids: list[int]) -> list[dict[str, Any]]:
        return [{"token": words[i], "id": int(i), "score": round(float(sims[i]), 6)} for i in ids]

    info = {k: v for k, v in rv.info.items() if k not in ("closest_ids", "farthest_ids")}
    if "closest_ids" in rv.info:
        info["removed_closest"] = [words[i] for i in rv.info["closest_ids"]]
        info["removed_farthest"] = [words[i] for i in rv.info["farthest_ids"]]
    return {"clip": clip.key, "vocabulary": len(words), "threshold": round(rv.threshold, 6), "residual": info,
            "lowest": rows(lowest), "highest": rows(highest)}
