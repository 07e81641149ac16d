"""The `lle` command line, end to end through main() (the one place that maps errors to exit codes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lle_cli.cli.main import main

from .conftest import shared_path


@pytest.fixture
def photos(tmp_path, rng) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(2):
        Image.fromarray((rng.random((24, 32, 3)) * 80).astype(np.uint8)).save(d / f"p{i}.png")
    return d


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_only_working_commands(capsys) -> None:
    from lle_cli.cli.main import COMMANDS

    code, out, _ = run(capsys, "--help")
    assert code == 0
    for cmd in COMMANDS:
        assert cmd in out
        assert main([cmd, "--help"]) == 0


def test_top_level_help_imports_no_command_module() -> None:
    # a fresh interpreter: `lle --help` must not pay for torch or any command's module
    code = (
        "import sys; from lle_cli.cli.main import main; rc = main(['--help']); "
        "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('lle_cli.cli.') and m not in "
        "('lle_cli.cli.main', 'lle_cli.cli._common')); print(rc, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 []"


@pytest.mark.parametrize(("args", "message"), [
    (["enhance", "--no-such-flag"], "No such option"),
    (["no-such-command"], "No such command"),
])
def test_usage_errors_are_one_line_and_exit_2(capsys, args, message) -> None:
    code, _, err = run(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_enhance_writes_beside_input_and_refuses_to_overwrite(capsys, photos, weights) -> None:
    src = photos / "p0.png"
    code, out, _ = run(capsys, "enhance", src, "-m", "scl-lle", "-w", weights, "-q")
    target = photos / "p0_enhanced.png"
    assert code == 0 and out.strip() == str(target) and target.is_file()
    before = target.read_bytes()
    code, _, err = run(capsys, "enhance", src, "-m", "scl-lle", "-w", weights, "-q")
    assert code == 1 and "already exists" in err and "--overwrite" in err
    assert target.read_bytes() == before
    assert run(capsys, "enhance", src, "-m", "scl-lle", "-w", weights, "-q", "--overwrite")[0] == 0


def test_batch_goes_on_after_a_bad_file(capsys, photos, weights, tmp_path) -> None:
    (photos / "broken.jpg").write_bytes(b"this is not a jpeg")
    good = photos / "p0.png"
    truncated = photos / "cut.jpg"
    Image.open(good).save(photos / "full.jpg", quality=90)
    truncated.write_bytes((photos / "full.jpg").read_bytes()[:300])
    out_dir = tmp_path / "out"
    code, out, _ = run(capsys, "enhance", photos, "-o", f"{out_dir}/", "-m", "scl-lle", "-w", weights, "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    status = {Path(r["input"]).name: r for r in rows}
    assert status["p0.png"]["status"] == status["p1.png"]["status"] == status["full.jpg"]["status"] == "ok"
    assert status["broken.jpg"]["status"] == "error" and "broken.jpg" in status["broken.jpg"]["error"]
    assert status["cut.jpg"]["status"] == "error" and "cut.jpg" in status["cut.jpg"]["error"]
    # no partial output for the bad files; a batch always leaves its run record
    assert sorted(p.name for p in out_dir.iterdir()) == ["full.jpg", "lle-run.json", "p0.png", "p1.png"]
    assert all({"input", "output", "model", "seconds", "status", "error"} <= r.keys() for r in rows)


def test_missing_file_and_unmatched_glob_fail_with_the_name(capsys, photos, weights) -> None:
    code, _, err = run(capsys, "enhance", photos / "nope.png", f"{photos}/*.tif", "-m", "scl-lle", "-w", weights, "-q")
    assert code == 1 and "nope.png: no such file" in err and "no files match" in err


def test_glob_input(capsys, photos, weights, tmp_path) -> None:
    code, out, _ = run(capsys, "enhance", f"{photos}/p*.png", "-o", tmp_path / "g", "-m", "scl-lle", "-w", weights, "-q")
    assert code == 0 and len(out.split()) == 2


def test_unknown_model_is_a_usage_error_with_suggestions(capsys, photos) -> None:
    code, _, err = run(capsys, "enhance", photos / "p0.png", "-m", "rvae")
    assert code == 2 and "did you mean" in err and "rave" in err


def test_import_with_wrong_sha256_is_refused(capsys, tmp_path) -> None:
    bad = tmp_path / "scl.pth"
    data = bytearray(shared_path("upstream", "weights", "scl_lle.pth").read_bytes())
    data[-50] ^= 0xFF
    bad.write_bytes(bytes(data))
    code, _, err = run(capsys, "models", "import", bad, "--model", "scl-lle")
    assert code == 1 and "sha256" in err and "--trust-unknown" in err


@pytest.mark.parity
def test_cli_8bit_output_matches_golden(capsys, tmp_path) -> None:
    assert run(capsys, "models", "import", shared_path("upstream", "weights", "rave_paired.pth"))[0] == 0
    for img in ("backlit_a", "lowlight_a"):
        out = tmp_path / f"{img}.png"
        assert run(capsys, "enhance", shared_path("golden", "inputs", f"{img}.png"), "-m", "rave.paired", "-o", out, "-q", "--precision", "fp32")[0] == 0
        golden = np.load(shared_path("golden", "unet", "rave_paired", f"{img}_enhanced.npy"))[0].transpose(1, 2, 0)
        expected = np.round(np.clip(golden, 0, 1) * 255)
        assert np.abs(np.asarray(Image.open(out)).astype(float) - expected).max() <= 1


def test_models_list_and_info(capsys) -> None:
    code, out, _ = run(capsys, "models", "list", "--json")
    names = [json.loads(line)["name"] for line in out.splitlines()]
    assert code == 0 and "rave.paired" in names and "scl-lle.official" in names
    code, out, _ = run(capsys, "models", "info", "rave", "--json")
    assert code == 0 and json.loads(out)["name"] == "rave.unpaired"


def test_stdin_to_stdout_in_a_real_process(photos, weights, lle_home) -> None:
    env = {**os.environ, "LLE_HOME": str(lle_home)}
    proc = subprocess.run(
        [sys.executable, "-m", "lle_cli", "enhance", "-", "-m", "scl-lle", "-w", str(weights), "-q"],
        input=(photos / "p0.png").read_bytes(), capture_output=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.startswith(b"\x89PNG")
