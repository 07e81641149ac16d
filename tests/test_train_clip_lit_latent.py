"""`lle train clip-lit-latent`: Eq. 5-9 by hand, the stage schedule, training and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lle_cli.cli.main import main
from lle_cli.clip import ClipSpec
from lle_cli.losses_clip import latent_clip_loss, latent_init_loss, latent_logits, latent_score, margin_ranking_loss
from lle_cli.train.clip_lit_latent import ClipLitLatentLossWeights, ClipLitLatentTrainConfig, stage_schedule, train_clip_lit_latent
from lle_cli.weights import load_safetensors

from .test_clip import TINY_RN, TINY_VIT, write_images


def test_latent_scores_by_hand() -> None:
    latents = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # E_n along x, E_p along y (norms do not matter)
    emb = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # cosines: image 0 (1, 0), image 1 (0.7071, 0.7071); with scale 1: S = e^c_n / (e^c_n + e^c_p)
    assert torch.allclose(latent_logits(emb, latents, 1.0), torch.tensor([[1.0, 0.0], [2**-0.5, 2**-0.5]]), atol=1e-6)
    s = latent_score(emb, latents, 1.0)
    assert s[0].item() == pytest.approx(math.e / (math.e + 1)) and s[1].item() == pytest.approx(0.5)
    assert latent_clip_loss(emb, latents, 1.0).item() == pytest.approx((math.e / (math.e + 1) + 0.5) / 2)
    # Eq. 7: label 0 (backlit) for image 0, 1 (well-lit) for image 1
    ce = latent_init_loss(emb, latents, torch.tensor([0, 1]), 1.0).item()
    assert ce == pytest.approx((-math.log(math.e / (math.e + 1)) - math.log(0.5)) / 2)


def test_margin_ranking_loss_by_hand() -> None:
    sb, sw = torch.tensor([0.5]), torch.tensor([0.4])
    m = (0.9, 0.2, 0.1)
    assert margin_ranking_loss(sb, sw, margins=m).item() == pytest.approx(0.8)  # max(0, 0.4 - 0.5 + 0.9)
    one = torch.tensor([0.3])  # a single earlier result is both I_{t-1} and I_t
    assert margin_ranking_loss(sb, sw, [one], m).item() == pytest.approx(0.8 + 0.7 + 0.3)
    prev, cur = torch.tensor([0.3]), torch.tensor([0.35])
    # + max(0, S(I_t-1) - S(I_b) + m0) + max(0, S(I_w) - S(I_t) + m1) + max(0, S(I_t) - S(I_t-1) + m2)
    assert margin_ranking_loss(sb, sw, [prev, cur], m).item() == pytest.approx(0.8 + 0.7 + 0.25 + 0.15)
    assert margin_ranking_loss(torch.tensor([1.0]), torch.tensor([0.0]), margins=m).item() == 0.0  # hinge


def test_stage_schedule() -> None:
    cfg = ClipLitLatentTrainConfig(init_steps=5, warmup_steps=2, rounds=3, unet_steps=4, latent_steps=3)
    assert stage_schedule(cfg) == [("init", 0, 5), ("warmup", 0, 2), ("unet", 1, 4), ("latent", 1, 3), ("unet", 2, 4),
                                   ("latent", 2, 3), ("unet", 3, 4)]
    assert cfg.total_steps == 5 + 2 + 3 * 4 + 2 * 3
    assert ClipLitLatentTrainConfig().total_steps == 8000 + 1000 + 13 * 2100 + 12 * 1000  # ~50k, as the paper


def _cfg(**kw) -> ClipLitLatentTrainConfig:
    base = dict(init_steps=4, warmup_steps=1, rounds=2, unet_steps=3, latent_steps=3, batch_size=4, latent_batch_size=8,
                size=16, lr=1e-3, latent_lr=5e-2, augment=False, log_every=1, checkpoint_every=4,
                losses=ClipLitLatentLossWeights(logit_scale=1.0),  # an untrained tiny CLIP saturates at 100
                clip=ClipSpec(config=TINY_VIT, pretrained="random"), identity_clip=ClipSpec(config=TINY_RN, pretrained="random"))
    base.update(kw)
    return ClipLitLatentTrainConfig(**base)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("cll_data")
    return write_images(root / "back", rng, n=4, scale=70), write_images(root / "well", rng, n=4, scale=255)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """One full two-round run, shared by the tests below (training is the slow part)."""
    root = tmp_path_factory.mktemp("cll_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLE_HOME", str(root / "home"))
        return train_clip_lit_latent(*data, root / "out.safetensors", _cfg(), run_dir=root / "run")


@pytest.mark.slow
def test_every_stage_reduces_its_loss(straight) -> None:
    rows = [json.loads(x) for x in (straight.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["init"] * 4 + ["warmup"] + ["unet"] * 3 + ["latent"] * 3 + ["unet"] * 3
    by = lambda stage, rnd: [r for r in rows if r["stage"] == stage and r["round"] == rnd]  # noqa: E731
    init = by("init", 0)
    assert init[-1]["loss"] < init[0]["loss"]
    latent = by("latent", 1)
    assert latent[-1]["loss"] < latent[0]["loss"]
    unet = by("unet", 1)
    assert unet[-1]["clip"] < unet[0]["clip"]
    assert straight.steps == 14 and straight.info["latents"].shape == (2, 16)
    assert load_safetensors(straight.run_dir / "latents.safetensors")["latents"].shape == (2, 16)
    with safe_open(str(straight.output), "pt") as f:
        assert json.loads(f.metadata()["lle"])["training"]["trainer"] == "clip-lit-latent"


def test_resume_across_stages_and_more_rounds(data, straight, tmp_path) -> None:
    back, well = data
    # a one-round run ends after the first UNet stage (4 init + 1 warm-up + 3 UNet = step 8); more rounds
    # resume from there: the latent stage needs the enhanced-image embeddings saved in the checkpoint
    train_clip_lit_latent(back, well, tmp_path / "b.safetensors", _cfg(rounds=1), run_dir=tmp_path / "rb")
    resumed = train_clip_lit_latent(back, well, tmp_path / "c.safetensors", _cfg(rounds=2), run_dir=tmp_path / "rb",
                                    resume=tmp_path / "rb")
    assert resumed.resumed_from == 8
    a, c = load_safetensors(straight.output), load_safetensors(resumed.output)
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert torch.equal(straight.info["latents"], resumed.info["latents"])


@pytest.mark.slow
def test_command_runs(data, tmp_path, capsys) -> None:
    back, well = data
    (tmp_path / "vit.json").write_text(json.dumps(TINY_VIT))
    (tmp_path / "rn.json").write_text(json.dumps(TINY_RN))
    out = tmp_path / "cll.safetensors"
    args = ["train", "clip-lit-latent", "--backlit", back, "--welllit", well, "-o", out, "--init-steps", 2,
            "--warmup-steps", 1, "--rounds", 2, "--unet-steps", 1, "--latent-steps", 1, "--batch-size", 2,
            "--latent-batch-size", 4, "--size", 16, "--margins", "0.9,0.2,0.2", "--device", "cpu",
            "--clip-model", tmp_path / "vit.json", "--clip-pretrained", "random",
            "--identity-model", tmp_path / "rn.json", "--identity-pretrained", "random"]
    assert main([str(a) for a in args]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    bad = [str(a) for a in args] + ["--overwrite"]
    bad[bad.index("0.9,0.2,0.2")] = "0.9,0.2"
    assert main(bad) == 2
    assert "m0,m1,m2" in capsys.readouterr().err
