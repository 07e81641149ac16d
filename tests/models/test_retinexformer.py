"""Retinexformer (lle_cli.models.retinexformer) against the authors' code, on seeded random weights.

The fixtures in tests/data/zoo/retinexformer (NOTES.md there) are the official network's outputs
through the official test script's steps (bottom/right reflection padding to a multiple of 4, crop;
the arrays are kept before the script's final clamp) with ``tests/random_state.seeded_state``
weights, so lle's model gets the same numbers from its own key names. Also: the state dict against
upstream's keys and shapes, checkpoint recognition (raw and BasicSR's ``{'params': ...}``), `lle
enhance` end to end, the inference path (in place, in strips) against the autograd path, gradients.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import lle_cli.models.retinexformer as rf
from lle_cli.models import FAMILIES, build_model, detect_family, load_state_strict
from lle_cli.registry import get_registry
from lle_cli.runner import LoadedModel
from lle_cli.weights import load_upstream_checkpoint, save_safetensors

from ..conftest import shared_path
from ..random_state import seeded_state
from .test_zoo import run

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "zoo" / "retinexformer"
ATOL = 1e-4  # max |ours - official| allowed; measured ~1.3e-7
NAME = "retinexformer.lol-v1"
FAMILY = "retinexformer"


def _fixture_script() -> ModuleType:
    """make_fixture.py, for its configs, seed and scale (one place for both sides)."""
    spec = importlib.util.spec_from_file_location("retinexformer_make_fixture", FIXTURES / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE = _fixture_script()
RUNS = [(cfg, img) for cfg, imgs in MAKE.RUNS.items() for img in imgs]


def _arch(config: str) -> dict:
    """make_fixture's constructor arguments as lle architecture fields (the same names)."""
    return dict(MAKE.CONFIGS[config])


def _seeded(arch: dict | None = None, *, seed: int = MAKE.SEED, scale: float = MAKE.SCALE) -> torch.nn.Module:
    model = build_model(FAMILY, arch)
    state = seeded_state({k: tuple(v.shape) for k, v in model.state_dict().items()}, seed=seed, scale=scale)
    load_state_strict(model, state, source="seeded")
    return model.eval()


def _official_input(img: str) -> torch.Tensor:
    """The PNG as the test script reads it: RGB, float32 / 255, (1, 3, H, W)."""
    rgb = np.asarray(Image.open(shared_path("golden", "inputs", f"{img}.png")).convert("RGB"))
    return torch.from_numpy(np.float32(rgb) / np.float32(255.0)).permute(2, 0, 1)[None]


# -- the authors' layout and numbers ----------------------------------------------------------------


@pytest.mark.parametrize("config", sorted(MAKE.CONFIGS))
def test_state_dict_keys_and_shapes_are_upstreams(config: str) -> None:
    official = json.loads((FIXTURES / "keys.json").read_text())[config]
    ours = {k: list(v.shape) for k, v in build_model(FAMILY, _arch(config)).state_dict().items()}
    assert ours == official


def test_released_config_is_the_default() -> None:
    assert _arch("lol-v1") == {"n_feat": 40, "stage": 1, "num_blocks": [1, 2, 2]}
    assert FAMILIES[FAMILY].make_config(_arch("lol-v1")) == rf.RetinexformerConfig()
    assert sum(p.numel() for p in build_model(FAMILY).parameters()) == 1_605_701


@pytest.mark.parity
@pytest.mark.parametrize(("config", "img"), RUNS)
def test_matches_the_official_pipeline(config: str, img: str) -> None:
    golden = np.load(FIXTURES / f"{config}_{img}.npy")
    model = _seeded(_arch(config))
    x = _official_input(img)
    with torch.inference_mode():  # the path lle runs: in place, in strips
        fast = model(x).numpy()
    with torch.enable_grad():  # upstream's formulation, as traced for ONNX
        plain = model(x).detach().numpy()
    assert fast.shape == plain.shape == golden.shape == (1, 3, *x.shape[-2:])
    for ours in (fast, plain):
        assert float(np.abs(ours - golden).max()) <= ATOL
    # the script's result is the clamp of these; lle's runner clamps the same way
    assert float(np.abs(np.clip(fast, 0, 1) - np.clip(golden, 0, 1)).max()) <= ATOL
    assert golden.std() > 0.01  # a fixture of a network that does something


