"""LLFlow against the official code's outputs (../shared/golden/llflow), both published code paths.

``small`` is LOL_smallNet.yml with an official-format ``.pth``; ``mid`` is LOL-pc.yml with nb 8 / K 2
(same code paths as the standard model) as a safetensors with official key names. Tolerance: 1e-4
relative to each array's largest magnitude (shared/golden/NOTES.md section 7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from lle_cli import cache
from lle_cli.cli.main import main
from lle_cli.loading import import_checkpoint
from lle_cli.models import load_state_strict
from lle_cli.models.llflow import LLFlow, LLFlowConfig, pad_symmetric
from lle_cli.flows.layers import squeeze2d
from lle_cli.models.llflow.model import negative_log_likelihood
from lle_cli.registry import Registry, manifest_path
from lle_cli.weights import load_safetensors, load_upstream_checkpoint

from ..conftest import shared_path

pytestmark = pytest.mark.parity

RTOL = 1e-4
CONFIGS = {
    "small": (LLFlowConfig(nf=32, nb=4, K=4, stack_blocks=(1,)), "llflow_small_random.pth"),
    "mid": (LLFlowConfig(nb=8, K=2), "llflow_mid_random.safetensors"),
}
IMAGES = ("lowlight_a", "lowlight_odd")
PAIRS = ((1, 0), (0.5, 0.2), (0, -0.4))  # (tau, offset) of the golden samples


def _close(actual: torch.Tensor, golden: np.ndarray, rtol: float = RTOL) -> None:
    a = actual.detach().float().numpy()
    assert a.shape == golden.shape
    err = np.abs(a - golden).max() / np.abs(golden).max()
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


def _image(name: str) -> torch.Tensor:
    rgb = np.asarray(Image.open(shared_path("golden", "inputs", f"{name}.png")).convert("RGB"), dtype=np.float32) / np.float32(255)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous()


@dataclass
class Run:
    """Everything computed once per (config, image) by our implementation."""

    model: LLFlow
    lq: torch.Tensor
    padded: torch.Tensor
    first_conv_input: torch.Tensor
    features: object
    heat0: torch.Tensor
    heat0_logdet: torch.Tensor
    final: torch.Tensor
    samples: torch.Tensor
    samples_logdet: torch.Tensor


_MODELS: dict[str, LLFlow] = {}


def _model(cfg_name: str) -> LLFlow:
    if cfg_name not in _MODELS:
        cfg, file = CONFIGS[cfg_name]
        model = LLFlow(cfg)
        load_state_strict(model, load_upstream_checkpoint(shared_path("golden", "llflow", file)), source=file)
        _MODELS[cfg_name] = model.eval()
    return _MODELS[cfg_name]


@pytest.fixture(scope="module", params=[(c, i) for c in CONFIGS for i in IMAGES], ids=lambda p: f"{p[0]}-{p[1]}")
def run(request) -> tuple[str, str, Run]:
    cfg_name, img = request.param
    model = _model(cfg_name)
    torch.set_num_threads(2)
    x = _image(img)
    eps = torch.from_numpy(np.load(shared_path("golden", "llflow", "common", f"{img}_eps_seed1234.npy")))
    with torch.no_grad():
        lq, pad = model.prepare(x)
        feats = model.condition(lq)
        mean = model.latent_mean(feats)
        heat0, ld0 = model.decode(feats, mean)  # batch 1: upstream's exact computation
        z = torch.cat([mean + tau * eps + off for tau, off in PAIRS])
        samples, ld = model.decode(feats, z)  # batch 3 against batch-1 features: the sampling path
    final = pad.crop(heat0).clamp(0, 1)  # what forward() returns (tests/models/test_llflow.py), clamped
    r = Run(model, lq, pad_symmetric(x, pad), model.RRDB.first_conv_input(lq), feats, heat0, ld0, final, samples, ld)
    return cfg_name, img, r


def _golden(cfg: str, name: str) -> np.ndarray:
    return np.load(shared_path("golden", "llflow", cfg, f"{name}.npy"))


def test_preprocessing_is_exact(run) -> None:
    _, img, r = run
    common = lambda what: np.load(shared_path("golden", "llflow", "common", f"{img}_{what}.npy"))  # noqa: E731
    np.testing.assert_array_equal(r.padded.numpy(), common("padded"))  # 16-px symmetric padding quirk
    np.testing.assert_array_equal(r.lq[:, 3:].numpy(), common("histeq"))  # equalizeHist, bit for bit
    _close(r.lq, common("net_input"), 1e-6)
    _close(r.first_conv_input, common("conv_first_input"), 1e-6)


def test_encoder_features_and_colour_map(run) -> None:
    cfg, img, r = run
    for feat, key in zip(r.features.levels, ("fea_up2", "fea_up1", "fea_up0")):
        _close(feat, _golden(cfg, f"{img}_{key}"))
    _close(r.features.color_map, _golden(cfg, f"{img}_color_map"))


def test_deterministic_output(run) -> None:
    cfg, img, r = run
    _close(r.heat0, _golden(cfg, f"{img}_reverse_heat0"))
    _close(r.heat0_logdet, _golden(cfg, f"{img}_reverse_heat0_logdet"))
    _close(r.final, _golden(cfg, f"{img}_final"))


def test_official_8bit_output_truncates(run) -> None:
    cfg, img, r = run
    official = np.asarray(Image.open(shared_path("golden", "llflow", cfg, f"{img}_final_uint8.png")).convert("RGB")).astype(int)
    ours = np.floor(r.final[0].permute(1, 2, 0).numpy() * 255).astype(int)
    # equal except where a value sits within float error of a code boundary
    assert np.abs(ours - official).max() <= 1 and (ours != official).mean() < 1e-3


def test_samples_with_the_given_eps(run) -> None:
    cfg, img, r = run
    for i, (tau, off) in enumerate(PAIRS):
        tag = f"{img}_sample_tau{tau}_off{off}"
        _close(r.samples[i : i + 1], _golden(cfg, tag))
        _close(r.samples_logdet[i : i + 1], _golden(cfg, f"{tag}_logdet"))


def test_encode_z_logdet_and_nll(run) -> None:
    cfg, img, r = run
    gt = torch.from_numpy(np.load(shared_path("golden", "llflow", "common", f"{img}_gt_bright.npy")))
    with torch.no_grad():
        z, logdet = r.model.encode(gt, r.features)
    pixels = gt.shape[2] * gt.shape[3]
    nll = negative_log_likelihood(z, r.model.latent_mean(r.features), logdet, pixels)  # colour-map branch
    nll_gt = negative_log_likelihood(z, squeeze2d(gt / (gt.sum(1, keepdim=True) + 1e-4), 8), logdet, pixels)  # GT branch
    _close(z, _golden(cfg, f"{img}_encode_z"))
    _close(logdet, _golden(cfg, f"{img}_encode_logdet"))
    _close(nll, _golden(cfg, f"{img}_encode_nll"))
    _close(nll_gt, _golden(cfg, f"{img}_encode_nll_gtbranch"))


@pytest.mark.slow
def test_official_pth_through_models_import_and_enhance(tmp_path, capsys) -> None:
    src = shared_path("golden", "llflow", "llflow_small_random.pth")
    assert main(["models", "import", str(src)]) == 1  # unknown sha256: refused without a name
    assert "llflow" in capsys.readouterr().err
    assert main(["models", "import", str(src), "--model", "llflow.lol-small", "--trust-unknown"]) == 0
    out = tmp_path / "odd.png"
    assert main(["enhance", str(shared_path("golden", "inputs", "lowlight_odd.png")), "-m", "llflow.lol-small", "-o", str(out), "-q"]) == 0
    got = np.asarray(Image.open(out)).astype(int)
    want = np.rint(_golden("small", "lowlight_odd_final")[0].transpose(1, 2, 0) * 255).astype(int)
    assert got.shape == (90, 131, 3)  # the padding is undone
    assert np.abs(got - want).max() <= 1 and (got != want).mean() < 1e-3


def test_official_key_safetensors_through_import() -> None:
    import json

    raw = json.loads(manifest_path().read_text())
    raw["models"]["llflow.mid-test"] = {**raw["models"]["llflow.lol"], "architecture": {"nb": 8, "K": 2}, "parameters": 9352691}
    reg = Registry(raw)
    r = import_checkpoint(shared_path("golden", "llflow", "llflow_mid_random.safetensors"), "llflow.mid-test", trust_unknown=True, registry=reg)
    assert not r.verified and r.path == cache.cached_weights_path("llflow.mid-test")
    state = load_safetensors(r.path)
    assert not any(k.startswith("flowUpsamplerNet.f.") for k in state)  # never-used heads are not stored
    reference = _model("mid").state_dict()  # loaded straight from the file, and checked by the tests above
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)
