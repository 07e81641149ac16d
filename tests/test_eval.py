"""`lle eval`: pairing, the protocols' definitions, reports, provenance, and the published LOL numbers."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lle_cli import api, record
from lle_cli.cli.main import main
from lle_cli.errors import UsageError
from lle_cli.evaluate import PROTOCOLS, evaluate_predictions, get_protocol, measure, pair_files
from lle_cli.metrics import grey_u8, psnr, quantise, ssim, ssim_columns

from .conftest import shared_path


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def dataset(tmp_path, rng) -> tuple[Path, Path, Path]:
    """low/, ref/ and pred/ folders of three 24x32 pairs; pred is ref with stem-dependent noise."""
    low, ref, pred = tmp_path / "low", tmp_path / "ref", tmp_path / "pred"
    for i, stem in enumerate(["2", "10", "1"]):
        r = (rng.random((24, 32, 3)) * 200 + 30).astype(np.uint8)
        save(ref / f"{stem}.png", r)
        save(low / f"{stem}.png", (r * 0.2).astype(np.uint8))
        noisy = np.clip(r.astype(int) + rng.integers(-4 * (i + 1), 4 * (i + 1) + 1, r.shape), 0, 255).astype(np.uint8)
        save(pred / f"{stem}.png", noisy)
    return low, ref, pred


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---------------------------------------------------------------------------------------------
# pairing


def test_pairs_by_stem_in_natural_order_and_reports_gaps(tmp_path) -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    for stem in ("1", "2", "10", "11"):
        save(tmp_path / "ref" / f"{stem}.png", img)
    save(tmp_path / "pred" / "1.jpg", img)  # another format is fine
    save(tmp_path / "pred" / "2_enhanced.png", img)  # lle enhance's default name
    save(tmp_path / "pred" / "10.png", img)
    save(tmp_path / "pred" / "10.bmp", img)  # ambiguous
    save(tmp_path / "pred" / "99.png", img)  # no reference: ignored
    pairs = pair_files(tmp_path / "pred", tmp_path / "ref")
    assert [p.name for p in pairs] == ["1", "2", "10", "11"]
    assert pairs[0].prediction.endswith("1.jpg") and pairs[1].prediction.endswith("2_enhanced.png")
    assert "several files share the stem '10'" in pairs[2].error
    assert pairs[3].prediction is None and "no image named 11.*" in pairs[3].error
    assert all(p.error is None for p in pairs[:2])


def test_missing_folders_are_usage_errors(tmp_path) -> None:
    save(tmp_path / "ref" / "1.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(UsageError, match="no such directory"):
        pair_files(tmp_path / "nope", tmp_path / "ref")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images"):
        pair_files(tmp_path / "empty", tmp_path / "ref")
    with pytest.raises(UsageError, match="expected one of plain, llflow"):
        get_protocol("kind")


# ---------------------------------------------------------------------------------------------
# the protocols, checked against their definitions computed by hand


def test_plain_protocol_on_8bit_predictions_is_the_plain_metrics(dataset) -> None:
    _, ref, pred = dataset
    p, r = rgb(pred / "1.png"), rgb(ref / "1.png")
    m, gain = measure(p, r, "plain")
    assert m["psnr"] == psnr(p, r) and m["ssim"] == ssim(p, r) and m["ssim_grey"] == ssim(grey_u8(p), grey_u8(r))
    # plain's alignment: BT.601 grey mean of the prediction matched to the reference's
    lum = np.array([0.299, 0.587, 0.114])
    expect_gain = (r.astype(float) @ lum).mean() / (p.astype(float) @ lum).mean()
    assert gain == pytest.approx(expect_gain, rel=1e-12)
    aligned = quantise(np.clip(p / 255 * expect_gain, 0, 1), "round")
    assert m["psnr_aligned"] == pytest.approx(psnr(aligned, r), abs=1e-9)


def test_llflow_alignment_follows_its_test_script() -> None:
    # a flat reference (R, G, B) = (100, 50, 200) and a flat float output of 0.2
    ref = np.empty((16, 16, 3), np.uint8)
    ref[...] = (100, 50, 200)
    out = np.full((16, 16, 3), 0.2, np.float32)
    m, gain = measure(out, ref, "llflow")
    mean_gt = (0.114 * 100 + 0.587 * 50 + 0.299 * 200) / 255  # cv2 BGR2GRAY applied to an RGB array
    assert gain == pytest.approx(mean_gt / 0.2, rel=1e-6)
    al8 = np.full_like(ref, int(np.float32(0.2) * np.float32(gain) * np.float32(255)))  # truncated, not rounded
    assert m["psnr_aligned"] == pytest.approx(psnr(al8, ref), abs=1e-9)
    assert m["psnr"] == pytest.approx(psnr(np.full_like(ref, 51), ref), abs=1e-9)  # 0.2 * 255 = 51


def test_llflow_grey_ssim_is_column_wise_and_headline_is_aligned(dataset) -> None:
    _, ref, pred = dataset
    p, r = rgb(pred / "2.png"), rgb(ref / "2.png")
    m, _ = measure(p, r, "llflow")
    assert m["ssim_grey"] == ssim_columns(grey_u8(p), grey_u8(r))
    assert PROTOCOLS["llflow"].headline == ("psnr_aligned", "ssim_grey_aligned")
    assert PROTOCOLS["plain"].headline == ("psnr", "ssim")


def test_float_predictions_are_quantised_per_protocol() -> None:
    ref = np.full((8, 8, 3), 100, np.uint8)
    out = np.full((8, 8, 3), 100.7 / 255, np.float32)
    assert measure(out, ref, "plain")[0]["psnr"] == pytest.approx(psnr(np.full_like(ref, 101), ref))
    assert measure(out, ref, "llflow")[0]["psnr"] == pytest.approx(psnr(np.full_like(ref, 100), ref))


# ---------------------------------------------------------------------------------------------
# reports through the library and the CLI


def test_report_means_and_failures(dataset, tmp_path) -> None:
    _, ref, pred = dataset
    save(ref / "7.png", np.zeros((24, 32, 3), np.uint8))  # no prediction
    save(ref / "8.png", np.zeros((24, 32, 3), np.uint8))
    save(pred / "8.png", np.zeros((20, 32, 3), np.uint8))  # wrong size
    rep = evaluate_predictions(pred, ref, "plain")
    assert [r.name for r in rep.images] == ["1", "2", "7", "8", "10"]
    assert [r.name for r in rep.failures] == ["7", "8"]
    assert "8.png" in rep.failures[1].error and "32x20" in rep.failures[1].error
    ok = [r for r in rep.images if r.ok]
    assert rep.mean["psnr"] == pytest.approx(np.mean([r.metrics["psnr"] for r in ok]))
    assert rep.headline == {"psnr": rep.mean["psnr"], "ssim": rep.mean["ssim"]}


def test_cli_table_json_csv_and_sort(capsys, dataset) -> None:
    _, ref, pred = dataset
    code, out, err = run(capsys, "eval", pred, ref)
    assert code == 0 and "protocol plain: PSNR" in out and "mean (3)" in out and "PSNR*" in out
    assert "no run record" in err
    code, out, _ = run(capsys, "eval", pred, ref, "--json", "--protocol", "llflow")
    rep = json.loads(out)
    assert code == 0 and rep["protocol"]["name"] == "llflow" and rep["count"] == 3
    assert rep["headline"] == {"psnr_aligned": rep["mean"]["psnr_aligned"], "ssim_grey_aligned": rep["mean"]["ssim_grey_aligned"]}
    assert [i["name"] for i in rep["images"]] == ["1", "2", "10"]
    code, out, _ = run(capsys, "eval", pred, ref, "--csv", "--sort", "psnr")
    rows = list(csv.DictReader(io.StringIO(out)))
    psnrs = [float(r["psnr"]) for r in rows[:-1]]
    assert code == 0 and psnrs == sorted(psnrs) and rows[-1]["image"] == "mean"
    assert [r["image"] for r in rows[:-1]] == ["1", "10", "2"]  # the noisiest prediction first
    assert float(rows[-1]["psnr"]) == pytest.approx(np.mean(psnrs))


def test_cli_usage_errors(capsys, dataset) -> None:
    _, ref, pred = dataset
    assert run(capsys, "eval", pred, ref, "--sort", "bogus")[0] == 2
    assert run(capsys, "eval", pred, ref, "--json", "--csv")[0] == 2
    code, _, err = run(capsys, "eval", pred, ref, "--save", pred.parent / "s")
    assert code == 2 and "--save needs --model" in err
    code, _, err = run(capsys, "eval", pred, ref, "--protocol", "nope")
    assert code == 2 and "plain" in err


def test_cli_failure_exit_code(capsys, dataset) -> None:
    _, ref, pred = dataset
    (pred / "1.png").unlink()
    code, out, err = run(capsys, "eval", pred, ref, "--json")
    assert code == 1 and json.loads(out)["failed"] == 1 and "no image named 1.*" in err


def test_eval_reads_the_run_record_of_its_predictions(capsys, dataset, weights, tmp_path) -> None:
    low, ref, _ = dataset
    out = tmp_path / "enhanced"
    assert run(capsys, "enhance", low, "-o", f"{out}/", "-m", "scl-lle", "-w", weights, "-q")[0] == 0
    code, report, err = run(capsys, "eval", out, ref, "--json")
    rep = json.loads(report)
    assert code == 0 and rep["unrecorded"] == 0 and rep["modified"] == 0
    [prod] = rep["producers"]
    assert prod["count"] == 3 and prod["record"]["command"] == "enhance"
    assert prod["record"]["model"]["name"] == "scl-lle.official" and prod["record"]["model"]["weights_source"] == str(weights)
    assert "3 prediction(s) from run" in err and "scl-lle.official" in err
    assert all(i["producer"]["unchanged"] for i in rep["images"])
    save(out / "2.png", np.zeros((24, 32, 3), np.uint8))  # edited after the run
    code, report, err = run(capsys, "eval", out, ref, "--json")
    assert json.loads(report)["modified"] == 1 and "changed since" in err


def test_eval_model_with_save_round_trips(capsys, dataset, weights, tmp_path) -> None:
    low, ref, _ = dataset
    saved = tmp_path / "saved"
    code, out, _ = run(capsys, "eval", "--model", "scl-lle", "-w", weights, low, ref, "--save", saved, "--json", "--precision", "fp32")
    rep = json.loads(out)
    assert code == 0 and rep["model"]["name"] == "scl-lle.official" and rep["model"]["dtype"] == "float32"
    assert sorted(p.name for p in saved.iterdir()) == ["1.png", "10.png", "2.png", record.RECORD_NAME]
    [run_] = record.read_runs(saved)
    assert run_["command"] == "eval" and run_["options"]["protocol"] == "plain" and run_["metrics"]["count"] == 3
    # the saved 8-bit predictions, measured later under plain, give the very same numbers
    code, out2, _ = run(capsys, "eval", saved, ref, "--json")
    rep2 = json.loads(out2)
    assert rep2["mean"]["psnr"] == pytest.approx(rep["mean"]["psnr"], abs=1e-12)
    assert rep2["mean"]["ssim"] == pytest.approx(rep["mean"]["ssim"], abs=1e-12)
    assert rep2["producers"][0]["record"]["command"] == "eval"
    # and nothing is replaced without --overwrite
    code, _, err = run(capsys, "eval", "--model", "scl-lle", "-w", weights, low, ref, "--save", saved)
    assert code == 1 and "already exists" in err


def test_lpips_without_the_library_is_a_clear_usage_error(capsys, dataset) -> None:
    try:
        import lpips  # noqa: F401
    except ImportError:
        _, ref, pred = dataset
        code, _, err = run(capsys, "eval", pred, ref, "--lpips")
        assert code == 2 and "lpips" in err and "pip install" in err
    else:
        pytest.skip("lpips is installed here")


# ---------------------------------------------------------------------------------------------
# NIQE: beside PSNR/SSIM with references, alone without them


@pytest.fixture
def textured(tmp_path, rng) -> tuple[Path, Path]:
    """photos/ (two 200x128 textures, big enough for NIQE's two 96x96 blocks, and one 24x32 image) and refs/."""
    photos, refs = tmp_path / "photos", tmp_path / "refs"
    for stem in ("a", "b"):
        r = (rng.random((128, 200, 3)) * 255).astype(np.uint8)
        save(refs / f"{stem}.png", r)
        save(photos / f"{stem}.png", np.clip(r.astype(int) + rng.integers(-20, 21, r.shape), 0, 255).astype(np.uint8))
    save(photos / "tiny.png", (rng.random((24, 32, 3)) * 255).astype(np.uint8))
    return photos, refs


def test_niqe_beside_psnr_ssim_and_alone(textured) -> None:
    from lle_cli.metrics import niqe

    photos, refs = textured
    (photos / "tiny.png").unlink()
    rep = evaluate_predictions(photos, refs, "plain")
    assert rep.metrics[-1] == "niqe" and not rep.reference_free
    assert rep.images[0].metrics["niqe"] == niqe(rgb(photos / "a.png"))
    assert rep.headline == {"psnr": rep.mean["psnr"], "ssim": rep.mean["ssim"]}
    assert "niqe" not in evaluate_predictions(photos, refs, "plain", niqe=False).metrics
    alone = evaluate_predictions(photos, None, "plain")
    assert alone.reference_free and alone.metrics == ["niqe"] and alone.images[0].gain is None
    assert [r.metrics["niqe"] for r in alone.images] == [r.metrics["niqe"] for r in rep.images]
    assert alone.headline == {"niqe": alone.mean["niqe"]} and alone.to_dict()["mode"] == "no-reference"
    with pytest.raises(UsageError, match="no-reference"):
        evaluate_predictions(photos, None, "plain", niqe=False)


def test_cli_without_references_measures_niqe(capsys, textured) -> None:
    photos, _ = textured
    code, out, _ = run(capsys, "eval", photos)
    assert code == 0 and "NIQE*" in out and "no references: NIQE" in out and "gain" not in out
    code, out, _ = run(capsys, "eval", photos, "--json", "--sort", "niqe")
    rep = json.loads(out)
    by_name = {i["name"]: i for i in rep["images"]}
    assert code == 0 and rep["mode"] == "no-reference" and set(by_name) == {"a", "b", "tiny"}
    assert by_name["tiny"]["metrics"]["niqe"] is None  # too small for two blocks: no value, not a failure
    assert rep["mean"]["niqe"] == pytest.approx(np.mean([by_name[k]["metrics"]["niqe"] for k in "ab"]))
    assert rep["headline"] == {"niqe": rep["mean"]["niqe"]}
    code, out, _ = run(capsys, "eval", photos, "--csv", "--sort", "niqe")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and list(rows[0])[:2] == ["image", "niqe"] and rows[-1]["image"] == "mean"
    vals = [float(r["niqe"]) for r in rows[:-1] if r["niqe"]]
    assert vals == sorted(vals, reverse=True)  # worst (highest) NIQE first
    code, _, err = run(capsys, "eval", photos, "--lpips")
    assert code == 2 and "REF_DIR" in err
    code, _, err = run(capsys, "eval", photos, "--no-niqe")
    assert code == 2 and "no-reference" in err
    assert run(capsys, "eval", photos, "--sort", "psnr")[0] == 2


def test_cli_model_without_references_measures_its_outputs(capsys, textured, weights, tmp_path) -> None:
    photos, _ = textured
    saved = tmp_path / "saved"
    code, out, _ = run(capsys, "eval", "--model", "scl-lle", "-w", weights, photos, "--save", saved, "--json")
    rep = json.loads(out)
    assert code == 0 and rep["mode"] == "no-reference" and rep["model"]["name"] == "scl-lle.official"
    [run_] = record.read_runs(saved)
    assert run_["options"]["ref_dir"] is None
    # the saved outputs measured later give the same NIQE
    code, out2, _ = run(capsys, "eval", saved, "--json")
    assert code == 0 and json.loads(out2)["mean"]["niqe"] == pytest.approx(rep["mean"]["niqe"], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# LOL eval15 with the authors' weights (../shared)

# Means over LOL eval15 computed when this test was written by an independent script that follows
# LLFlow's code/test.py + Measure.py literally with OpenCV 5.0 and scikit-image 0.26 (grey SSIM with
# channel_axis=-1, i.e. 0.18's multichannel=True), and, for plain, scikit-image's defaults on the
# rounded output; both fed the same float outputs of our models (fp32, CPU).
REFERENCE = {
    "zero-dce.official": {"plain": (14.860712138771646, 0.5623584588009289), "llflow": (20.80995348232417, 0.6299357175021245)},
    "scl-lle.official": {"plain": (12.420180541715492, 0.5203447922065589), "llflow": (20.764791259067504, 0.6088509597983418)},
}
UPSTREAM = {"zero-dce.official": "zero_dce.pth", "scl-lle.official": "scl_lle.pth"}


@pytest.mark.parity
@pytest.mark.slow
def test_lle_eval_reproduces_zero_dce_on_lol(capsys) -> None:
    """The issue's command: 14.86 dB / 0.562, the figures of the official code with scikit-image's defaults."""
    lol = shared_path("data", "lol_eval15")
    assert run(capsys, "models", "import", shared_path("upstream", "weights", "zero_dce.pth"))[0] == 0
    code, out, _ = run(capsys, "eval", "--model", "zero-dce", lol / "low", lol / "high", "--protocol", "plain", "--json")
    rep = json.loads(out)
    assert code == 0 and rep["count"] == 15
    assert round(rep["headline"]["psnr"], 2) == 14.86 and round(rep["headline"]["ssim"], 3) == 0.562


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_both_protocols_match_an_independent_implementation_on_lol(name) -> None:
    lol = shared_path("data", "lol_eval15")
    api.import_checkpoint(shared_path("upstream", "weights", UPSTREAM[name]))
    model = api.load_model(name, precision="fp32")
    refs = sorted((lol / "high").glob("*.png"))
    outs = [model.enhance(np.asarray(Image.open(lol / "low" / f.name).convert("RGB"), dtype=np.float32) / 255) for f in refs]
    for protocol, (want_psnr, want_ssim) in REFERENCE[name].items():
        k_psnr, k_ssim = PROTOCOLS[protocol].headline
        ms = [measure(o, rgb(f), protocol)[0] for o, f in zip(outs, refs)]
        # plain is exact; llflow's float32 mean may flip a rare truncation
        assert np.mean([m[k_psnr] for m in ms]) == pytest.approx(want_psnr, abs=1e-5), protocol
        assert np.mean([m[k_ssim] for m in ms]) == pytest.approx(want_ssim, abs=1e-5), protocol
