"""A family that never tiles refuses, before any work, an image too large for the free memory."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lle_cli import api, runner
from lle_cli.cli.main import main
from lle_cli.errors import InputError
from lle_cli.models import build_model
from lle_cli.weights import save_safetensors


@pytest.fixture
def iat_weights(tmp_path):
    path = tmp_path / "iat.safetensors"
    save_safetensors({k: v.contiguous() for k, v in build_model("iat").state_dict().items()}, path)
    return path


def test_whole_image_family_refuses_what_would_not_fit(iat_weights, monkeypatch) -> None:
    model = api.load_model("iat.lol-v1", weights=iat_weights, device="cpu")
    rgb = np.full((64, 80, 3), 0.2, dtype=np.float32)
    monkeypatch.setattr(runner, "available_memory", lambda: 200 * 2**20)
    with pytest.raises(InputError, match=r"80x64 image needs about .* GiB .*never tiles.*0\.2 GiB free"):
        model.enhance(rgb)
    monkeypatch.setattr(runner, "available_memory", lambda: 64 * 2**30)
    assert model.enhance(rgb).shape == rgb.shape
    monkeypatch.setattr(runner, "available_memory", lambda: None)  # unknown (not Linux): no guess, it runs
    assert model.enhance(rgb).shape == rgb.shape


def test_tileable_families_are_never_refused(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(runner, "available_memory", lambda: 1)
    model = api.load_model("zero-dce.lle-sice")  # embedded, and tiles
    assert runner.FAMILIES[model.entry.family].tileable
    assert model.enhance(np.full((32, 32, 3), 0.2, dtype=np.float32)).shape == (32, 32, 3)


def test_the_cli_names_the_file_and_writes_nothing(iat_weights, tmp_path, monkeypatch, capsys) -> None:
    src = tmp_path / "big.png"
    Image.fromarray(np.full((64, 80, 3), 40, dtype=np.uint8)).save(src)
    monkeypatch.setattr(runner, "available_memory", lambda: 200 * 2**20)
    code = main(["enhance", str(src), "--model", "iat.lol-v1", "--weights", str(iat_weights), "-o", str(tmp_path / "out") + "/"])
    err = capsys.readouterr().err
    assert code != 0 and "big.png" in err and "downscale" in err
    assert not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True
