"""`lle models list` shows what bench/zoo.py measured: LOL eval15 PSNR/SSIM, NIQE on real photos, licence, size."""

from __future__ import annotations

import json

import pytest

from lle_cli.cli import models as models_cli
from lle_cli.cli.main import main


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def figures(tmp_path, monkeypatch):
    path = tmp_path / "model_figures.json"
    path.write_text(json.dumps({
        "date": "2025-12-05T00:00:00+00:00", "lol": "LOL eval15 test", "niqe_real": "NIQE test",
        "models": {"zero-dce.official": {"lol_psnr": 14.8607, "lol_ssim": 0.56236, "niqe_real": 4.123, "seconds_600x400": 0.05,
                                         "parameters": 79416}},
    }))
    monkeypatch.setattr(models_cli, "FIGURES_FILE", path)
    return path


def test_packaged_figures_come_from_the_bench_and_name_real_models() -> None:
    from lle_cli.registry import get_registry

    data = json.loads(models_cli.FIGURES_FILE.read_text())
    assert "bench/zoo.py" in data["about"]
    names = set(get_registry().models)
    assert set(data["models"]) - {"input"} <= names  # every measured model is registered
    for fig in data["models"].values():
        assert {"lol_psnr", "lol_ssim", "niqe_real", "parameters"} <= set(fig)


def test_list_table_and_json_show_the_figures(capsys, figures) -> None:
    code, out, _ = run(capsys, "models", "list")
    assert code == 0 and "LOL PSNR" in out and "NIQE real" in out and "licence" in out
    [line] = [ln for ln in out.splitlines() if ln.strip().startswith("zero-dce.official")]
    assert "14.86" in line and "0.562" in line and "4.12" in line and "79,416" in line
    [line] = [ln for ln in out.splitlines() if ln.strip().startswith("scl-lle.official")]
    assert " - " in line  # not measured
    assert "Measured by bench/zoo.py on 2025-12-05" in out
    code, out, _ = run(capsys, "models", "list", "--json")
    rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
    z = rows["zero-dce.official"]
    assert code == 0 and z["lol_psnr"] == 14.8607 and z["lol_ssim"] == 0.56236 and z["niqe_real"] == 4.123
    assert z["parameters"] == 79416 and "license" in z
    assert rows["scl-lle.official"]["lol_psnr"] is None


def test_a_damaged_figures_file_costs_the_figures_not_the_list(capsys, figures) -> None:
    figures.write_text("{not json")
    code, out, err = run(capsys, "models", "list")
    assert code == 0 and "zero-dce.official" in out and "bench/zoo.py" in err and str(figures) in err
    figures.unlink()
    code, out, err = run(capsys, "models", "list")
    assert code == 0 and "Measured by" not in out and err == ""
