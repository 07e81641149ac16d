"""HVI-CIDNet (``lle_cli.models.cidnet``).

Parity with the authors' code on random weights: ``tests/data/zoo/cidnet`` holds the official module's
state-dict keys and its outputs, run as the authors' eval.py runs arbitrary-size images, for weights
that ``tests/random_state.py`` derives from each key's name and shape (``make_fixture.py`` there made
them; its NOTES.md has the commit, command, seed and scale). Here the same seeded weights go into lle's
module. Also: the HVI colour transform's round trip, gradients, the inference-only code paths, checkpoint
recognition and ``lle enhance`` end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lle_cli._cpu import prepare_for_inference
from lle_cli.models import FAMILIES, build_model, detect_family, load_state_strict
from lle_cli.models.cidnet import CIDNet, CIDNetConfig, hvi_to_rgb, rgb_to_hvi
from lle_cli.registry import get_registry
from lle_cli.weights import load_upstream_checkpoint, save_safetensors

from ..conftest import shared_path
from ..random_state import seeded_state
from .test_zoo import run

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "zoo" / "cidnet"
SEED, SCALE = 7, 0.9  # make_fixture.py's
# make_fixture.py's configurations (eval.py's flags) as lle architectures
CONFIGS = {
    "lolv1": {},  # eval.py --lol: gated, alpha_s 1.3 (the config's defaults)
    "lolv2_real_best_psnr": {"alpha_s": 1.0, "alpha_i": 0.8},  # --lol_v2_real --best_PSNR: gated2, alpha 0.8
    "unpaired_a0p9_g0p9": {"alpha_s": 1.0, "alpha_i": 0.9, "gamma": 0.9},  # --unpaired --alpha 0.9 --gamma 0.9
}
CASES = [("lowlight_odd", "lolv1"), ("lowlight_a", "lolv1"), ("lowlight_odd", "lolv2_real_best_psnr"),
         ("lowlight_odd", "unpaired_a0p9_g0p9")]
# measured: 1.4e-6 (autograd and inference paths), 5.1e-6 (channels-last); the bound is 1e-4
ATOL = 1e-4
# the proposed registry names (weights_manifest.json) of the configurations above
REGISTRY = {"lolv1": "cidnet.lolv1-wperc", "lolv2_real_best_psnr": "cidnet.lolv2-real-bestpsnr"}


def _seeded(arch: dict | None = None) -> CIDNet:
    model = build_model("cidnet", arch)
    load_state_strict(model, seeded_state({k: tuple(v.shape) for k, v in model.state_dict().items()}, SEED, scale=SCALE),
                      source="seeded")
    return model.eval()


def _official_input(img: str) -> torch.Tensor:
    """The PNG as the authors' loader reads it: PIL RGB, then ``ToTensor`` (float32 division by 255)."""
    rgb = np.asarray(Image.open(shared_path("golden", "inputs", f"{img}.png")).convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div(255)


def _randomised(**arch) -> CIDNet:
    torch.manual_seed(0)
    model = build_model("cidnet", arch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


SMALL = {"channels": (8, 8, 16, 32), "heads": (1, 2, 4, 8)}


# -- the official checkpoints' layout ---------------------------------------------------------------


def test_state_dict_keys_and_shapes_are_the_official_ones() -> None:
    official = json.loads((FIXTURES / "keys.json").read_text())
    ours = {k: list(v.shape) for k, v in build_model("cidnet").state_dict().items()}
    assert ours == official
    assert sum(v.numel() for v in build_model("cidnet").state_dict().values()) == 1_975_569  # the hub's "1.98M"


def test_seeded_checkpoint_is_recognised_from_a_file(tmp_path) -> None:
    state = seeded_state({k: tuple(v) for k, v in json.loads((FIXTURES / "keys.json").read_text()).items()}, SEED)
    assert detect_family(state) == "cidnet"
    path = tmp_path / "model.safetensors"  # what the hub repos hold
    save_safetensors(state, path)
    loaded = load_upstream_checkpoint(path)
    assert detect_family(loaded) == "cidnet"
    load_state_strict(build_model("cidnet"), loaded, source=str(path))
    # no other family's signature is inside a CIDNet state dict
    assert [f for f, s in FAMILIES.items() if s.signature_keys <= state.keys()] == ["cidnet"]


# -- parity with the authors' code ------------------------------------------------------------------


@pytest.mark.parity
@pytest.mark.parametrize(("img", "config"), CASES)
@pytest.mark.parametrize("path", ["autograd", "inference", "channels_last"])
def test_matches_the_official_eval_pipeline(img: str, config: str, path: str) -> None:
    """The whole pipeline: bottom/right reflection to a multiple of 8 (lowlight_odd is 90x131),
    ``x ** gamma``, the network, the gated inverse transform, crop; the runner's clamp."""
    model = _seeded(CONFIGS[config])
    x = _official_input(img)
    if path == "channels_last":
        prepare_for_inference(model, True, torch.device("cpu"))
    if path == "autograd":
        with torch.enable_grad():
            y = model(x).detach()
    else:
        with torch.inference_mode():
            y = model(x)
    golden = np.load(FIXTURES / f"{img}_{config}.npy")
    assert y.shape == golden.shape == (1, 3, *x.shape[-2:])
    err = float(np.abs(y.clamp(0, 1).numpy() - golden).max())
    assert err <= ATOL, f"{img}_{config} ({path}): max abs diff {err:.2e}"


@pytest.mark.parity
def test_fixtures_are_not_degenerate() -> None:
    """The seeded weights give outputs with texture, little clipping at 1, and configurations that differ."""
    outs = {f"{img}_{c}": np.load(FIXTURES / f"{img}_{c}.npy") for img, c in CASES}
    for name, y in outs.items():
        assert y.std() > 0.1 and (y >= 1).mean() < 0.01, name
    a, b = outs["lowlight_odd_lolv1"], outs["lowlight_odd_lolv2_real_best_psnr"]
    assert np.abs(a - b).max() > 0.05


@pytest.mark.parity
def test_lle_enhance_with_a_weights_file_matches_the_fixture(capsys, tmp_path) -> None:
    """`lle enhance -m cidnet.lolv1-wperc -w seeded.safetensors` (runner, channels-last, clamp, 8-bit)."""
    weights = tmp_path / "seeded.safetensors"
    save_safetensors(_seeded().state_dict(), weights)
    for img in ("lowlight_odd", "lowlight_a"):
        out = tmp_path / f"{img}.png"
        code, _, err = run(capsys, "enhance", shared_path("golden", "inputs", f"{img}.png"), "-m", REGISTRY["lolv1"],
                           "-w", weights, "-o", out, "-q")
        assert code == 0, err
        golden = np.load(FIXTURES / f"{img}_lolv1.npy")[0].transpose(1, 2, 0)
        expected = np.clip(golden * np.float32(255) + np.float32(0.5), 0, 255).astype(np.uint8)
        got = np.asarray(Image.open(out).convert("RGB"))
        assert got.shape == expected.shape
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1, img


def test_registry_entries_use_the_fixture_configurations() -> None:
    registry = get_registry()
    for config, name in REGISTRY.items():
        entry = registry.resolve(name)
        assert entry.family == "cidnet" and entry.parameters == 1_975_569
        assert build_model("cidnet", entry.architecture).config == CIDNetConfig(**CONFIGS[config]), name


# -- the HVI colour transform -----------------------------------------------------------------------


def _colours() -> torch.Tensor:
    """Random colours, pure primaries and secondaries, black, white, greys and near-greys, (1, 3, 1, N)."""
    g = torch.Generator().manual_seed(0)
    rand = torch.rand(3, 500, generator=g)
    dark = torch.rand(3, 100, generator=g) * 0.02
    levels = torch.tensor([0.0, 1 / 255, 0.1, 0.5, 254 / 255, 1.0])
    greys = levels.expand(3, -1)
    corners = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=torch.float32).T
    ties = torch.tensor([[0.5, 0.5, 0.2], [0.2, 0.5, 0.5], [0.5, 0.2, 0.5], [0.3, 0.3, 0.3001]]).T
    return torch.cat([rand, dark, greys, corners, ties], dim=1)[None, :, None, :]


@pytest.mark.parametrize("k", [0.2, 0.115824, 1.0])
def test_hvi_round_trip(k: float) -> None:
    rgb = _colours()
    density = torch.tensor([k])
    hvi = rgb_to_hvi(rgb, density)
    assert torch.isfinite(hvi).all() and hvi[:, :2].abs().max() <= 1
    torch.testing.assert_close(hvi[:, 2], rgb.amax(1), atol=0, rtol=0)  # I = max(R, G, B)
    back = hvi_to_rgb(hvi, density)
    # the inverse's eps: greys come back with saturation sqrt(1e-8) = 1e-4, so within v * 1e-4
    torch.testing.assert_close(back, rgb, atol=2e-4, rtol=0)
    assert back[..., 500:600].sub(rgb[..., 500:600]).abs().max() < 1e-5  # the near-black ones
    grey = rgb_to_hvi(torch.full((1, 3, 1, 1), 0.4), density)
    assert grey[0, :2].abs().max() == 0 and grey[0, 2].item() == pytest.approx(0.4)
    assert hvi_to_rgb(torch.zeros(1, 3, 1, 1), density).abs().max() == 0  # black stays black


def test_hvi_gains() -> None:
    rgb = _colours()
    density = torch.tensor([0.2])
    hvi = rgb_to_hvi(rgb, density)
    torch.testing.assert_close(hvi_to_rgb(hvi, density, alpha_i=0.8), 0.8 * hvi_to_rgb(hvi, density), atol=1e-7, rtol=0)
    plain, vivid = hvi_to_rgb(hvi, density), hvi_to_rgb(hvi, density, alpha_s=1.3)
    assert torch.equal(plain.amax(1), vivid.amax(1))  # the saturation gain keeps the intensity
    assert (plain.amin(1) - vivid.amin(1)).min() >= 0  # and lowers the smallest channel


def test_inverse_clamps_out_of_range_hvi() -> None:
    g = torch.Generator().manual_seed(1)
    hvi = torch.randn(2, 3, 7, 9, generator=g) * 3
    rgb = hvi_to_rgb(hvi, torch.tensor([0.2]), alpha_s=1.3)
    assert torch.isfinite(rgb).all() and rgb.min() >= 0 and rgb.max() <= 1


# -- random weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [{}, {"alpha_s": 1.0, "alpha_i": 0.82, "gamma": 0.9}, {**SMALL, "norm": True}])
@pytest.mark.parametrize("size", [(17, 23), (5, 7), (1, 2)])
def test_random_weights_forward_backward(arch: dict, size: tuple[int, int]) -> None:
    model = _seeded(arch).train()  # the fixtures' weights: an output that is neither black nor clipped
    x = (torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 0.4 + 0.02).requires_grad_(True)
    y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for n, p in model.named_parameters():
        if n.startswith("I_LCA5."):  # upstream computes it and throws it away: frozen, no gradient
            assert not p.requires_grad and p.grad is None, n
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert model.trans.density_k.grad.abs().item() > 0
    assert detect_family(model.state_dict()) == "cidnet"


def test_i_lca5_never_reaches_the_output() -> None:
    model = _randomised().eval()
    x = torch.rand(1, 3, 24, 32) * 0.3
    with torch.no_grad():
        before = model(x)
        for p in model.I_LCA5.parameters():
            p.add_(1.0)
        assert torch.equal(model(x), before)


@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_path_equals_the_autograd_path(channels_last: bool) -> None:
    model = _randomised(**SMALL).eval()
    x = torch.rand(1, 3, 37, 50) * 0.5
    slow = model(x.clone().requires_grad_()).detach()
    if channels_last:
        prepare_for_inference(model, FAMILIES["cidnet"].channels_last, torch.device("cpu"))
    with torch.inference_mode():
        fast = model(x)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    assert x.max() <= 0.5  # the input is never modified in place


def test_pads_bottom_right_by_reflection_like_the_authors_scripts() -> None:
    """An odd-sized image gives the crop of the result for its bottom/right reflection to a multiple of 8."""
    model = _randomised(**SMALL).eval()
    x = torch.rand(1, 3, 21, 30) * 0.5
    padded = torch.nn.functional.pad(x, (0, 2, 0, 3), mode="reflect")
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., :21, :30], atol=0, rtol=0)


def test_spec() -> None:
    spec = FAMILIES["cidnet"]
    assert spec.multiple_of == 1 and spec.min_size == 9  # the model pads itself; see the module docstring
    assert not spec.tileable and spec.channels_last
    with pytest.raises(ValueError, match="multiple of its heads"):
        CIDNetConfig(channels=(36, 36, 72, 144), heads=(1, 2, 5, 8))
    with pytest.raises(ValueError, match="gamma"):
        CIDNetConfig(gamma=0.0)
