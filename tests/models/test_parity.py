"""Numerical parity with the official code's outputs (../shared/golden), float32, library API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lle_cli.models import build_model, load_state_strict
from lle_cli.registry import get_registry
from lle_cli.weights import load_upstream_checkpoint

from ..conftest import UPSTREAM_FILES, shared_path

pytestmark = pytest.mark.parity

UNET_GOLDEN = {
    "rave.paired": "rave_paired",
    "rave.unpaired": "rave_unpaired",
    "rave.unpaired-shifted": "rave_unpaired_shifted",
    "clip-lit.paired": "clip_lit_paired",
    "clip-lit.unpaired": "clip_lit_unpaired",
    "clip-lit.official": "cliplit_official",
    "clip-lit-latent.paired": "clip_lit_latent_paired",
    "clip-lit-latent.unpaired": "clip_lit_latent_unpaired",
}
IMAGES = ("backlit_a", "lowlight_a")
RTOL = 1e-5  # relative to the array's largest magnitude (shared/golden/NOTES.md)


def _load(name: str) -> torch.nn.Module:
    entry = get_registry().resolve(name)
    model = build_model(entry.family, entry.architecture)
    load_state_strict(model, load_upstream_checkpoint(shared_path("upstream", "weights", UPSTREAM_FILES[name])), source=name)
    return model.eval()


def _input(img: str) -> torch.Tensor:
    return torch.from_numpy(np.load(shared_path("golden", "inputs", f"{img}_float.npy")))


def _close(actual: torch.Tensor, golden: np.ndarray) -> None:
    assert actual.shape == golden.shape
    err = np.abs(actual.numpy() - golden).max() / np.abs(golden).max()
    assert err <= RTOL, f"relative error {err:.2e} > {RTOL:.0e}"


@pytest.mark.parametrize("name", sorted(UNET_GOLDEN))
def test_illumination_unet_matches_official(name: str) -> None:
    model = _load(name)
    for img in IMAGES:
        x = _input(img)
        with torch.no_grad():
            light, enhanced = model.illumination(x), model(x)
        folder = shared_path("golden", "unet", UNET_GOLDEN[name])
        _close(light, np.load(folder / f"{img}_light_map.npy"))
        _close(enhanced, np.load(folder / f"{img}_enhanced.npy"))


def test_scl_lle_matches_official() -> None:
    model = _load("scl-lle.official")
    for img in IMAGES:
        with torch.no_grad():
            half, final, curves = model.forward_all(_input(img))
        folder = shared_path("golden", "scllle")
        _close(half, np.load(folder / f"{img}_enhance_image_1.npy"))
        _close(final, np.load(folder / f"{img}_enhance_image.npy"))
        _close(curves, np.load(folder / f"{img}_r.npy"))
