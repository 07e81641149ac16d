"""`lle train rave`: the losses by hand, the training machinery (resume, DDP) and the command end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from lle_cli.cli.main import main
from lle_cli.clip import ClipSpec
from lle_cli.errors import InputError, UsageError
from lle_cli.losses_clip import identity_loss, residual_loss
from lle_cli.models.illumination_unet import IlluminationUNet
from lle_cli.train.common import Dist, augment_batch, batch_indices, load_checkpoint, step_generator
from lle_cli.train.rave import RaveTrainConfig, train_rave
from lle_cli.weights import load_safetensors

from .test_clip import TINY_RN, TINY_VIT, write_images


@pytest.fixture
def data(tmp_path, rng) -> tuple[Path, Path]:
    return write_images(tmp_path / "back", rng, n=4, scale=70), write_images(tmp_path / "well", rng, n=4, scale=255)


def _cfg(**kw) -> RaveTrainConfig:
    base = dict(steps=4, warmup_steps=1, batch_size=2, size=16, lr=1e-3, log_every=1, checkpoint_every=2,
                clip=ClipSpec(config=TINY_VIT, pretrained="random"), identity_clip=ClipSpec(config=TINY_RN, pretrained="random"))
    base.update(kw)
    return RaveTrainConfig(**base)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_residual_loss_by_hand() -> None:
    v = torch.tensor([1.0, 0.0])
    emb = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # cosines with v: 0.6 and 0.0
    # Eq. 12 with v_well . v_res = 0.2: mean((0.6 - 0.2)^2, (0 - 0.2)^2) = (0.16 + 0.04) / 2
    assert residual_loss(emb, v, 0.2).item() == pytest.approx(0.10)


def test_identity_loss_by_hand() -> None:
    a = [torch.zeros(2, 1, 2, 2), torch.zeros(2, 3, 1, 1)]
    b = [torch.ones(2, 1, 2, 2), torch.zeros(2, 3, 1, 1)]
    b[1][1, :, 0, 0] = torch.tensor([1.0, 2.0, 2.0])  # image 1, layer 1: MSE = 9 / 3 = 3
    # sum over images of sum_l w_l MSE_l: layer 0 gives 1 per image, layer 1 gives 0 and 3
    assert identity_loss(a, b, (1.0, 0.5)).item() == pytest.approx(1.0 * 2 + 0.5 * 3)
    with pytest.raises(ValueError):
        identity_loss(a, b, (1.0,))


def test_batches_cover_each_epoch_and_ranks_split_them() -> None:
    seen = torch.cat([batch_indices(6, s, 2, seed=3) for s in (1, 2, 3)])
    assert sorted(seen.tolist()) == list(range(6))  # one epoch = every item once
    r0 = batch_indices(8, 1, 2, seed=3, d=Dist(0, 2))
    r1 = batch_indices(8, 1, 2, seed=3, d=Dist(1, 2))
    assert set(r0.tolist()).isdisjoint(r1.tolist())
    assert torch.equal(batch_indices(6, 5, 2, seed=3), batch_indices(6, 5, 2, seed=3))


def test_flip_augmentations_are_dihedral_and_deterministic() -> None:
    x = torch.rand(6, 3, 8, 8)
    a = augment_batch(x, step_generator(0, 1), p_zoom=0, p_rotate=0)
    b = augment_batch(x, step_generator(0, 1), p_zoom=0, p_rotate=0)
    assert torch.equal(a, b)
    for xi, ai in zip(x, a):
        variants = [v for t in (xi, xi.transpose(-1, -2)) for v in (t, t.flip(-1), t.flip(-2), t.flip(-1).flip(-2))]
        assert any(torch.equal(ai, v) for v in variants)
    zoomed = augment_batch(x, step_generator(0, 2), p_zoom=1.0, p_rotate=1.0)
    assert zoomed.shape == x.shape and torch.isfinite(zoomed).all() and 0 <= zoomed.min() and zoomed.max() <= 1


def test_training_reduces_the_guided_loss(data, tmp_path) -> None:
    back, well = data
    cfg = _cfg(steps=5, batch_size=4, augment=False)  # the whole set each step: losses comparable across steps
    result = train_rave(back, well, tmp_path / "out.safetensors", cfg, run_dir=tmp_path / "run")
    rows = _metrics(tmp_path / "run")
    assert [r["stage"] for r in rows] == ["warmup"] + ["guided"] * 4
    guided = [r["residual"] for r in rows[1:]]
    assert guided[-1] < guided[0]
    assert np.isfinite(result.final_loss) and result.images == 4
    assert (tmp_path / "run" / "residual.safetensors").is_file()
    state = load_safetensors(result.output)
    assert state.keys() == IlluminationUNet().state_dict().keys()
    with safe_open(str(result.output), "pt") as f:
        meta = json.loads(f.metadata()["lle"])
    assert meta["family"] == "illumination_unet" and meta["training"]["trainer"] == "rave"


def test_resume_continues_exactly(data, tmp_path) -> None:
    back, well = data
    straight = train_rave(back, well, tmp_path / "a.safetensors", _cfg(steps=3), run_dir=tmp_path / "ra")
    train_rave(back, well, tmp_path / "b.safetensors", _cfg(steps=2), run_dir=tmp_path / "rb")
    ck = load_checkpoint(tmp_path / "rb" / "checkpoints" / "step-00000002.safetensors")
    assert ck.step == 2 and "unet" in ck.optimizers and "residual" in ck.tensors
    resumed = train_rave(back, well, tmp_path / "c.safetensors", _cfg(steps=3), run_dir=tmp_path / "rb", resume=tmp_path / "rb")
    assert resumed.resumed_from == 2
    a, c = load_safetensors(straight.output), load_safetensors(resumed.output)
    assert all(torch.equal(a[k], c[k]) for k in a)  # same batches, augmentations and optimiser state
    assert [r["step"] for r in _metrics(tmp_path / "rb")] == [1, 2, 3]
    with pytest.raises(UsageError, match="different settings"):
        train_rave(back, well, tmp_path / "d.safetensors", _cfg(steps=4, lr=1e-2), run_dir=tmp_path / "rb", resume=tmp_path / "rb")
    with pytest.raises(UsageError, match="earlier run"):  # a fresh run would mix its checkpoints with these
        train_rave(back, well, tmp_path / "e.safetensors", _cfg(steps=4), run_dir=tmp_path / "rb")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no checkpoints"):
        train_rave(back, well, tmp_path / "f.safetensors", _cfg(steps=4), run_dir=tmp_path / "rf", resume=tmp_path / "empty")


def test_paired_needs_matching_names(data, tmp_path, rng) -> None:
    back, _ = data
    other = write_images(tmp_path / "other", rng, n=2)
    (other / "0.png").rename(other / "zz.png")
    with pytest.raises(InputError, match="--paired"):
        train_rave(back, other, tmp_path / "o.safetensors", _cfg(paired=True))


def _clip_args(tmp_path: Path) -> list:
    (tmp_path / "vit.json").write_text(json.dumps(TINY_VIT))
    (tmp_path / "rn.json").write_text(json.dumps(TINY_RN))
    return ["--clip-model", tmp_path / "vit.json", "--clip-pretrained", "random",
            "--identity-model", tmp_path / "rn.json", "--identity-pretrained", "random"]


@pytest.mark.slow
def test_command_trains_shifted_rave_and_enhance_loads_it(data, tmp_path, capsys) -> None:
    back, well = data
    out = tmp_path / "mine.safetensors"
    args = ["train", "rave", "--backlit", back, "--welllit", well, "-o", out, "--steps", 2, "--warmup-steps", 1,
            "--batch-size", 2, "--size", 16, "--shift-tokens", 2, "--device", "cpu", *_clip_args(tmp_path)]
    assert main([str(a) for a in args]) == 0
    stdout, _ = capsys.readouterr()
    assert stdout.strip() == str(out) and (tmp_path / "mine_run" / "metrics.jsonl").is_file()
    with safe_open(str(out), "pt") as f:
        residual = json.loads(f.metadata()["lle"])["training"]["residual"]
    assert residual["shift_tokens"] == 2 and len(residual["closest_ids"]) == 2
    assert main([str(a) for a in args]) == 1  # the output exists: refused without --overwrite
    capsys.readouterr()

    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(1).random((20, 24, 3)) * 60).astype(np.uint8)).save(photo)
    code = main(["enhance", str(photo), "--model", "rave", "--weights", str(out), "-o", str(tmp_path / "e.png"), "--device", "cpu", "--quiet"])
    assert code == 0 and Image.open(tmp_path / "e.png").size == (24, 20)


@pytest.mark.slow
def test_two_process_ddp_with_gloo(data, tmp_path) -> None:
    back, well = data
    out = tmp_path / "ddp.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "lle_cli", "train", "rave", "--backlit", back, "--welllit", well, "-o", out, "--steps", 2,
           "--warmup-steps", 1, "--batch-size", 4, "--size", 16, "--device", "cpu", "--quiet", "--log-every", 1,
           *_clip_args(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(out)  # only rank 0 reports
    rows = _metrics(tmp_path / "ddp_run")
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert sorted(p.name for p in (tmp_path / "ddp_run" / "checkpoints").iterdir()) == [
        "step-00000002.json", "step-00000002.optim.safetensors", "step-00000002.safetensors"]
