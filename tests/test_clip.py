"""lle_cli.clip: open_clip models built from tiny random configs (no weights, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lle_cli import clip as clipmod
from lle_cli import download
from lle_cli.clip import VOCAB_SIZE, ClipSpec, load_clip
from lle_cli.errors import DownloadError, InputError, OfflineError, UsageError, WeightsError
from lle_cli.weights import save_safetensors

# Tiny open_clip architectures (same JSON format as open_clip's model_configs/*.json).
TINY_VIT = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": VOCAB_SIZE, "width": 16, "heads": 1, "layers": 1},
}
TINY_RN = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
    "text_cfg": {"context_length": 77, "vocab_size": VOCAB_SIZE, "width": 8, "heads": 1, "layers": 1},
}


def tiny(config=TINY_VIT, **kw) -> ClipSpec:
    return ClipSpec(config=config, pretrained="random", **kw)


def write_images(folder, rng, n=3, scale=255, size=(24, 28)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray((rng.random((*size, 3)) * scale).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def vit():
    return load_clip(tiny())


def test_image_encoder_is_differentiable_and_preprocesses_like_clip(vit) -> None:
    x = torch.rand(2, 3, 40, 48, requires_grad=True)
    emb = vit.encode_images(x)
    assert emb.shape == (2, 16) and vit.embed_dim == 16
    emb.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the preprocessing: squash-resize to the input size, then CLIP's mean/std
    manual = F.interpolate(x.detach(), size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(clipmod._OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(clipmod._OPENAI_STD).view(1, 3, 1, 1)
    assert torch.allclose(vit.prepare(x.detach()), (manual - mean) / std, atol=1e-6)
    assert not any(p.requires_grad for p in vit.model.parameters())  # CLIP is a frozen judge
    unit = vit.encode_images(x.detach(), normalize=True)
    assert torch.allclose(unit.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_resnet_feature_maps_are_stem_and_four_stages() -> None:
    rn = load_clip(tiny(TINY_RN))
    maps = rn.feature_maps(torch.rand(2, 3, 32, 32))
    # stem (width) then the four bottleneck stages (4x width, doubling), each stage halving the size
    assert [m.shape[1] for m in maps] == [8, 32, 64, 128, 256]
    assert [m.shape[-1] for m in maps] == [8, 8, 4, 2, 1]


def test_short_token_prompts_match_the_full_text_encoder(vit) -> None:
    tok = vit.tokenizer
    ids = torch.tensor([0, 5, 300, 4000, 49405, tok.sot_token_id])  # not <eot>: argmax pooling would pick it
    short = vit.encode_token_ids(ids)
    full = torch.zeros(len(ids), 77, dtype=torch.long)
    full[:, 0], full[:, 1], full[:, 2] = tok.sot_token_id, ids, tok.eot_token_id
    with torch.no_grad():
        ref = vit.model.encode_text(full)
    assert torch.allclose(short, ref, atol=1e-5)


def test_vocabulary_is_clips_49408_tokens(vit) -> None:
    words = vit.vocabulary()
    assert len(words) == VOCAB_SIZE
    enc = vit.tokenizer.encoder
    assert words[enc["dark</w>"]] == "dark" and words[enc["silhouette</w>"]] == "silhouette"
    assert words[vit.tokenizer.sot_token_id] == "<start_of_text>"


def test_file_embeddings_are_cached_by_file_hash(vit, tmp_path, rng, lle_home) -> None:
    folder = write_images(tmp_path / "imgs", rng)
    files, first = vit.encode_folder(folder)
    assert first.shape == (3, 16) and [f.name for f in files] == ["0.png", "1.png", "2.png"]
    assert (lle_home / "clip" / vit.key / "images.safetensors").is_file()
    with pytest.MonkeyPatch.context() as mp:  # undoes the encoder only, never the isolated env
        mp.setattr(vit.model, "encode_image", lambda *_a, **_k: pytest.fail("recomputed a cached embedding"))
        again = vit.encode_files(list(reversed(files)))
        assert torch.equal(again, first.flip(0))
        # a copy of a file under another name hits the same cache entry; a changed file does not
        (folder / "copy.png").write_bytes((folder / "0.png").read_bytes())
        assert torch.equal(vit.encode_files([folder / "copy.png"])[0], first[0])
    write_images(tmp_path / "other", rng, n=1)
    fresh = vit.encode_files([tmp_path / "other" / "0.png"])
    assert not torch.equal(fresh[0], first[0])


def test_vocabulary_embeddings_are_cached(vit, monkeypatch) -> None:
    emb = vit.vocabulary_embeddings()
    assert emb.shape == (VOCAB_SIZE, 16) and torch.isfinite(emb).all()
    assert torch.allclose(emb[:4], vit.encode_token_ids(torch.arange(4)), atol=1e-6)
    monkeypatch.setattr(vit, "encode_token_ids", lambda *_a: pytest.fail("recomputed the vocabulary"))
    assert torch.equal(vit.vocabulary_embeddings(), emb)


def test_local_weights_file_loads_and_keys_the_cache(vit, tmp_path) -> None:
    path = tmp_path / "tiny.safetensors"
    save_safetensors({k: v.clone() for k, v in vit.model.state_dict().items()}, path)
    other = load_clip(ClipSpec(config=TINY_VIT, pretrained=None, weights=str(path), seed=123))
    assert other.key.startswith("custom.sha-")
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(other.encode_images(x), vit.encode_images(x), atol=1e-6)
    bad = tmp_path / "bad.safetensors"
    save_safetensors({"visual.nope": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="cannot load these CLIP weights"):
        load_clip(ClipSpec(config=TINY_VIT, pretrained=None, weights=str(bad)))


def test_json_config_file_and_random_keys(tmp_path) -> None:
    path = tmp_path / "tiny-vit.json"
    path.write_text(json.dumps({"model_cfg": TINY_VIT}))
    a = load_clip(ClipSpec(model=str(path), pretrained="random"))
    b = load_clip(ClipSpec(model=str(path), pretrained="random", seed=1))
    assert a.key.startswith("tiny-vit.random-") and a.key != b.key  # random weights key on their own hash
    with pytest.raises(UsageError, match="no pretrained tag"):
        load_clip(ClipSpec(model=str(path), pretrained="openai"))


def _no_network(monkeypatch) -> None:
    """Any attempt to reach a host (or to let open_clip do it) fails the test."""
    import open_clip

    monkeypatch.setattr(download, "_unresolvable", lambda url: pytest.fail(f"looked up {url}"))
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail(f"open_clip.create_model{a}{k}"))


def test_offline_without_weights_fails_at_once_saying_how_to_get_them(monkeypatch) -> None:
    _no_network(monkeypatch)
    with pytest.raises(OfflineError) as e:  # HF_HUB_OFFLINE=1, as every test runs
        load_clip(ClipSpec(model="ViT-B-32", pretrained="openai"))
    msg = str(e.value)
    assert "CLIP ViT-B-32/openai is not on this machine" in msg and "(HF_HUB_OFFLINE=1)" in msg
    assert "`hf download timm/vit_base_patch32_clip_224.openai open_clip_model.safetensors`" in msg
    assert str(download.hub_cache_dir()) in msg and "--clip-weights FILE" in msg
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(OfflineError, match=r"downloads are off \(--offline\)"):
        load_clip(ClipSpec(model="RN101", pretrained="openai"), offline=True)


def test_without_a_network_a_missing_clip_fails_at_once(monkeypatch) -> None:
    import open_clip

    monkeypatch.delenv("HF_HUB_OFFLINE")
    looked_up = []
    monkeypatch.setattr(download, "_unresolvable", lambda url: looked_up.append(url) or "cannot resolve huggingface.co (no network?)")
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("would have retried for a minute"))
    with pytest.raises(DownloadError, match="cannot be downloaded: cannot resolve huggingface.co") as e:
        load_clip(ClipSpec(model="ViT-B-32", pretrained="openai"))
    assert looked_up == [download.hub_endpoint()] and "hf download timm/vit_base_patch32_clip_224.openai" in str(e.value)


def test_a_failed_download_is_a_clear_error(monkeypatch) -> None:
    import open_clip

    calls = []

    def refused(*a, **k):
        calls.append(k)
        raise RuntimeError("Failed to download weights for tag 'openai': connection refused")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(download, "_unresolvable", lambda url: None)
    monkeypatch.setattr(open_clip, "create_model", refused)
    with pytest.raises(DownloadError, match="--clip-weights FILE") as e:
        load_clip(ClipSpec(model="ViT-B-32", pretrained="openai"))
    assert "ViT-B-32/openai could not be downloaded (RuntimeError: " in str(e.value)
    # open_clip downloads into the hub cache lle looks in (HF_HOME now, not when huggingface_hub was imported)
    assert calls == [{"pretrained": "openai", "force_quick_gelu": True, "cache_dir": str(download.hub_cache_dir())}]


def _put_in_hub_cache(repo: str, filename: str, data: bytes) -> Path:
    """A file laid out as huggingface_hub's cache keeps it (refs/main -> snapshots/<commit>/file)."""
    root = download.hub_cache_dir() / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    path = root / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("filename", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_cached_weights_load_without_the_network(monkeypatch, filename) -> None:
    import open_clip

    cached = _put_in_hub_cache("timm/vit_base_patch32_clip_224.openai", filename, b"weights")
    calls = []

    def create(name, **kw):
        calls.append((name, kw))
        return clipmod._build_from_config(TINY_VIT)

    monkeypatch.setattr(download, "_unresolvable", lambda url: pytest.fail(f"looked up {url}"))
    monkeypatch.setattr(open_clip, "create_model", create)
    model = load_clip(ClipSpec(model="ViT-B-32", pretrained="openai"))  # offline, as every test runs
    assert model.key == "ViT-B-32.openai"
    [(name, kw)] = calls
    assert name == "ViT-B-32" and kw["pretrained"] == str(cached) and kw["force_quick_gelu"] is True
    # what open_clip would have taken from the tag: the preprocessing the weights were trained with
    assert kw["force_preprocess_cfg"]["mean"] == clipmod._OPENAI_MEAN and kw["force_preprocess_cfg"]["resize_mode"] == "shortest"


def test_open_clip_and_hub_chatter_stays_off_stderr(caplog) -> None:
    import logging
    import warnings

    import open_clip

    def chatter() -> None:
        open_clip.get_tokenizer("no-such-model")  # open_clip warns on the root logger
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        warnings.warn("a library warning", UserWarning, stacklevel=1)

    hub_level = logging.getLogger("huggingface_hub").level
    handlers, filters = list(logging.getLogger().handlers), list(logging.getLogger().filters)
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with clipmod._quiet_libraries():
            chatter()
        assert caplog.records == [] and caught == []
        chatter()  # the same calls outside do reach the logs: the check above can fail
        assert {r.name for r in caplog.records} == {"root", "huggingface_hub.utils._http"} and len(caught) == 1
    assert logging.getLogger("huggingface_hub").level == hub_level
    assert logging.getLogger().handlers == handlers and logging.getLogger().filters == filters


def test_unknown_architecture_and_tag() -> None:
    with pytest.raises(UsageError, match="did you mean"):
        load_clip(ClipSpec(model="ViT-B-33", pretrained="random"))
    with pytest.raises(UsageError, match="known tags"):
        load_clip(ClipSpec(model="RN101", pretrained="no-such-tag"))


def test_empty_or_missing_folder(tmp_path, vit) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        vit.encode_folder(tmp_path / "empty")
    with pytest.raises(InputError, match="not a directory"):
        vit.encode_folder(tmp_path / "missing")
