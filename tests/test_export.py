"""ONNX export (``lle_cli.export``, ``lle models export --format onnx``): every registered family
exports, and ONNX Runtime reproduces lle's own output from the file at sizes other than the traced
one; the flow family's graph reproduces both ``lle enhance`` and ``lle sample`` given the noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="onnx (the onnx extra) is not installed")
pytest.importorskip("onnxscript", reason="onnxscript (the onnx extra) is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the onnx extra) is not installed")

import onnx  # noqa: E402

from lle_cli import api  # noqa: E402
from lle_cli.cli.main import main  # noqa: E402
from lle_cli.errors import OutputExistsError  # noqa: E402
from lle_cli.export import OPSET, TOLERANCE, ExportError, export_onnx, onnx_paths  # noqa: E402
from lle_cli.models import FAMILIES, build_model  # noqa: E402
from lle_cli.runner import LoadedModel  # noqa: E402
from lle_cli.sampling import sample_array  # noqa: E402

# Small architectures keep tracing and the check quick; a family missing here is exported at its
# default size (slower, but never skipped).
SMALL: dict[str, dict] = {
    "zero_dce": {"width": 8},
    "zero_dce_pp": {"width": 8},
    "illumination_unet": {"width": 8, "pool_reduction": 4},
    "iat": {"local_width": 8, "local_blocks": 1, "global_width": 16, "global_heads": 2},
    "cidnet": {"channels": [8, 8, 16, 32], "heads": [1, 2, 4, 8]},
    "sci": {},
    "retinexformer": {"n_feat": 8, "num_blocks": [1, 1, 1]},
    "llflow": {"nf": 8, "nb": 2, "gc": 8, "K": 2, "hidden_channels": 8, "stack_blocks": [1], "coupling": "rqs"},
}
SIZES = [(29, 43), (48, 36)]  # odd, and a multiple of 12 and 16: both padding paths of every family


def _random_model(family: str, arch: dict | None = None) -> LoadedModel:
    """A registered model of ``family`` with small random weights that exercise every layer: zero-initialised
    layers (the flows' last convolutions) perturbed, a flow's ActNorms initialised from data first."""
    arch = SMALL.get(family, {}) if arch is None else arch
    entry = next(e for e in api.list_models() if e.family == family)
    module = build_model(family, arch).eval()
    g = torch.Generator().manual_seed(0)
    if hasattr(module, "initialize_actnorms"):
        low = torch.rand(1, 3, 32, 48, generator=g) * 0.25
        module.initialize_actnorms(low, (low * 4).clamp(0, 1))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return LoadedModel(entry, module.eval(), torch.device("cpu"), torch.float32, "test", tile=0)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.round(torch.rand(1, 3, h, w, generator=g) * 0.35 * 255) / 255


def _families() -> list:
    # the flows' export traces the encoder and every coupling: the slow part of this file
    return [pytest.param(f, marks=[pytest.mark.slow] if FAMILIES[f].samples else []) for f in sorted(FAMILIES)]


@pytest.mark.parametrize("family", _families())
@pytest.mark.slow
def test_every_family_exports_and_onnx_runtime_reproduces_lle(family, tmp_path) -> None:
    model = _random_model(family)
    r = export_onnx(model, tmp_path)
    assert (r.path, r.sidecar) == onnx_paths(tmp_path, model.name)
    assert r.max_abs_diff <= TOLERANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([r.path.name, r.sidecar.name])  # no temporaries left

    side = json.loads(r.sidecar.read_text())
    spec = FAMILIES[family]
    assert side["check"]["max_abs_diff"] == r.max_abs_diff and side["check"]["tolerance"] == TOLERANCE
    assert side["onnx"]["opset"] == OPSET and side["onnx"]["weights_inside"] is True
    assert side["license"] == model.entry.license and side["family"] == family
    assert side["weights"]["sha256"] is None  # built in memory: no file to vouch for
    graph = onnx.load(str(r.path))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    assert graph.opset_import[0].version == OPSET
    session = _session(r.path)
    names = [i.name for i in session.get_inputs()]

    if not spec.samples:
        assert names == ["image"] and side["size"]["multiple_of"] == spec.multiple_of
        assert side["size"]["min_size"] == spec.min_size
        assert [d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim][2:] == ["height", "width"]
        for k, (h, w) in enumerate(SIZES):  # sizes other than the traced one: H and W are dynamic
            x = _image(h, w, k)
            out = session.run(None, {"image": x.numpy()})[0]
            assert out.shape == (1, 3, h, w)
            assert np.abs(out - model.enhance_tensor(x).numpy()).max() <= TOLERANCE, (family, h, w)
        return

    # the flow: tau 0 is lle enhance; seeded noise, tau and offset reproduce lle sample's draws
    assert names == ["lq", "noise"]
    assert side["check"]["sample_max_abs_diff"] <= TOLERANCE
    m = side["size"]["multiple_of"]
    for k, (h, w) in enumerate(SIZES):
        x = _image(h, w, k)
        lq, pad = model.module.prepare(x)
        hp, wp = h + m - h % m, w + m - w % m
        assert lq.shape[-2:] == (hp, wp)  # the sidecar's formula for the padded size
        tau, offset, seed = 0.7, 0.1, 5
        with sample_array(model, x[0].permute(1, 2, 0).numpy(), n=2, taus=(tau,), offsets=(offset,), seed=seed) as ref:
            refs = [s.image for s in ref.samples]
        down = side["latent"]["downscale"]
        latent = (1, side["latent"]["channels"], hp // down, wp // down)
        eps = [torch.randn(latent, generator=torch.Generator().manual_seed(seed + j)) for j in range(2)]
        noise = torch.cat([torch.zeros(latent)] + [tau * e + offset for e in eps])
        out = pad.crop(torch.from_numpy(session.run(None, {"lq": lq.numpy(), "noise": noise.numpy()})[0]))
        assert out.shape == (3, 3, h, w)  # n latents against one image
        enhanced = model.enhance_tensor(x).numpy()
        assert np.abs(out[:1].clamp(0, 1).numpy() - enhanced).max() <= TOLERANCE
        for j in range(2):
            assert np.abs(out[1 + j].permute(1, 2, 0).numpy() - refs[j]).max() <= TOLERANCE, (h, w, j)


@pytest.mark.slow
def test_the_affine_flow_exports_too(tmp_path) -> None:
    # the test above exports the spline coupling; LLFlow's own affine coupling has other layers
    arch = {**SMALL["llflow"], "coupling": "affine"}
    r = export_onnx(_random_model("llflow", arch), tmp_path)
    assert r.max_abs_diff <= TOLERANCE and r.sample_max_abs_diff <= TOLERANCE


def test_a_failed_check_writes_nothing_and_existing_files_are_kept(tmp_path) -> None:
    model = _random_model("sci")
    with pytest.raises(ExportError, match="nothing was written"):
        export_onnx(model, tmp_path, tolerance=-1.0)  # a tolerance no export meets
    assert list(tmp_path.iterdir()) == []
    r = export_onnx(model, tmp_path)
    before = r.path.read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_onnx(model, tmp_path)
    with pytest.raises(ExportError):
        export_onnx(model, tmp_path, overwrite=True, tolerance=-1.0)
    assert r.path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [r.path.name, r.sidecar.name]


# -- the command line ---------------------------------------------------------------------------


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exports_the_embedded_model_and_refuses_to_overwrite(capsys, tmp_path) -> None:
    out_dir = tmp_path / "onnx"
    code, out, err = run(capsys, "models", "export", "zero-dce.lle-sice", out_dir, "--format", "onnx")
    assert code == 0, err
    onnx_file, sidecar = onnx_paths(out_dir, "zero-dce.lle-sice")
    assert out.splitlines() == [str(onnx_file), str(sidecar)]
    side = json.loads(sidecar.read_text())
    entry = api.model_info("zero-dce.lle-sice")
    assert side["weights"]["sha256"] == entry.embedded_sha256 and side["weights"]["matches_manifest"]
    assert side["check"]["max_abs_diff"] <= TOLERANCE and "max |diff|" in err

    code, _, err = run(capsys, "models", "export", "zero-dce.lle-sice", out_dir, "--format", "onnx")
    assert code == 1 and "already exists; pass --overwrite" in err
    assert run(capsys, "models", "export", "zero-dce.lle-sice", out_dir, "--format", "onnx", "--overwrite", "-q")[0] == 0
    code, _, err = run(capsys, "models", "export", "zero-dce.lle-sice", out_dir, "--format", "tflite")
    assert code == 2 and "safetensors, onnx" in err
    code, _, err = run(capsys, "models", "export", "zero-dce.lle-sice", out_dir, "--weights", onnx_file)
    assert code == 2 and "--format onnx only" in err


_BLOCK_ONNXRUNTIME = """\
import sys


class _NoOnnxRuntime:
    # an environment without the onnx extra's runtime: its import fails as if it were not installed
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "onnxruntime":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, _NoOnnxRuntime())
"""


def test_cli_without_onnxruntime_names_the_extra(tmp_path, lle_home) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCK_ONNXRUNTIME)
    env = {**os.environ, "LLE_HOME": str(lle_home), "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out_dir = tmp_path / "onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "lle_cli", "models", "export", "zero-dce.lle-sice", str(out_dir), "--format", "onnx"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "onnxruntime" in lines[0] and 'pip install "lle-cli[onnx]"' in lines[0]
    assert not out_dir.exists()
