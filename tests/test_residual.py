"""RAVE's residual vector, its shift and the token ranking (against NumPy), and `lle residual-tokens`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from lle_cli.cli.main import main
from lle_cli.errors import InputError, WeightsError
from lle_cli.residual import (
    ResidualVector,
    load_residual,
    rank_tokens,
    residual_vector,
    save_residual,
    shift_residual,
    token_similarities,
)

from .test_clip import TINY_VIT, write_images


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_residual_vector_is_eq10(rng) -> None:
    well = rng.normal(size=(5, 8))
    back = rng.normal(size=(7, 8)) + 0.5
    v_well = _unit(_unit(well).mean(0))
    v_back = _unit(_unit(back).mean(0))
    expected = _unit(v_well - v_back)
    rv = residual_vector(torch.tensor(well, dtype=torch.float32), torch.tensor(back, dtype=torch.float32))
    np.testing.assert_allclose(rv.residual.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(rv.welllit.numpy(), v_well, atol=1e-6)
    assert rv.threshold == pytest.approx(float(v_well @ expected), abs=1e-6)
    assert rv.info == {"welllit_images": 5, "backlit_images": 7}
    with pytest.raises(InputError, match="same mean"):
        residual_vector(torch.tensor(well), torch.tensor(well * 3.0))


def test_shift_is_eq15_16(rng) -> None:
    v = _unit(rng.normal(size=8))
    vocab = rng.normal(size=(50, 8))
    n = 3
    sims = _unit(vocab) @ v
    order = np.argsort(sims, kind="stable")
    farthest, closest = order[:n], order[::-1][:n]
    v_closest = _unit(_unit(vocab[closest]).mean(0))
    v_farthest = _unit(_unit(vocab[farthest]).mean(0))
    v_add = _unit(v_closest - v_farthest)
    expected = _unit(v - (v @ v_add) * v_add)  # Eq. 16 (cos = dot of unit vectors), renormalised
    got, info = shift_residual(torch.tensor(v), torch.tensor(vocab), n)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    assert info["closest_ids"] == closest.tolist() and info["farthest_ids"] == farthest.tolist()
    assert info["cos_removed"] == pytest.approx(float(v @ v_add))
    assert abs(float(got.double() @ torch.tensor(v_add))) < 1e-6  # the removed direction is gone
    with pytest.raises(InputError):
        shift_residual(torch.tensor(v), torch.tensor(vocab), 0)


def test_similarities_and_ranking(rng) -> None:
    vocab = torch.tensor(rng.normal(size=(20, 4)))
    v = torch.tensor(_unit(rng.normal(size=4)))
    sims = token_similarities(vocab, v)
    np.testing.assert_allclose(sims.numpy(), _unit(vocab.numpy()) @ v.numpy(), atol=1e-12)
    low, high = rank_tokens(sims, 3)
    assert low == np.argsort(sims.numpy())[:3].tolist()
    assert high == np.argsort(-sims.numpy())[:3].tolist()
    tied = torch.tensor([0.5, -1.0, 0.5, -1.0, 0.0])
    assert rank_tokens(tied, 2) == ([1, 3], [0, 2])  # ties keep token-id order


def test_save_and_load_round_trip(tmp_path) -> None:
    rv = ResidualVector(torch.tensor([0.6, 0.8]), torch.tensor([1.0, 0.0]), None, {"shift_tokens": 2})
    path = tmp_path / "v.safetensors"
    save_residual(rv, path, clip_key="ViT-B-32.openai")
    back = load_residual(path, clip_key="ViT-B-32.openai")
    assert torch.equal(back.residual, rv.residual) and back.info == {"shift_tokens": 2}
    with pytest.raises(WeightsError, match="computed with CLIP ViT-B-32.openai"):
        load_residual(path, clip_key="RN50.openai")


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_residual_tokens_end_to_end(tmp_path, rng, capsys) -> None:
    well = write_images(tmp_path / "well", rng, n=3, scale=255)
    back = write_images(tmp_path / "back", rng, n=3, scale=60)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY_VIT))
    clip_args = ["--clip-model", cfg, "--clip-pretrained", "random", "--device", "cpu"]
    vec = tmp_path / "vec.safetensors"
    code, out, _ = _run(capsys, "residual-tokens", "--welllit", well, "--backlit", back, "--top", 4, "--save", vec, "--json", *clip_args)
    assert code == 0
    report = json.loads(out)
    assert report["vocabulary"] == 49408 and report["residual"] == {"welllit_images": 3, "backlit_images": 3}
    low = [r["score"] for r in report["lowest"]]
    high = [r["score"] for r in report["highest"]]
    assert len(low) == len(high) == 4 and low == sorted(low) and high == sorted(high, reverse=True) and low[0] < high[0]

    # the same numbers computed directly from the library
    from lle_cli.clip import ClipSpec, load_clip

    model = load_clip(ClipSpec(model=str(cfg), pretrained="random"))
    sims = token_similarities(model.vocabulary_embeddings(), load_residual(vec).residual)
    assert [r["id"] for r in report["lowest"]] == torch.argsort(sims)[:4].tolist()
    words = model.vocabulary()
    assert all(r["token"] == words[r["id"]] and r["score"] == pytest.approx(float(sims[r["id"]]), abs=1e-6) for r in report["highest"])

    # a saved vector gives the same report without the folders; the table shows the same tokens
    code, out2, _ = _run(capsys, "residual-tokens", "--load", vec, "--top", 4, "--json", *clip_args)
    assert code == 0 and json.loads(out2)["lowest"] == report["lowest"]
    code, table, _ = _run(capsys, "residual-tokens", "--load", vec, "--top", 4, *clip_args)
    assert code == 0 and "lowest similarity" in table and f"{low[0]:.3f}" in table

    # the shifted vector (Eq. 15-16) ranks differently and records what it removed
    code, out3, _ = _run(capsys, "residual-tokens", "--load", vec, "--top", 4, "--shift-tokens", 5, "--json", *clip_args)
    shifted = json.loads(out3)
    assert code == 0 and shifted["residual"]["shift_tokens"] == 5 and len(shifted["residual"]["removed_closest"]) == 5
    assert shifted["highest"] != report["highest"]

    # usage errors: neither folders nor a vector; an existing --save target
    assert _run(capsys, "residual-tokens", *clip_args)[0] == 2
    code, _, err = _run(capsys, "residual-tokens", "--welllit", well, "--backlit", back, "--save", vec, *clip_args)
    assert code == 1 and "already exists" in err


def test_offline_flag_fails_at_once_without_touching_the_network(tmp_path, rng, capsys, monkeypatch) -> None:
    import open_clip

    from lle_cli import download

    well = write_images(tmp_path / "well", rng, n=2)
    back = write_images(tmp_path / "back", rng, n=2, scale=60)
    monkeypatch.delenv("HF_HUB_OFFLINE")  # only the flag turns downloads off here
    monkeypatch.setattr(download, "_unresolvable", lambda url: pytest.fail(f"--offline looked up {url}"))
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("--offline let open_clip download"))
    code, out, err = _run(capsys, "residual-tokens", "--welllit", well, "--backlit", back, "--device", "cpu", "--offline")
    assert code == 1 and out == ""
    [line] = err.splitlines()
    assert line.startswith("Error: CLIP ViT-B-32/openai is not on this machine and downloads are off")
    assert "hf download timm/vit_base_patch32_clip_224.openai open_clip_model.safetensors" in line
    assert "HF_HUB_OFFLINE" not in os.environ  # the flag lasts for the command only


def test_offline_with_an_empty_cache_prints_one_line_quickly(tmp_path, rng) -> None:
    # a real process: what a user sees on stderr, library loggers included (pytest captures those in-process)
    well = write_images(tmp_path / "well", rng, n=2)
    back = write_images(tmp_path / "back", rng, n=2, scale=60)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # if --offline were ignored: refused here, never the real hub
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lle_cli", "residual-tokens", "--welllit", str(well), "--backlit", str(back),
                           "--device", "cpu", "--offline"], env=env, capture_output=True, text=True, timeout=120, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: CLIP ViT-B-32/openai is not on this machine"), proc.stderr
    assert "downloads are off" in lines[0] and "hf download timm/vit_base_patch32_clip_224.openai" in lines[0]
    # importing torch is most of the few seconds this takes; open_clip's download path sleeps 46 s in retries
    assert elapsed < 40, f"took {elapsed:.0f} s"
