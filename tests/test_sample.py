"""``lle sample`` and ``lle_cli.sampling``: reproducible, cheap, size-agnostic, honest about bad samples."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lle_cli import api, sampling
from lle_cli.cli import sample as sample_cmd
from lle_cli.cli.main import main
from lle_cli.errors import UsageError
from lle_cli.models import build_model, load_state_strict
from lle_cli.models.llflow import LLFlow, LLFlowConfig
from lle_cli.naming import OutputName, format_number, is_sample_output, parse_output_name
from lle_cli.record import read_runs
from lle_cli.registry import get_registry
from lle_cli.runner import LoadedModel
from lle_cli.sampling import (
    SampleOptions,
    contact_sheet,
    output_names,
    run_sample_job,
    sample_array,
    sample_specs,
    sample_stats,
)
from lle_cli.weights import load_upstream_checkpoint, save_safetensors, sha256_file

from .conftest import shared_path

TINY = LLFlowConfig(nf=8, nb=2, gc=8, K=2, hidden_channels=8, stack_blocks=(1,))
SMALL = LLFlowConfig(nf=32, nb=4, K=4, stack_blocks=(1,))  # the architecture of llflow.lol-small


def _perturb(model: torch.nn.Module, sigma: float = 0.02) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(sigma * torch.randn(p.shape, generator=g))
    return model.eval()


def _fresh(cfg: LLFlowConfig) -> LLFlow:
    """Random weights that behave like a trained flow: data-initialised ActNorms, then perturbed."""
    g = torch.Generator().manual_seed(1)
    low = torch.rand(1, 3, 24, 40, generator=g) * 0.25
    model = LLFlow(cfg)
    model.initialize_actnorms(low, (low * 4).clamp(0, 1))
    return _perturb(model, 0.01)


def loaded(cfg: LLFlowConfig = TINY, module: torch.nn.Module | None = None) -> LoadedModel:
    module = module if module is not None else _fresh(cfg)
    return LoadedModel(get_registry().resolve("llflow.lol-small"), module.eval(), torch.device("cpu"), torch.float32, "test")


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return loaded()


@pytest.fixture
def photo(rng) -> np.ndarray:
    return (rng.random((21, 34, 3)) * 0.3).astype(np.float32)


# -- library --------------------------------------------------------------------------------


def test_seeded_samples_are_reproducible_and_sample_j_uses_seed_plus_j(tiny, photo) -> None:
    a = sample_array(tiny, photo, n=3, taus=(0.8,), seed=42)
    b = sample_array(tiny, photo, n=3, taus=(0.8,), seed=42)
    assert [s.seed for s in a.samples] == [42, 43, 44] and a.seed == 42
    for x, y in zip(a.samples, b.samples):
        np.testing.assert_array_equal(x.image, y.image)
    assert not np.allclose(a.samples[0].image, a.samples[1].image)  # different eps, different image
    one = sample_array(tiny, photo, n=1, taus=(0.8,), seed=43)
    np.testing.assert_allclose(one.samples[0].image, a.samples[1].image, rtol=1e-5, atol=1e-5)
    assert sample_array(tiny, photo, n=1).seed >= 0  # unseeded: a random base seed, reported


def test_tau0_offset0_is_what_enhance_returns(tiny, photo) -> None:
    s = sample_array(tiny, photo, n=5, taus=(0.0,), offsets=(0.0,))
    assert len(s.samples) == 1 and s.samples[0].seed is None  # deterministic: drawn once
    np.testing.assert_allclose(np.clip(s.samples[0].image, 0, 1), api.enhance_array(tiny, photo), rtol=1e-5, atol=1e-5)


def test_sweep_shares_eps_across_tau_and_offset(tiny, photo) -> None:
    s = sample_array(tiny, photo, n=2, taus=(0.0, 0.5), offsets=(-0.2, 0.3), seed=7)
    assert [(x.index, x.tau, x.offset, x.seed) for x in s.samples] == [
        (0, 0.0, -0.2, None), (0, 0.0, 0.3, None),
        (0, 0.5, -0.2, 7), (1, 0.5, -0.2, 8), (0, 0.5, 0.3, 7), (1, 0.5, 0.3, 8),
    ]
    assert set(s.groups()) == {(0.0, -0.2), (0.0, 0.3), (0.5, -0.2), (0.5, 0.3)}
    m = s.mean(0.5, 0.3)
    np.testing.assert_allclose(m, (s.samples[4].image + s.samples[5].image) / 2, rtol=1e-6)


def test_encoder_runs_once_and_batching_does_not_change_samples(photo) -> None:
    model = loaded()
    calls = []
    model.module.RRDB.register_forward_hook(lambda *a: calls.append(1))
    auto = sample_array(model, photo, n=6, seed=3)
    assert len(calls) == 1 and auto.batch_size == 6 and auto.decoded == 6
    one_by_one = sample_array(model, photo, n=6, seed=3, batch_size=1)
    assert len(calls) == 2 and one_by_one.batch_size == 1
    for x, y in zip(auto.samples, one_by_one.samples):
        np.testing.assert_allclose(x.image, y.image, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hw", [(1, 1), (13, 37), (48, 16)])
def test_any_image_size_comes_back_at_its_size(tiny, hw) -> None:
    s = sample_array(tiny, np.full((*hw, 3), 0.2, np.float32), n=2, taus=(1.0,), offsets=(0.1,), seed=0)
    assert all(x.image.shape == (*hw, 3) for x in s.samples)


def test_sample_stats() -> None:
    img = np.zeros((2, 5, 3), np.float32)
    img[0, 0] = [np.nan, 0.5, 0.5]
    img[0, 1] = [2.0, 2.0, 2.0]  # out of range
    img[1, 4] = [1.0, 1.0, 1.0]
    st = sample_stats(img)
    assert st.nonfinite_fraction == pytest.approx(1 / 30)
    assert st.out_of_range_fraction == pytest.approx(3 / 30)
    assert st.mean_brightness == pytest.approx(2 / 9, rel=1e-5)  # 9 finite pixels, two of them white (clamped)
    assert (st.min, st.max) == (0.0, 2.0)
    assert sample_stats(np.full((1, 1, 3), np.inf, np.float32)).mean_brightness is None


class _Exploding:
    """Wraps ``decode`` so that the first ``bad`` latents it ever sees decode to NaN or to huge values."""

    def __init__(self, module: LLFlow, bad: int, value: float) -> None:
        self.decode, self.left, self.value = module.decode, bad, value
        module.decode = self

    def __call__(self, features, z, **kw):
        out, ld = self.decode(features, z, **kw)
        k = min(self.left, out.shape[0])
        if k:
            out = out.clone()
            out[:k, :, ::2] = self.value
            self.left -= k
        return out, ld


@pytest.mark.slow
def test_non_finite_samples_are_flagged_and_redrawn_with_recorded_seeds(photo) -> None:
    model = loaded()
    _Exploding(model.module, bad=1, value=float("nan"))
    s = sample_array(model, photo, n=2, seed=10, max_out_of_range=0.2)
    first = s.samples[0]
    assert first.status == "non_finite" and first.bad and first.stats.nonfinite_fraction > 0.3
    assert s.samples[1].status == "ok"
    # both first draws explode (seeds 10, 11), then the first redraw (seed 12); redraws use seed + n on
    _Exploding(model.module, bad=3, value=float("inf"))
    s = sample_array(model, photo, n=2, seed=10, resample_bad=True, max_out_of_range=0.2)
    assert [(x.status, x.rejected_seeds, x.seed) for x in s.samples] == [("ok", [10, 12], 14), ("ok", [11], 13)]
    assert s.decoded == 5
    _Exploding(model.module, bad=10, value=float("inf"))
    s = sample_array(model, photo, n=1, seed=0, resample_bad=True, max_tries=3)
    assert s.samples[0].status == "non_finite" and s.samples[0].rejected_seeds == [0, 1]  # gave up after 3 draws


@pytest.mark.slow
def test_out_of_range_samples_are_flagged_not_hidden(photo) -> None:
    model = loaded()
    _Exploding(model.module, bad=1, value=40.0)
    s = sample_array(model, photo, n=2, seed=1, max_out_of_range=0.2)
    assert s.samples[0].status == "out_of_range" and s.samples[0].stats.out_of_range_fraction > 0.3
    assert s.samples[1].status == "ok"


def test_bad_arguments_and_non_flow_models_are_refused(tiny, photo) -> None:
    for kwargs in ({"n": 0}, {"taus": (-1.0,)}, {"offsets": (float("nan"),)}, {"batch_size": 0}, {"taus": ()}):
        with pytest.raises(UsageError):
            sample_array(tiny, photo, **kwargs)
    zero_dce = LoadedModel(get_registry().resolve("scl-lle"), build_model("zero_dce"), torch.device("cpu"), torch.float32, "x")
    with pytest.raises(UsageError, match="not a flow"):
        sample_array(zero_dce, photo)


def test_contact_sheet_shows_non_finite_pixels_in_magenta() -> None:
    good = np.full((10, 20, 3), 0.5, np.float32)
    bad = good.copy()
    bad[:, :] = np.nan
    sheet = contact_sheet([good, bad, good], ["a", "b\nNON-FINITE", "c"], columns=2, cell=40, flagged=[False, True, False])
    assert sheet.dtype == np.uint8 and sheet.shape[1] > 2 * 40 and sheet.shape[0] > 2 * 20
    magenta = np.all(sheet == [255, 0, 255], axis=2)
    assert magenta.sum() == 40 * 20  # the whole second thumbnail, nothing else
    assert not np.any(np.all(sheet == [0, 0, 0], axis=2))  # nothing painted black


def test_output_names_always_carry_tau_and_offset() -> None:
    names, means, sheet = output_names("pic", ".png", SampleOptions(n=2, taus=(0.5,), offsets=(0.0,), mean=True))
    assert names == ["pic_sample00_tau0.5_off0.png", "pic_sample01_tau0.5_off0.png"]
    assert means == {(0.5, 0.0): "pic_mean_tau0.5_off0.png"} and sheet == "pic_sheet_tau0.5_off0.png"
    names, _, sheet = output_names("p", ".jpg", SampleOptions(n=1, taus=(0.0, 1.0), offsets=(-0.4, 0.2), sheet=False))
    assert names == ["p_sample00_tau0_off-0.4.jpg", "p_sample00_tau0_off0.2.jpg", "p_sample00_tau1_off-0.4.jpg", "p_sample00_tau1_off0.2.jpg"]
    assert sheet is None
    # a run with one other tau (or offset) names every file differently: nothing to collide with
    one = output_names("p", ".png", SampleOptions(n=3, taus=(1.0,), mean=True))
    other = output_names("p", ".png", SampleOptions(n=3, taus=(0.0,), mean=True))
    shifted = output_names("p", ".png", SampleOptions(n=3, taus=(1.0,), offsets=(-0.2,), mean=True))
    files = [[*a, *b.values(), c] for a, b, c in (one, other, shifted)]
    assert len({f for fs in files for f in fs}) == sum(len(fs) for fs in files)


def test_format_number_round_trips_in_file_name_safe_characters() -> None:
    values = [0.0, 1.0, 0.5, -0.2, 0.1 + 0.2, 1 / 3, 1e-05, -1.5e-07, 2.5e17, 123456789.125, 4.0, -3.0]
    for v in values:
        text = format_number(v)
        assert float(text) == v and re.fullmatch(r"-?[0-9.e-]+", text), (v, text)
    assert [format_number(v) for v in (1.0, 0.5, -0.2, -0.0, 1e-05, 2.5e17)] == ["1", "0.5", "-0.2", "0", "1e-05", "2.5e17"]
    with pytest.raises(ValueError):
        format_number(float("nan"))


def test_output_names_parse_back_and_are_known_as_outputs() -> None:
    taus, offsets = (0.0, 1.0, 0.5, 0.1 + 0.2, 1e-05, 2.5e17), (-0.2, 0.0, 0.4, -1.5e-07, -3.0)
    opts = SampleOptions(n=11, taus=taus, offsets=offsets, mean=True)
    stem = "trip_sample01_tau2_photo"  # looks like an output itself: the name's tail decides
    names, means, sheet = output_names(stem, ".tif", opts)
    assert len(set(names)) == len(names)
    for name, (j, t, o) in zip(names, sample_specs(opts.n, taus, offsets), strict=True):
        assert parse_output_name(name) == OutputName(stem, j, t, o, ".tif")
        assert re.fullmatch(r"[\w.,-]+", name) and is_sample_output(name)
    for (t, o), name in means.items():
        assert parse_output_name(name) == OutputName(stem, None, t, o, ".tif")
        assert is_sample_output(name)
    assert is_sample_output(sheet) and parse_output_name(sheet) is None
    assert parse_output_name("p_sample3_tau1_off0") == OutputName("p", 3, 1.0, 0.0, "")
    # names of earlier versions are outputs too; photos are not
    for old in ("dark_sample00", "dark_sample00_tau0.5", "dark_sample01_off+0.2", "dark_mean", "dark_sheet"):
        assert is_sample_output(old + ".png"), old
    for photo in ("dark", "beach_sampler", "meanwhile", "dark_sheets", "holiday_mean_2"):
        assert not is_sample_output(photo + ".png") and parse_output_name(photo + ".png") is None, photo
    # a long sweep still gives a sheet name well under the 255-byte limit of file systems
    _, _, sheet = output_names("p", ".png", SampleOptions(taus=(1.0,), offsets=tuple(i / 100 - 0.5 for i in range(101))))
    assert len(sheet) < 120 and is_sample_output(sheet)


@pytest.mark.parity
@pytest.mark.slow
def test_seed_1234_reproduces_the_official_samples() -> None:
    """The golden eps came from torch.Generator().manual_seed(1234): so do ours, for sample 0."""
    module = LLFlow(LLFlowConfig(nb=8, K=2))
    load_state_strict(module, load_upstream_checkpoint(shared_path("golden", "llflow", "llflow_mid_random.safetensors")), source="mid")
    model = loaded(module=module)
    rgb = np.asarray(Image.open(shared_path("golden", "inputs", "lowlight_odd.png")).convert("RGB"), dtype=np.float32) / np.float32(255)
    s = sample_array(model, rgb, n=1, taus=(1.0, 0.5), offsets=(0.0, 0.2), seed=1234)
    golden = {(1.0, 0.0): "tau1_off0", (0.5, 0.2): "tau0.5_off0.2"}
    for x in s.samples:
        if (x.tau, x.offset) in golden:
            want = np.load(shared_path("golden", "llflow", "mid", f"lowlight_odd_sample_{golden[x.tau, x.offset]}.npy"))
            want = want[0, :, 3:93, 6:137].transpose(1, 2, 0)  # padding [3, 3, 6, 7] undone
            assert np.abs(x.image - want).max() / np.abs(want).max() < 1e-4


# -- command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    torch.manual_seed(0)
    save_safetensors(_fresh(SMALL).state_dict(), path)
    return path


@pytest.fixture
def photos(tmp_path, rng) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray((rng.random((20, 30, 3)) * 70).astype(np.uint8)).save(d / "dark.png")
    return d


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_sample(capsys) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "sample" in out
    assert main(["sample", "--help"]) == 0


def test_cli_writes_samples_mean_sheet_and_json(capsys, photos, small_weights, tmp_path) -> None:
    out_dir = tmp_path / "out"
    args = ["sample", photos / "dark.png", "-m", "llflow.lol-small", "-w", small_weights, "-o", out_dir,
            "--n", "2", "--tau", "0.5,1", "--z-offset", "-0.2", "--seed", "5", "--mean", "--json", "--max-out-of-range", "0.5"]
    code, out, _ = run(capsys, *args)
    assert code == 0
    result = json.loads(out)
    assert result["status"] == "ok" and result["seed"] == 5 and result["model"] == "llflow.lol-small"
    names = sorted(p.name for p in out_dir.iterdir())
    sheet = "dark_sheet_tau0.5,1_off-0.2.png"
    assert names == sorted([
        "dark_sample00_tau0.5_off-0.2.png", "dark_sample01_tau0.5_off-0.2.png", "dark_sample00_tau1_off-0.2.png",
        "dark_sample01_tau1_off-0.2.png", "dark_mean_tau0.5_off-0.2.png", "dark_mean_tau1_off-0.2.png", sheet, "lle-run.json",
    ])
    # the run record names every written sample with its seed and the input's sha256
    run_ = read_runs(out_dir)[-1]
    assert run_["command"] == "sample" and run_["model"]["name"] == "llflow.lol-small"
    recorded = {o["file"]: o for o in run_["outputs"]}
    assert recorded["dark_sample01_tau1_off-0.2.png"]["seed"] == 6 and recorded["dark_sample01_tau1_off-0.2.png"]["tau"] == 1.0
    assert all(o["input_sha256"] == sha256_file(photos / "dark.png") for o in run_["outputs"])
    assert len(recorded) == 6  # four samples and two means (the sheet is a picture of them)
    s = result["samples"]
    assert [(x["tau"], x["offset"], x["seed"]) for x in s] == [(0.5, -0.2, 5), (0.5, -0.2, 6), (1.0, -0.2, 5), (1.0, -0.2, 6)]
    for x in s:
        assert {"mean_brightness", "nonfinite_fraction", "out_of_range_fraction", "status", "output", "rejected_seeds"} <= x.keys()
        img = np.asarray(Image.open(x["output"]))
        assert img.shape == (20, 30, 3)  # the padding is undone
        assert x["mean_brightness"] == pytest.approx((img / 255.0 @ [0.299, 0.587, 0.114]).mean(), abs=2e-3)
    assert {m["tau"]: m["n"] for m in result["means"]} == {0.5: 2, 1.0: 2}
    # the same seed gives the same files; existing files are never replaced without --overwrite
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    code, out, _ = run(capsys, *args)
    assert code == 1 and "already exists" in json.loads(out)["error"]
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before
    code, _, _ = run(capsys, *args, "--overwrite")
    assert code == 0
    assert {p.name: p.read_bytes() for p in out_dir.iterdir() if p.name not in (sheet, "lle-run.json")} == {
        k: v for k, v in before.items() if k not in (sheet, "lle-run.json")
    }


@pytest.mark.slow
def test_cli_never_writes_non_finite_samples(capsys, photos, small_weights, tmp_path, monkeypatch) -> None:
    original = LLFlow.decode

    def decode(self, features, z, **kw):
        out, ld = original(self, features, z, **kw)
        out = out.clone()
        out[0, :, out.shape[2] // 2] = float("nan")  # the first latent of every batch, a row inside the crop
        return out, ld

    monkeypatch.setattr(LLFlow, "decode", decode)
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "sample", photos / "dark.png", "-m", "llflow.lol-small", "-w", small_weights, "-o", out_dir,
                         "--n", "2", "--seed", "0", "--no-sheet", "--max-out-of-range", "0.5", "-q")
    assert code == 1 and "non-finite" in err and "--resample-bad" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["dark_sample01_tau1_off0.png", "lle-run.json"]
    assert out.split() == [str(out_dir / "dark_sample01_tau1_off0.png")]


def test_cli_usage_errors(capsys, photos, small_weights) -> None:
    src = photos / "dark.png"
    assert run(capsys, "sample", src, "-m", "llflow.lol-small", "-w", small_weights, "--tau", "warm")[0] == 2
    assert run(capsys, "sample", src, "-m", "llflow.lol-small", "-w", small_weights, "--tau", "-1")[0] == 2
    assert run(capsys, "sample", src, "-m", "llflow.lol-small", "-w", small_weights, "-o", src)[0] == 2
    code, _, err = run(capsys, "sample", src, "-m", "scl-lle")
    assert code == 2 and "not a flow" in err


@pytest.mark.slow
def test_cli_skips_its_own_outputs_in_a_folder(capsys, photos, small_weights) -> None:
    (photos / "dark_sample00.png").write_bytes((photos / "dark.png").read_bytes())  # what older versions named a sample
    args = ["sample", photos, "-m", "llflow.lol-small", "-w", small_weights, "--n", "1", "--seed", "0", "-q", "--max-out-of-range", "1"]
    assert run(capsys, *args)[0] == 0
    code, out, _ = run(capsys, *args, "--overwrite")  # a second run samples dark.png again, not its samples
    assert code == 0 and sorted(Path(p).name for p in out.split()) == ["dark_sample00_tau1_off0.png", "dark_sheet_tau1_off0.png"]
    assert sorted(p.name for p in photos.iterdir()) == ["dark.png", "dark_sample00.png", "dark_sample00_tau1_off0.png", "dark_sheet_tau1_off0.png"]


@pytest.mark.slow
def test_cli_runs_with_other_tau_or_offset_share_a_folder(capsys, photos, small_weights, tmp_path) -> None:
    out_dir = tmp_path / "out"
    base = ["sample", photos / "dark.png", "-m", "llflow.lol-small", "-w", small_weights, "-o", out_dir,
            "--n", "1", "--seed", "0", "--max-out-of-range", "1", "--mean", "-q"]
    for values in (["--tau", "1"], ["--tau", "0"], ["--tau", "1", "--z-offset", "-0.2"]):
        code, _, err = run(capsys, *base, *values)
        assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([
        f"dark_{kind}_tau{t}_off{o}.png" for t, o in (("1", "0"), ("0", "0"), ("1", "-0.2")) for kind in ("sample00", "mean", "sheet")
    ] + ["lle-run.json"])
    assert [[o["tau"] for o in r["outputs"] if "tau" in o] for r in read_runs(out_dir)] == [[1.0], [0.0], [1.0]]


@pytest.mark.parametrize(("values", "flag", "accepted"), [
    (["--tau", "nan"], "--tau nan", ">= 0"),
    (["--tau", "inf"], "--tau inf", ">= 0"),
    (["--tau", "-1"], "--tau -1", ">= 0"),
    (["--tau", "0.5,1e999"], "--tau inf", ">= 0"),
    (["--z-offset", "nan"], "--z-offset nan", "finite number"),
    (["--z-offset", "-inf"], "--z-offset -inf", "finite number"),
    (["--n", "0"], "--n 0", ">= 1"),
    (["--n", "-3"], "--n -3", ">= 1"),
])
def test_cli_refuses_bad_values_before_loading_a_model(capsys, monkeypatch, photos, values, flag, accepted) -> None:
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(sample_cmd.api, "load_model", no_model)
    monkeypatch.setattr(sample_cmd, "run_sample_job", no_model)
    start = time.perf_counter()
    code, out, err = run(capsys, "sample", photos / "dark.png", *values)
    assert code == 2 and out == "" and time.perf_counter() - start < 5
    assert err.splitlines() == [err.strip()] and err.startswith(f"Error: {flag}: ") and accepted in err, err


def _three_photos(tmp_path: Path, rng: np.random.Generator) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray((rng.random((12, 18, 3)) * 70).astype(np.uint8)).save(src / f"{name}.png")
    return src


@pytest.mark.slow
def test_cli_interrupted_batch_is_recorded_and_resumed_with_skip_existing(capsys, monkeypatch, small_weights, tmp_path, rng) -> None:
    src, out_dir = _three_photos(tmp_path, rng), tmp_path / "out"
    args = ["sample", src, "-m", "llflow.lol-small", "-w", small_weights, "-o", out_dir,
            "--n", "1", "--seed", "0", "--max-out-of-range", "1", "--no-sheet"]
    real, calls = sample_cmd.run_sample_job, []

    def ctrl_c_on_second(model, path, *rest, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, path, *rest, **kwargs)

    monkeypatch.setattr(sample_cmd, "run_sample_job", ctrl_c_on_second)
    code, out, err = run(capsys, *args)
    done = out_dir / "a_sample00_tau1_off0.png"
    assert code == 130 and out.split() == [str(done)]
    assert "interrupted after 1 of 3 inputs" in err and err.count("interrupted") == 1
    assert sorted(p.name for p in out_dir.iterdir()) == [done.name, "lle-run.json"]
    (record,) = read_runs(out_dir)
    assert record["interrupted"] is True and (record["inputs_finished"], record["inputs_total"]) == (1, 3)
    assert [(o["file"], o["input"]) for o in record["outputs"]] == [(done.name, str(src / "a.png"))]

    monkeypatch.setattr(sample_cmd, "run_sample_job", real)
    first = done.stat()
    code, out, err = run(capsys, *args, "--skip-existing", "--json")
    assert code == 0, err
    results = [json.loads(line) for line in out.splitlines()]
    assert [(r["input"], r["status"]) for r in results] == [(str(src / f"{x}.png"), s) for x, s in zip("abc", ["skipped", "ok", "ok"])]
    assert [s["output"] for r in results for s in r["samples"]] == [str(out_dir / f"{x}_sample00_tau1_off0.png") for x in "bc"]
    assert (done.stat().st_ino, done.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # not redrawn
    resumed = read_runs(out_dir)[-1]
    assert "interrupted" not in resumed and [o["input"] for o in resumed["outputs"]] == [str(src / "b.png"), str(src / "c.png")]


@pytest.mark.slow
def test_skip_existing_redraws_an_input_whose_outputs_are_incomplete(capsys, photos, small_weights, tmp_path) -> None:
    out_dir = tmp_path / "out"
    args = ["sample", photos / "dark.png", "-m", "llflow.lol-small", "-w", small_weights, "-o", out_dir,
            "--n", "2", "--seed", "0", "--max-out-of-range", "1", "--no-sheet", "--skip-existing"]
    assert run(capsys, *args)[0] == 0
    cut = out_dir / "dark_sample01_tau1_off0.png"
    cut.write_bytes(cut.read_bytes()[:60])  # a file cut short by a crash of some older writer
    (out_dir / ".dark_sample00_tau1_off0.png.1a2b3c4d.part").write_bytes(b"\x89PNG")  # a killed writer's leftover
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    code, out, err = run(capsys, *args)
    assert code == 1 and out == "" and f"{cut} is missing or unreadable" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before
    code, out, _ = run(capsys, *args, "--overwrite")
    assert code == 0 and sorted(out.split()) == [str(out_dir / "dark_sample00_tau1_off0.png"), str(cut)]
    assert np.asarray(Image.open(cut)).shape == (20, 30, 3)
    code, out, err = run(capsys, *args)
    assert code == 0 and out == "" and f"{photos / 'dark.png'}: skipped, its outputs all exist" in err
    assert len(read_runs(out_dir)) == 2  # a run that wrote nothing adds no record


def test_an_interrupted_job_leaves_none_of_its_files(tiny, tmp_path, monkeypatch) -> None:
    src = tmp_path / "dark.png"
    Image.fromarray(np.full((9, 14, 3), 40, np.uint8)).save(src)
    real, writes = sampling.write_bytes_atomic, []

    def ctrl_c_on_second_write(path, data, **kwargs):
        writes.append(path)
        if len(writes) == 2:
            raise KeyboardInterrupt
        real(path, data, **kwargs)

    monkeypatch.setattr(sampling, "write_bytes_atomic", ctrl_c_on_second_write)
    with pytest.raises(KeyboardInterrupt):
        run_sample_job(tiny, str(src), tmp_path / "out", SampleOptions(n=3, seed=0, max_out_of_range=1.0, sheet=False))
    assert len(writes) == 2 and os.listdir(tmp_path / "out") == []
