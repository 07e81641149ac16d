from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from lle_cli.models.zero_dce import ZeroDCE
from lle_cli.train.zero_dce import ZeroDCETrainConfig, train_zero_dce
from lle_cli.weights import load_safetensors, sha256_file


def _images(folder, rng, n=4):
    folder.mkdir()
    for i in range(n):
        arr = (rng.random((40, 48, 3)) * (60 if i % 2 else 250)).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.png")
    return folder


def test_training_is_deterministic_and_writes_loadable_safetensors(tmp_path, rng) -> None:
    data = _images(tmp_path / "data", rng)
    cfg = ZeroDCETrainConfig(steps=3, batch_size=2, resize=32, crop=16)
    a = train_zero_dce(data, tmp_path / "a.safetensors", cfg)
    b = train_zero_dce(data, tmp_path / "b.safetensors", cfg)
    assert np.isfinite(a.final_loss) and a.images == 4
    assert sha256_file(a.output) != "" and load_safetensors(a.output).keys() == ZeroDCE().state_dict().keys()
    sa, sb = load_safetensors(a.output), load_safetensors(b.output)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with safe_open(str(a.output), "pt") as f:
        recipe = json.loads(f.metadata()["lle"])
    assert recipe["training"]["config"]["steps"] == 3 and recipe["family"] == "zero_dce"


def test_training_moves_the_weights(tmp_path, rng) -> None:
    data = _images(tmp_path / "data", rng)
    cfg = ZeroDCETrainConfig(steps=1, batch_size=2, resize=32, crop=16, seed=1)
    one = load_safetensors(train_zero_dce(data, tmp_path / "1.safetensors", cfg).output)
    cfg5 = ZeroDCETrainConfig(steps=5, batch_size=2, resize=32, crop=16, seed=1)
    five = load_safetensors(train_zero_dce(data, tmp_path / "5.safetensors", cfg5).output)
    assert any(not torch.equal(one[k], five[k]) for k in one)
