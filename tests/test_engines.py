"""``lle enhance --runtime onnx|openvino`` (``lle_cli.engines``): the engines reproduce lle's output
(padding included), the export is made once and reused without importing PyTorch, a damaged export
is made again, and what an engine cannot do is refused before any work."""

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

pytest.importorskip("onnxscript", reason="onnxscript (the onnx extra) is not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime (the onnx extra) is not installed")

from lle_cli import api  # noqa: E402
from lle_cli.cli.main import main  # noqa: E402
from lle_cli.engines import EngineModel, exports_dir, load_engine_model  # noqa: E402
from lle_cli.errors import UsageError  # noqa: E402
from lle_cli.export import TOLERANCE, export_onnx, onnx_paths  # noqa: E402

from .test_export import _random_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HAVE_OPENVINO = True
try:
    import openvino  # noqa: F401
except ImportError:
    HAVE_OPENVINO = False
RUNTIMES = ["onnx", pytest.param("openvino", marks=pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino (the openvino extra) is not installed"))]


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("LLE_HOME", str(h))
    return h


def _photo(path: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = (rng.random((h, w, 3)) * 90 + np.linspace(0, 60, w)[None, :, None]).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


# families whose minimum size makes the engine pad (CIDNet 9, Retinexformer 8, the UNet 2) and one that never pads
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("family", [pytest.param("cidnet", marks=pytest.mark.slow), pytest.param("retinexformer", marks=pytest.mark.slow),
                                    "illumination_unet", "zero_dce"])
def test_engine_reproduces_lle_with_its_padding(family: str, runtime: str, tmp_path: Path) -> None:
    model = _random_model(family)
    result = export_onnx(model, tmp_path)
    info = json.loads(result.sidecar.read_text())
    engine = EngineModel(model.entry, runtime, result.path, info, "test", threads=2)
    rng = np.random.default_rng(1)
    for h, w in [(5, 7), (29, 43)]:  # 5x7: smaller than some minimum sizes (edge replication), 29x43: reflect
        rgb = (rng.random((h, w, 3)) * 0.4).astype(np.float32)
        ref = model.enhance(rgb)
        out = engine.enhance(rgb)
        assert out.shape == ref.shape and out.dtype == np.float32
        assert float(np.abs(out - ref).max()) <= TOLERANCE, (family, runtime, h, w)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_flow_engine_prepares_llflow_input_as_lle_does(runtime: str, tmp_path: Path) -> None:
    """LLFlow through an engine: lle's padding, log image and histogram equalisation redone in numpy,
    the latent's mean decoded; the same as lle's own enhance (tau 0)."""
    model = _random_model("llflow")
    result = export_onnx(model, tmp_path)
    engine = EngineModel(model.entry, runtime, result.path, json.loads(result.sidecar.read_text()), "test", threads=2)
    rng = np.random.default_rng(2)
    for h, w in [(29, 43), (48, 32), (7, 9)]:  # odd; a multiple of 16 (padded by 16); smaller than the padding
        rgb = np.round(rng.random((h, w, 3)) * 0.35 * 255).astype(np.float32) / 255  # 8-bit codes, as photos
        assert float(np.abs(engine.enhance(rgb) - model.enhance(rgb)).max()) <= TOLERANCE, (runtime, h, w)


def test_cli_exports_once_then_runs_without_torch(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "dark.png"
    _photo(src, 40, 56)
    assert main(["enhance", str(src), "-o", str(tmp_path / "torch.png"), "-m", "zero-dce.lle-sice"]) == 0
    assert main(["enhance", str(src), "-o", str(tmp_path / "onnx.png"), "-m", "zero-dce.lle-sice", "--runtime", "onnx", "--record"]) == 0
    exports = list((home / "exports" / "zero-dce.lle-sice").glob("*/zero-dce.lle-sice.onnx"))
    assert len(exports) == 1
    ref = np.asarray(Image.open(tmp_path / "torch.png")).astype(int)
    assert np.abs(np.asarray(Image.open(tmp_path / "onnx.png")).astype(int) - ref).max() <= 1
    record = json.loads((tmp_path / "lle-run.json").read_text())["runs"][-1]
    assert record["model"]["runtime"]["engine"] == "onnxruntime"
    assert record["options"]["runtime"] == "onnx"
    # a second process: the cached export, and no PyTorch imported on the way
    out = tmp_path / "again.png"
    code = (
        "import sys; from lle_cli.cli.main import main; "
        f"rc = main(['enhance', {str(src)!r}, '-o', {str(out)!r}, '-m', 'zero-dce.lle-sice', '--runtime', 'onnx']); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)"
    )
    env = {**os.environ, "LLE_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "exporting" not in proc.stderr
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "onnx.png")))


def test_damaged_export_is_made_again(home: Path, tmp_path: Path) -> None:
    notes: list[str] = []
    first = load_engine_model("zero-dce.lle-sice", "onnx", say=notes.append)
    assert any("exporting" in n for n in notes)
    data = bytearray(first.onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.onnx_path.write_bytes(bytes(data))
    notes.clear()
    again = load_engine_model("zero-dce.lle-sice", "onnx", say=notes.append)
    assert any("damaged" in n for n in notes) and any("exporting" in n for n in notes)
    rgb = np.full((8, 9, 3), 0.2, np.float32)
    assert float(np.abs(again.enhance(rgb) - api.load_model("zero-dce.lle-sice", device="cpu", precision="fp32").enhance(rgb)).max()) <= TOLERANCE


def test_weights_file_gets_its_own_export(home: Path, tmp_path: Path) -> None:
    """Other weights (--weights FILE) are another export, keyed by their sha256: never the default's file."""
    from lle_cli.weights import save_safetensors

    model = api.load_model("zero-dce.lle-sice", device="cpu")
    state = {k: v + 0.01 for k, v in model.module.state_dict().items()}
    wfile = tmp_path / "tuned.safetensors"
    save_safetensors(state, wfile)
    a = load_engine_model("zero-dce.lle-sice", "onnx")
    b = load_engine_model("zero-dce.lle-sice", "onnx", weights=wfile)
    assert a.onnx_path.parent != b.onnx_path.parent
    assert len(list((exports_dir() / "zero-dce.lle-sice").iterdir())) == 2
    assert b.weights_source == str(wfile)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--runtime", "onnx", "--tile", "256"], "whole image"),
        (["--runtime", "onnx", "--precision", "bf16"], "float32"),
        (["--runtime", "openvino", "--precision", "fp16"], "bf16"),
        (["--runtime", "openvino", "--device", "cuda"], "CPU"),
        (["--runtime", "tensorrt"], "expected one of"),
    ],
)
def test_what_an_engine_cannot_do_is_refused_first(args: list[str], message: str, home: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "in.png"
    _photo(src, 16, 16)
    assert main(["enhance", str(src), "-o", str(tmp_path / "out.png"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()
    assert not (home / "exports").exists()  # refused before any export


def test_check_runtime_options_allows_the_defaults() -> None:
    from lle_cli.engines import check_runtime_options

    check_runtime_options("onnx", device="auto", precision="auto", tile=None, workers=False)
    check_runtime_options("torch", device="cuda", precision="bf16", tile=256, workers=True)
    with pytest.raises(UsageError, match="--workers"):
        check_runtime_options("onnx", device="cpu", precision="fp32", tile=0, workers=True)


def test_openvino_runs_bf16_where_auto_would_and_float32_elsewhere(monkeypatch) -> None:
    """The export's measured policy decides, as ``--precision auto`` does in PyTorch; ONNX Runtime and
    an explicit fp32 stay float32, ``--precision bf16`` asks OpenVINO for bf16 whatever the family."""
    from lle_cli import cpu_features
    from lle_cli.engines import check_runtime_options, engine_precision

    check_runtime_options("openvino", device="cpu", precision="bf16", tile=None, workers=False)
    with pytest.raises(UsageError, match="float32"):
        check_runtime_options("onnx", device="cpu", precision="bf16", tile=None, workers=False)
    monkeypatch.setattr(cpu_features, "cpu_has_native_bf16", lambda: True)
    fast, flow = {"auto_cpu_bf16": True}, {"auto_cpu_bf16": False}
    assert engine_precision("openvino", "auto", fast) == "bfloat16"
    assert engine_precision("openvino", "auto", flow) == "float32"
    assert engine_precision("openvino", "auto", {}) == "float32"  # an export made before the policy was recorded
    assert engine_precision("openvino", "fp32", fast) == "float32"
    assert engine_precision("onnx", "auto", fast) == "float32"
    assert engine_precision("openvino", "bf16", flow) == "bfloat16"
    monkeypatch.setattr(cpu_features, "cpu_has_native_bf16", lambda: False)  # emulated bf16 is slower
    assert engine_precision("openvino", "auto", fast) == "float32"


def test_export_records_the_auto_bf16_policy(tmp_path: Path) -> None:
    from lle_cli.models import FAMILIES

    for family in ("zero_dce", "sci"):
        result = export_onnx(_random_model(family), tmp_path / family)
        assert json.loads(result.sidecar.read_text())["auto_cpu_bf16"] is FAMILIES[family].auto_cpu_bf16


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino (the openvino extra) is not installed")
def test_openvino_bf16_stays_within_a_level_and_the_record_says_so(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    _photo(src, 40, 56)
    ref, out = tmp_path / "ref.png", tmp_path / "out"
    assert main(["enhance", str(src), "-o", str(ref), "-m", "zero-dce.lle-sice", "--precision", "fp32", "-q"]) == 0
    assert main(["enhance", str(src), "-o", str(out) + "/", "-m", "zero-dce.lle-sice", "--runtime", "openvino",
                 "--precision", "bf16", "-q", "--record"]) == 0
    a = np.asarray(Image.open(ref), dtype=np.int16)
    b = np.asarray(Image.open(out / "in.png"), dtype=np.int16)
    assert np.abs(a - b).max() <= 2  # bf16 rounding, not a different model
    run = json.loads((out / "lle-run.json").read_text())
    model = run["runs"][-1]["model"] if "runs" in run else run["model"]
    assert model["dtype"] == "bfloat16" and "bf16" in model["precision"] and model["runtime"]["precision"] == "bf16"


def test_export_paths_are_where_the_engine_reads_them(home: Path) -> None:
    engine = load_engine_model(None, "onnx")  # the default model
    assert engine.name == api.get_registry().default
    onnx, sidecar = onnx_paths(engine.onnx_path.parent, engine.name)
    assert onnx == engine.onnx_path and sidecar.is_file()
    assert engine.onnx_path.parent.name.startswith(api.get_registry().resolve(None).embedded_sha256[:16] + "-")
    assert torch.from_numpy(engine.enhance(np.full((12, 10, 3), 0.1, np.float32))).isfinite().all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_engine_output_is_an_error_not_an_image(bad: float) -> None:
    """An Inf would be clamped to 1 and written as white: the engine's output is checked before the clamp."""
    from lle_cli.errors import NonFiniteError

    entry = api.get_registry().resolve("zero-dce.lle-sice")
    sidecar = {"graph": "image -> enhanced", "size": {"multiple_of": 1, "min_size": 1}}

    def run(feeds: dict) -> np.ndarray:
        y = feeds["image"].copy()
        y[0, 1, 2, 3] = bad
        return y

    engine = EngineModel(entry, "onnx", Path("unused.onnx"), sidecar, "test", threads=1, _run=run)
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        engine.enhance(np.full((6, 8, 3), 0.3, np.float32))
    ok = EngineModel(entry, "onnx", Path("unused.onnx"), sidecar, "test", threads=1, _run=lambda feeds: feeds["image"] * 2)
    out = ok.enhance(np.full((6, 8, 3), 0.3, np.float32))
    assert out.shape == (6, 8, 3) and out.flags.c_contiguous and np.allclose(out, 0.6)