@pytest.mark.parity
def test_small_strips_match_the_official_pipeline(monkeypatch) -> None:
    """Strips of one row (the FFN at the first level) and of ~200 pixels (Q and K)."""
    monkeypatch.setattr(rf, "STRIP_ELEMENTS", 1 << 13)
    model = _seeded(_arch("lol-v1"))
    with torch.inference_mode():
        out = model(_official_input("lowlight_odd")).numpy()
    assert float(np.abs(out - np.load(FIXTURES / "lol-v1_lowlight_odd.npy")).max()) <= ATOL


def test_padding_is_the_test_scripts() -> None:
    """Enhancement/test_from_dataset.py: ``H = ((h + 4) // 4) * 4``, padded by ``H - h`` only when h
    is not a multiple, at the bottom and right, by reflection; lle's runner adds nothing."""
    assert FAMILIES[FAMILY].multiple_of == 1
    for h, w in [(8, 12), (9, 13), (10, 14), (11, 15), (5, 4)]:
        x = torch.rand(1, 3, h, w)
        padh = ((h + 4) // 4) * 4 - h if h % 4 else 0
        padw = ((w + 4) // 4) * 4 - w if w % 4 else 0
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                padded, hh, ww = rf.pad_like_official(x)
            assert (hh, ww) == (h, w)
            torch.testing.assert_close(padded, F.pad(x, (0, padw, 0, padh), mode="reflect"), atol=0, rtol=0)


def test_runner_output_is_the_clamped_network_output() -> None:
    model = _seeded({"n_feat": 8, "num_blocks": [1, 1, 1]})
    loaded = LoadedModel(get_registry().resolve(NAME), model, torch.device("cpu"), torch.float32, "test", tile=0)
    x = torch.rand(1, 3, 21, 30) * 0.4
    with torch.inference_mode():
        expected = model(x).clamp(0, 1)
    torch.testing.assert_close(loaded.enhance_tensor(x), expected, atol=0, rtol=0)
    tiny = torch.rand(1, 3, 2, 3) * 0.4  # below min_size: the runner pads to 8 first
    assert loaded.enhance_tensor(tiny).shape == tiny.shape


# -- recognising and loading checkpoints ------------------------------------------------------------


@pytest.mark.parametrize("config", sorted(MAKE.CONFIGS))
def test_checkpoints_are_recognised_raw_and_as_basicsr_saves_them(tmp_path, config: str) -> None:
    model = _seeded(_arch(config))
    state = model.state_dict()
    assert detect_family(state) == FAMILY
    path = tmp_path / "net_g.pth"
    torch.save({"params": state}, path)  # BasicSR's save_network
    loaded = load_upstream_checkpoint(path)
    assert detect_family(loaded) == FAMILY and loaded.keys() == state.keys()
    other = build_model(FAMILY, _arch(config))
    load_state_strict(other, loaded, source=str(path))
    x = torch.rand(1, 3, 12, 20) * 0.3
    with torch.inference_mode():
        torch.testing.assert_close(other.eval()(x), model(x), atol=0, rtol=0)


def test_no_other_family_claims_a_retinexformer_checkpoint() -> None:
    state = build_model(FAMILY, {"n_feat": 8, "stage": 2, "num_blocks": [0, 1, 0]}).state_dict()
    assert [n for n, spec in FAMILIES.items() if spec.signature_keys <= state.keys()] == [FAMILY]


# -- `lle enhance` ----------------------------------------------------------------------------------


@pytest.mark.parity
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_lle_enhance_matches_the_fixture(capsys, tmp_path, fmt: str) -> None:
    """`lle enhance --weights` with the seeded weights (ours as safetensors, or the authors' format)
    writes the fixture's output, clamped and rounded to 8 bits, within one level."""
    state = _seeded().state_dict()
    weights = tmp_path / f"seeded.{fmt}"
    if fmt == "safetensors":
        save_safetensors(state, weights)
    else:
        torch.save({"params": state}, weights)
    out = tmp_path / "out.png"
    photo = shared_path("golden", "inputs", "lowlight_odd.png")
    code, _, err = run(capsys, "enhance", photo, "-m", NAME, "--weights", weights, "-o", out, "-q")
    assert code == 0, err
    golden = np.load(FIXTURES / "lol-v1_lowlight_odd.npy")[0].transpose(1, 2, 0)
    expected = np.rint(np.clip(golden, 0, 1) * 255).astype(int)
    assert np.abs(np.asarray(Image.open(out).convert("RGB")).astype(int) - expected).max() <= 1


def test_manifest_entries_build_and_count_parameters() -> None:
    entries = [e for e in get_registry().models.values() if e.family == FAMILY]
    assert NAME in {e.name for e in entries}
    for entry in entries:
        model = build_model(FAMILY, entry.architecture)
        assert sum(p.numel() for p in model.parameters()) == entry.parameters, entry.name


# -- random weights ---------------------------------------------------------------------------------

ARCHS = [{}, {"n_feat": 16, "stage": 2, "num_blocks": [1, 1, 1]}, {"n_feat": 8, "num_blocks": [0, 2, 1]}]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [(17, 23), (4, 8), (1, 2)])
def test_random_weights_forward_backward(arch: dict, size: tuple[int, int]) -> None:
    model = _seeded(arch, seed=3).train()
    x = (torch.rand(2, 3, *size) * 0.5).requires_grad_(True)
    y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("arch", ARCHS)
def test_inference_path_equals_the_autograd_path(monkeypatch, arch: dict) -> None:
    model = _seeded(arch, seed=4)
    x = torch.rand(2, 3, 37, 50) * 0.5
    with torch.enable_grad():
        slow = model(x.clone().requires_grad_()).detach()
    for strip in (rf.STRIP_ELEMENTS, 1 << 12):  # whole, then many strips of each kind
        monkeypatch.setattr(rf, "STRIP_ELEMENTS", strip)
        with torch.inference_mode():
            fast = model(x)
        torch.testing.assert_close(fast, slow, atol=2e-6 * max(1.0, slow.abs().max().item()), rtol=0)
    assert x.max() <= 0.5  # the input is never modified in place


def test_inference_path_runs_under_bf16_autocast() -> None:
    """The in-place decoder fusion once mixed autocast's bf16 product with a float32 operand and raised
    (bench/vs_engines.py's bf16 contender); it now follows the autocast dtype, close to float32."""
    model = _seeded({"n_feat": 16, "stage": 2, "num_blocks": [1, 1, 1]}, seed=5)
    x = torch.rand(1, 3, 32, 40) * 0.5
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.shape == ref.shape and torch.isfinite(low.float()).all()
    assert (low.float() - ref).abs().max() < 0.1 * max(1.0, ref.abs().max().item())


def test_every_output_pixel_depends_on_the_whole_image() -> None:
    """Why the family is never tiled: the attention's sums over all pixels carry a change in one
    corner to the opposite one, far beyond any convolution's reach."""
    assert not FAMILIES[FAMILY].tileable
    model = _seeded({"n_feat": 8, "num_blocks": [1, 1, 1]})
    x = torch.rand(1, 3, 64, 64) * 0.4
    y = x.clone()
    y[..., :4, :4] += 0.3
    with torch.inference_mode():
        far = (model(x) - model(y))[..., -8:, -8:]
    assert far.abs().max() > 1e-6
