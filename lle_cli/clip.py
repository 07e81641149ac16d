"""CLIP, wrapped once for every CLIP-guided trainer (RAVE, CLIP-LIT-Latent) and ``lle residual-tokens``.

open_clip builds the networks: a registered architecture name (``ViT-B-32`` as the papers, ``RN101``
for the identity loss's feature maps) or an open_clip JSON model config (architecture as data; small
random ones are what the tests use). Weights come from an open_clip pretrained tag (downloaded once by
open_clip into the Hugging Face hub cache, then read from there without the network), from a local file
(``--clip-weights``), or are random (``pretrained="random"``, for tests and smoke runs only). Offline
(``offline=True`` or ``HF_HUB_OFFLINE=1``), or without a network, a tag that is not in the cache fails at
once with the command that fetches it.

Everything here is frozen: CLIP is a fixed judge, gradients flow through it to the images only. The
preprocessing of image *tensors* is differentiable (squash-resize to the model's input size, then the
CLIP mean/std), exactly what the authors' training loss does; image *files* get open_clip's own
inference transform (shortest-side resize + centre crop), as the authors' residual-vector script does.
Embeddings of image files and of the whole tokenizer vocabulary are cached under ``$LLE_HOME/clip``,
keyed by the model (tag, weights file sha256, or a hash of random weights) and by each file's sha256.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import cache, download
from .errors import DownloadError, InputError, OfflineError, UsageError, WeightsError
from .formats import list_image_files
from .weights import load_safetensors, save_safetensors, sha256_file

__all__ = [
    "VOCAB_SIZE",
    "RANDOM",
    "ClipSpec",
    "ClipModel",
    "load_clip",
    "clip_cache_dir",
    "list_images",
]

VOCAB_SIZE = 49408  # CLIP's byte-level BPE vocabulary, special tokens included
RANDOM = "random"  # pretrained tag meaning "random initialisation" (tests, smoke runs)
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP to build and where its weights come from.

    ``model`` is an open_clip architecture name or the path of an open_clip JSON model config;
    ``config`` (a dict in that format) takes precedence over both. ``pretrained`` is an open_clip tag
    naming the weights (``openai``), or ``"random"``. ``weights`` is a local checkpoint file holding
    the weights the tag names (open_clip or OpenAI state dict, ``.safetensors`` or a weights-only pickle).
    """

    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    weights: str | None = None
    config: Mapping[str, Any] | None = None
    seed: int = 0  # random initialisation only

    def describe(self) -> str:
        src = self.weights or (self.pretrained or RANDOM)
        return f"{self.model if self.config is None else 'custom config'} ({src})"


