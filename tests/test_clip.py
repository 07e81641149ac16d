"""lle_cli.clip: open_clip models built from tiny random configs (no weights, no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lle_cli import clip as clipmod
from lle_cli.clip import VOCAB_SIZE, ClipSpec, load_clip
from lle_cli.errors import InputError, UsageError, WeightsError
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


def test_file_embeddings_are_cached_by_file_hash(vit, tmp_path, rng, lle_home, monkeypatch) -> None:
    folder = write_images(tmp_path / "imgs", rng)
    files, first = vit.encode_folder(folder)
    assert first.shape == (3, 16) and [f.name for f in files] == ["0.png", "1.png", "2.png"]
    assert (lle_home / "clip" / vit.key / "images.safetensors").is_file()
    monkeypatch.setattr(vit.model, "encode_image", lambda *_a, **_k: pytest.fail("recomputed a cached embedding"))
    again = vit.encode_files(list(reversed(files)))
    assert torch.equal(again, first.flip(0))
    # a copy of a file under another name hits the same cache entry; a changed file does not
    (folder / "copy.png").write_bytes((folder / "0.png").read_bytes())
    assert torch.equal(vit.encode_files([folder / "copy.png"])[0], first[0])
    monkeypatch.undo()
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


def test_offline_without_weights_is_a_clear_error(monkeypatch) -> None:
    import open_clip

    def offline(*_a, **_k):
        raise RuntimeError("Failed to download weights for tag 'openai': connection refused")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(WeightsError, match="--clip-weights FILE") as e:
        load_clip(ClipSpec(model="ViT-B-32", pretrained="openai"))
    assert "ViT-B-32/openai" in str(e.value)


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
