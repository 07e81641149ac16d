"""``--precision auto`` on the CPU (``lle_cli.device``): bf16 autocast only for the families measured
to gain from it within one 8-bit level (``FamilySpec.auto_cpu_bf16``, bench/precision.py) and only
on a CPU with native bf16; float32 everywhere else; the choice is in the run record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lle_cli import api, device
from lle_cli.cli.main import main
from lle_cli.models import FAMILIES

from .conftest import shared_path

AUTO = sorted(name for name, spec in FAMILIES.items() if spec.auto_cpu_bf16)


def test_policy_needs_the_family_and_the_cpu(monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert device.select_dtype("auto", cpu, "zero_dce") == torch.bfloat16
    assert device.select_dtype("auto", cpu, "iat") == torch.float32  # measured: 95 % within one level
    assert device.select_dtype("auto", cpu, "llflow") == torch.float32  # a flow never: its sampler runs outside the scope
    assert device.select_dtype("auto", cpu) == torch.float32
    assert device.select_dtype("fp32", cpu, "zero_dce") == torch.float32
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)  # emulated bf16 is slower than float32
    assert device.select_dtype("auto", cpu, "zero_dce") == torch.float32


def test_policy_is_what_the_benchmark_measured() -> None:
    """Every family flagged for auto bf16 met both conditions in the committed bench/precision.py run."""
    results = json.loads((Path(__file__).resolve().parents[1] / "bench" / "measured" / "precision.json").read_text())
    rows = {r["family"]: r for r in results["results"]}
    assert AUTO, "no family runs bf16 under auto"
    for name, spec in FAMILIES.items():
        row = rows.get(name)
        assert row is not None, f"{name}: not measured by bench/precision.py"
        auto = row["autocast"]
        met = auto.get("finite") and auto["ratio"] <= device.AUTO_BF16_MAX_RATIO and auto["within1"] >= device.AUTO_BF16_WITHIN1
        assert bool(met) == spec.auto_cpu_bf16, name


def _lol_photo() -> np.ndarray:
    path = shared_path("data", "lol_eval15", "low", "1.png")
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


@pytest.mark.skipif(not device.cpu_has_native_bf16(), reason="this CPU has no native bf16: auto stays float32")
def test_auto_runs_autocast_within_one_level() -> None:
    rgb = _lol_photo()
    auto = api.load_model("zero-dce.lle-sice", device="cpu")
    exact = api.load_model("zero-dce.lle-sice", device="cpu", precision="fp32")
    assert auto.autocast and auto.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in auto.module.parameters())  # autocast keeps the weights
    assert not exact.autocast and exact.dtype == torch.float32
    a = np.round(auto.enhance(rgb) * 255).astype(int)
    b = np.round(exact.enhance(rgb) * 255).astype(int)
    within = (np.abs(a - b).max(axis=2) <= 1).mean()
    assert within >= device.AUTO_BF16_WITHIN1
    assert not np.array_equal(a, b)  # it did run in bf16


@pytest.mark.skipif(not device.cpu_has_native_bf16(), reason="this CPU has no native bf16: auto stays float32")
def test_the_run_record_says_what_auto_chose(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(np.full((24, 32, 3), 30, np.uint8)).save(src)
    assert main(["enhance", str(src), "-o", str(tmp_path / "out.png"), "-m", "zero-dce.lle-sice", "--record"]) == 0
    model = json.loads((tmp_path / "lle-run.json").read_text())["runs"][-1]["model"]
    assert model["dtype"] == "bfloat16" and "autocast" in model["precision"]
    assert main(["enhance", str(src), "-o", str(tmp_path / "out2.png"), "-m", "zero-dce.lle-sice", "--precision", "fp32", "--record", "--overwrite"]) == 0
    model = json.loads((tmp_path / "lle-run.json").read_text())["runs"][-1]["model"]
    assert model["dtype"] == "float32" and "precision" not in model


def test_the_default_model_stays_float32() -> None:
    model = api.load_model(None, device="cpu")
    assert model.dtype == torch.float32 and not model.autocast