def _open_clip():
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise UsageError("open_clip_torch is not installed; run `pip install open_clip_torch`") from e
    return open_clip


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _state_hash(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _build_from_config(cfg: Mapping[str, Any]) -> nn.Module:
    oc = _open_clip()
    cfg = json.loads(json.dumps(dict(cfg)))  # deep copy, JSON types only
    cfg.pop("name", None)
    custom = cfg.pop("custom_text", False)
    try:
        return (oc.CustomTextCLIP if custom else oc.CLIP)(**cfg)
    except (TypeError, KeyError, ValueError) as e:
        raise UsageError(f"not a valid open_clip model config ({e}); see open_clip's model_configs/*.json") from e


def _load_file_weights(model: nn.Module, path: Path) -> str:
    if not path.is_file():
        raise WeightsError(f"{path}: no such CLIP weights file")
    digest = sha256_file(path)
    oc = _open_clip()
    try:
        oc.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except Exception as e:  # open_clip/torch raise many types for a bad or mismatched file
        raise WeightsError(
            f"{path}: cannot load these CLIP weights ({type(e).__name__}: {str(e)[:200]}); pass an open_clip or "
            "OpenAI state dict (.safetensors, or a weights-only .pt/.bin) for the architecture given by --clip-model"
        ) from e
    return digest


class ClipModel:
    """A frozen open_clip model with the operations the trainers need."""

    def __init__(self, model: nn.Module, spec: ClipSpec, key: str, device: torch.device) -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.spec = spec
        self.key = key
        self.device = device
        visual = model.visual
        size = getattr(visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        pcfg = getattr(visual, "preprocess_cfg", None) or {}
        self.mean = tuple(pcfg.get("mean", _OPENAI_MEAN))
        self.std = tuple(pcfg.get("std", _OPENAI_STD))
        self._mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        self._tokenizer = None

    # ---- images -------------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        dim = getattr(self.model.visual, "output_dim", None)
        if dim is None:
            with torch.inference_mode():
                dim = self.model.encode_image(torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)).shape[-1]
        return int(dim)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> CLIP input; differentiable (squash resize as the authors' loss)."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return (images - self._mean.to(images.dtype)) / self._std.to(images.dtype)

    def encode_images(self, images: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
        """Image embeddings ``Phi_image(I)`` of tensors in [0, 1], (B, D); gradients reach ``images``."""
        out = self.model.encode_image(self.prepare(images))
        return F.normalize(out, dim=-1) if normalize else out

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Intermediate image features (the identity loss's ``Phi^l``).

        For a ResNet CLIP (RN101 as the papers): the stem and the four stages' outputs, the five maps
        CLIP-LIT's modified CLIP returns. For a ViT: every transformer block's patch tokens.
        """
        out = self.model.visual.forward_intermediates(self.prepare(images), intermediates_only=True)
        return list(out["image_intermediates"])

    def encode_files(self, paths: Sequence[Path], *, batch_size: int = 32, progress: Progress | None = None) -> torch.Tensor:
        """Embeddings (N, D) of image files, cached per file sha256 and model."""
        paths = [Path(p) for p in paths]
        digests = [sha256_file(p) for p in paths]
        store = clip_cache_dir(self.key) / "images.safetensors"
        cached = load_safetensors(store) if store.is_file() else {}
        todo = [i for i, d in enumerate(digests) if d not in cached]
        done = len(paths) - len(todo)
        if progress:
            progress(done, len(paths))
        if todo:
            oc = _open_clip()
            tf = oc.image_transform(self.image_size, is_train=False, mean=self.mean, std=self.std)
            new: dict[str, torch.Tensor] = {}
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                batch = torch.stack([tf(_read_rgb(paths[i])) for i in chunk]).to(self.device)
                with torch.inference_mode():
                    emb = self.model.encode_image(batch).float().cpu()
                for i, e in zip(chunk, emb):
                    new[digests[i]] = e.clone()
                done += len(chunk)
                if progress:
                    progress(done, len(paths))
            merged = load_safetensors(store) if store.is_file() else {}  # another process may have added some
            merged.update(new)
            save_safetensors(merged, store, metadata={"lle": json.dumps({"clip": self.key, "kind": "image_embeddings"})})
            cached.update(new)
        return torch.stack([cached[d].float() for d in digests])

    def encode_folder(self, folder: Path, *, batch_size: int = 32, progress: Progress | None = None) -> tuple[list[Path], torch.Tensor]:
        files = list_images(folder)
        return files, self.encode_files(files, batch_size=batch_size, progress=progress)

    # ---- text ---------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer()
        return self._tokenizer

    def vocabulary(self) -> list[str]:
        """Every token id's text: BPE pieces decoded to UTF-8, the end-of-word mark ``</w>`` dropped."""
        tok = self.tokenizer
        out = []
        for i in range(len(tok.decoder)):
            piece = tok.decoder[i]
            raw = bytearray(tok.byte_decoder[c] for c in piece.replace("</w>", "")).decode("utf-8", errors="replace")
            out.append(raw)
        return out

    def encode_text(self, texts: Sequence[str], *, normalize: bool = False) -> torch.Tensor:
        ids = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            out = self.model.encode_text(ids).float()
        return F.normalize(out, dim=-1) if normalize else out

    def encode_token_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Text embeddings of one-token prompts ``<sot> token <eot>`` (Eq. 14's ``Phi_text(e_token)``).

        With the standard causal CLIP text tower the output at ``<eot>`` depends only on the three
        positions before it, so the prompts run at length 3 instead of 77 (same numbers, 25x less work).
        """
        tok = self.tokenizer
        ids = ids.to(self.device).long().view(-1, 1)
        sot = torch.full_like(ids, tok.sot_token_id)
        eot = torch.full_like(ids, tok.eot_token_id)
        seq = torch.cat([sot, ids, eot], 1)
        m = self.model
        with torch.inference_mode():
            if _short_text_ok(m):
                x = m.token_embedding(seq) + m.positional_embedding[:3]
                mask = m.attn_mask[:3, :3] if getattr(m, "attn_mask", None) is not None else None
                x = m.ln_final(m.transformer(x, attn_mask=mask))[:, 2]
                proj = m.text_projection
                x = proj(x) if isinstance(proj, nn.Module) else x @ proj
            else:
                ctx = int(getattr(m, "context_length", 77))
                full = torch.zeros(seq.shape[0], ctx, dtype=torch.long, device=self.device)
                full[:, :3] = seq
                x = m.encode_text(full)
        return x.float()

    def vocabulary_embeddings(self, *, batch_size: int = 1024, progress: Progress | None = None) -> torch.Tensor:
        """Text embeddings of every vocabulary token (V, D), computed once per CLIP model and cached."""
        path = clip_cache_dir(self.key) / "vocab.safetensors"
        if path.is_file():
            emb = load_safetensors(path).get("embeddings")
            if emb is not None and emb.shape[0] == len(self.tokenizer.decoder):
                if progress:
                    progress(emb.shape[0], emb.shape[0])
                return emb.float()
        n = len(self.tokenizer.decoder)
        parts = []
        for start in range(0, n, batch_size):
            parts.append(self.encode_token_ids(torch.arange(start, min(n, start + batch_size))).cpu())
            if progress:
                progress(min(n, start + batch_size), n)
        emb = torch.cat(parts)
        save_safetensors({"embeddings": emb.contiguous()}, path,
                         metadata={"lle": json.dumps({"clip": self.key, "kind": "vocabulary_embeddings"})})
        return emb


def _short_text_ok(m: nn.Module) -> bool:
    return (
        all(hasattr(m, a) for a in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"))
        and getattr(m, "text_pool_type", "argmax") == "argmax"
        and getattr(m.transformer, "batch_first", True)
    )


def clip_cache_dir(key: str) -> Path:
    return cache.lle_home() / "clip" / _safe(key)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted; a clear error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory; pass a folder of images")
    files = list_image_files(folder)  # the formats lle reads, so training takes what enhancing takes
    if not files:
        raise InputError(f"{folder}: no images found (expected .jpg/.png/... files)")
    return files


def _read_rgb(path: Path):
    """An upright 8-bit RGB PIL image (open_clip's transforms take PIL), read as lle reads photos."""
    from PIL import Image

    from .imageio import read_rgb8

    return Image.fromarray(read_rgb8(path))


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Keep open_clip's and huggingface_hub's own messages off stderr while CLIP loads.

    Without a network, huggingface_hub logs every retry and open_clip logs the failure again on the
    root logger: dozens of lines over most of a minute before our one-line error, which says it all.
    """
    package = os.path.dirname(_open_clip().__file__) + os.sep
    root = logging.getLogger()
    hub = logging.getLogger("huggingface_hub")
    hub_level = hub.level

    def not_open_clip(record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(package)

    # open_clip calls logging.error() itself, which would give the root logger a stderr handler for the
    # rest of the process (logging.basicConfig) when it has none; a NullHandler stops that
    guard = logging.NullHandler()
    root.addHandler(guard)
    root.addFilter(not_open_clip)
    hub.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hub.setLevel(hub_level)
        root.removeFilter(not_open_clip)
        root.removeHandler(guard)


# open_clip's file names on the hub: a tag names the .bin, and open_clip tries this safetensors twin first
_HUB_BIN = "open_clip_pytorch_model.bin"
_HUB_SAFETENSORS = "open_clip_model.safetensors"


def _hub_files(pcfg: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    """The hub repo of a pretrained tag and the files open_clip would fetch from it, in its order."""
    hub = pcfg.get("hf_hub")
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or _HUB_BIN
    if filename == _HUB_BIN:
        return repo, [_HUB_SAFETENSORS, filename]
    if filename.endswith((".bin", ".pth")):
        return repo, [filename[:-4] + ".safetensors", filename]
    return repo, [filename]


def _hub_cached(repo: str, files: Sequence[str], cache_dir: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in files:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
        if isinstance(found, str):
            return Path(found)
    return None


def _pretrained_model(oc, name: str, tag: str, pcfg: Mapping[str, Any], quick: bool, offline: bool) -> nn.Module:
    """The model of an open_clip pretrained tag: from the cache if there, else downloaded (or a clear error)."""
    what = f"CLIP {name}/{tag}"
    local = "or pass a local copy with --clip-weights FILE"
    hub = _hub_files(pcfg)
    kwargs: dict[str, Any] = {}
    if hub is not None:
        cache_dir = str(download.hub_cache_dir())
        found = _hub_cached(*hub, cache_dir)
        if found is not None:
            # released weights never change, and asking the hub first costs ~20 s of retries offline
            preprocess = {k: v for k, v in pcfg.items() if k in ("mean", "std", "interpolation", "resize_mode", "fill_color")}
            try:
                return oc.create_model(name, pretrained=str(found), force_quick_gelu=quick, force_preprocess_cfg=preprocess)
            except Exception as e:  # open_clip/torch raise many types for a bad file
                raise WeightsError(f"{found}: cannot load the cached {what} ({type(e).__name__}: {str(e)[:160]}); "
                                   "delete it and fetch it again") from e
        source, there, kwargs["cache_dir"] = download.hub_endpoint(), False, cache_dir
        fetch = f"fetch it with `hf download {hub[0]} {hub[1][0]}` where there is a network (into the hub cache {cache_dir}, or copy it there)"
    else:
        # a URL-only tag: open_clip keeps the file in ~/.cache/clip and checks its sha256 itself
        source = pcfg.get("url", "")
        there = "file" in pcfg or (Path("~/.cache/clip").expanduser() / os.path.basename(source)).is_file()
        fetch = f"let open_clip fetch {source} once where there is a network"
    if not there and download.offline_mode(offline):
        raise OfflineError(f"{what} is not on this machine and downloads are off ({download.offline_reason(offline)}); {fetch}, {local}")
    if not there and (why := download._unresolvable(source)):
        raise DownloadError(f"{what} is not on this machine and cannot be downloaded: {why}; {fetch}, {local}")
    try:
        return oc.create_model(name, pretrained=tag, force_quick_gelu=quick, **kwargs)
    except Exception as e:  # download and cache failures come in many types
        raise DownloadError(f"{what} could not be downloaded ({type(e).__name__}: {str(e)[:160]}); {fetch}, {local}") from e


def load_clip(spec: ClipSpec | None = None, *, device: str | torch.device = "cpu", offline: bool = False) -> ClipModel:
    """Build and freeze the CLIP that ``spec`` names.

    A pretrained tag's weights already in the hub cache are read without the network. Missing ones are
    downloaded by open_clip, unless ``offline`` (or ``HF_HUB_OFFLINE=1``: ``OfflineError``) or the hub's
    host does not resolve (``DownloadError``); both fail at once, naming the command that fetches them.
    """
    with _quiet_libraries():
        return _load_clip(spec or ClipSpec(), torch.device(device), offline)


def _load_clip(spec: ClipSpec, device: torch.device, offline: bool) -> ClipModel:
    oc = _open_clip()
    tag = spec.pretrained if spec.pretrained not in (None, "", RANDOM, "none") else None
    cfg = spec.config
    if cfg is None and spec.model.endswith(".json"):
        path = Path(spec.model)
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: cannot read the CLIP model config ({e})") from e
        cfg = cfg.get("model_cfg", cfg)
    if cfg is not None:
        name = str(cfg.get("name") or (Path(spec.model).stem if spec.model.endswith(".json") else "custom"))
        if tag is not None and spec.weights is None:
            raise UsageError(f"a custom CLIP config has no pretrained tag {tag!r}; pass --clip-weights FILE or pretrained 'random'")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = _build_from_config(cfg)
    else:
        name = spec.model.replace("/", "-")
        known = oc.list_models()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=4)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
            raise UsageError(f"unknown CLIP architecture {spec.model!r}{hint}")
        quick = False
        if tag is not None:
            pcfg = oc.get_pretrained_cfg(name, tag)
            if not pcfg:
                tags = ", ".join(oc.list_pretrained_tags_by_model(name)) or "none"
                raise UsageError(f"unknown pretrained tag {tag!r} for CLIP {name}; known tags: {tags}")
            quick = bool(pcfg.get("quick_gelu", False))
        if tag is not None and spec.weights is None:
            model = _pretrained_model(oc, name, tag, pcfg, quick, offline)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(spec.seed)
                model = oc.create_model(name, pretrained=None, force_quick_gelu=quick)
    if spec.weights is not None:
        digest = _load_file_weights(model, Path(spec.weights))
        key = f"{name}.sha-{digest[:16]}"
    elif tag is not None:
        key = f"{name}.{tag}"
    else:
        key = f"{name}.random-{_state_hash(model)[:16]}"
    return ClipModel(model, spec, key, device)
