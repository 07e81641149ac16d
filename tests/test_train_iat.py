"""`lle train iat`: the SSIM loss by hand, the three kinds of pairs, training, resume and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lle_cli.cli.main import main
from lle_cli.errors import InputError, UsageError
from lle_cli.models.iat import IAT
from lle_cli.train.iat import IATTrainConfig, _Data, ssim_loss, train_iat
from lle_cli.weights import load_safetensors


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def data(tmp_path) -> tuple[Path, Path]:
    """Four real-looking pairs (dark = the bright image scaled down, with noise) and three photos."""
    rng = np.random.default_rng(0)
    real, photos = tmp_path / "pairs", tmp_path / "photos"
    for i in range(4):
        yy, xx = np.mgrid[0:48, 0:56]
        high = np.stack([(xx * 4 + 40 * i) % 256, (yy * 5) % 256, ((xx + yy) * 2) % 256], axis=-1).astype(np.uint8)
        low = np.clip(high * 0.12 + rng.normal(0, 2, high.shape), 0, 255).astype(np.uint8)
        _write(real / "high" / f"{i}.png", high)
        _write(real / "low" / f"{i}.png", low)
    for i in range(3):
        _write(photos / f"p{i}.png", rng.integers(30, 230, (40, 44, 3), dtype=np.uint8))
    return real, photos


def _cfg(**kw) -> IATTrainConfig:
    base = dict(steps=4, batch_size=2, crop=32, val_pairs=1, val_every=2, checkpoint_every=2, lr=1e-3)
    base.update(kw)
    return IATTrainConfig(**base)


def test_ssim_loss_is_zero_for_equal_images_and_grows_with_difference() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 24, 24)
    assert torch.allclose(ssim_loss(x, x), torch.zeros(2), atol=1e-6)
    small, large = ssim_loss(x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1)), ssim_loss(x, torch.rand_like(x))
    assert (0 < small).all() and (small < large).all()
    # the structure term: a constant image against a textured one scores far from 0
    assert ssim_loss(torch.full_like(x, 0.5), x).min() > 0.5


def test_items_are_the_three_kinds_of_pairs(data) -> None:
    real, photos = data
    pair = (np.asarray(Image.open(real / "low" / "0.png")), np.asarray(Image.open(real / "high" / "0.png")))
    photo = np.asarray(Image.open(photos / "p0.png"))
    d = _Data([pair], [photo], _cfg(p_real=0.4, p_synth=0.3))
    g = torch.Generator().manual_seed(1)
    kinds: dict[str, int] = {}
    for i in range(300):
        x, y, kind = d.item(g, i)
        kinds[kind] = kinds.get(kind, 0) + 1
        assert x.shape == y.shape == (3, 32, 32)
        if kind == "identity":
            assert torch.equal(x, y)
        elif kind == "synth":
            assert x.mean() < y.mean()  # made dark
        else:
            assert x.mean() < 0.5 * y.mean()
    assert {k: round(v / 300, 1) for k, v in kinds.items()} == {"real": 0.4, "synth": 0.3, "identity": 0.3}


def test_training_learns_and_resumes_exactly(data, tmp_path) -> None:
    real, photos = data
    r = train_iat(real, [photos], tmp_path / "a.safetensors", _cfg(), val_photos=photos, run_dir=tmp_path / "ra")
    w = load_safetensors(r.output)
    model = IAT()
    model.load_state_dict(w)  # the file is a plain IAT state dict
    assert all(torch.isfinite(v).all() for v in w.values())
    log = [json.loads(line) for line in (tmp_path / "ra" / "metrics.jsonl").read_text().splitlines()]
    assert {"val_real_psnr", "val_identity_psnr"} <= set(log[-1])
    # resumed from the checkpoint of step 2 in a new run directory: the same weights as the uninterrupted run
    step2 = tmp_path / "ra" / "checkpoints" / "step-00000002.safetensors"
    resumed = train_iat(real, [photos], tmp_path / "c.safetensors", _cfg(), val_photos=photos, run_dir=tmp_path / "rb", resume=step2)
    assert resumed.resumed_from == 2
    c = load_safetensors(resumed.output)
    assert all(torch.equal(w[k], c[k]) for k in w)
    with pytest.raises(UsageError, match="different settings"):
        train_iat(real, [photos], tmp_path / "d.safetensors", _cfg(lr=5e-4, steps=6), run_dir=tmp_path / "rd", resume=step2)


def test_more_steps_fit_the_training_pairs_better(data, tmp_path) -> None:
    real, photos = data
    few = train_iat(real, [photos], tmp_path / "few.safetensors", _cfg(steps=2, val_every=100), run_dir=tmp_path / "r1")
    many = train_iat(real, [photos], tmp_path / "many.safetensors", _cfg(steps=16, val_every=100), run_dir=tmp_path / "r2")
    pair = [np.asarray(Image.open(real / k / "0.png")) for k in ("low", "high")]
    x, y = (torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1)[None] for a in pair)

    def err(path: Path) -> float:
        m = IAT()
        m.load_state_dict(load_safetensors(path))
        with torch.no_grad():
            return float((m(x) - y).abs().mean())

    assert err(many.output) < err(few.output)


def test_bad_data_is_a_clear_error(tmp_path, data) -> None:
    real, photos = data
    with pytest.raises(InputError, match="low/ and high/"):
        train_iat(photos, [], tmp_path / "x.safetensors", _cfg())
    with pytest.raises(InputError, match="smaller than the crop"):
        train_iat(real, [photos], tmp_path / "x.safetensors", _cfg(crop=64))
    with pytest.raises(InputError, match="sum to at most 1"):
        IATTrainConfig(p_real=0.8, p_synth=0.5)


def test_cli_trains_and_prints_the_weights_path(data, tmp_path, capsys) -> None:
    real, photos = data
    out = tmp_path / "cli.safetensors"
    code = main(["train", "iat", "-o", str(out), "--real", str(real), "--photos", str(photos), "--steps", "2",
                 "--batch-size", "2", "--crop", "32", "--val-pairs", "1", "--quiet"])
    assert code == 0 and capsys.readouterr().out.strip() == str(out) and out.is_file()
    code = main(["train", "iat", "-o", str(out), "--real", str(real), "--steps", "2", "--quiet"])
    assert code != 0 and "already exists" in capsys.readouterr().err


def test_cli_defaults_are_the_trainer_defaults() -> None:
    from lle_cli.cli import train_iat as cli

    d = IATTrainConfig()
    assert (cli._STEPS, cli._BATCH, cli._CROP, cli._LR, cli._P_REAL, cli._P_SYNTH) == (d.steps, d.batch_size, d.crop, d.lr, d.p_real, d.p_synth)
