"""What a new user hits first: odd paths, their own photos as outputs, interrupted batches, bad options."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lle_cli.cli.main import main


def _photo(path: Path, rng, size=(24, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((*size, 3)) * 80).astype(np.uint8)).save(path)
    return path


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---- paths print literally --------------------------------------------------------------------
def test_a_folder_with_markup_like_names_is_processed_and_printed_literally(tmp_path, rng, capsys) -> None:
    folder = tmp_path / "dir[/x]"
    odd = _photo(folder / "a [red]b.png", rng)
    good = _photo(folder / "good ünï.png", rng)
    (folder / "broken [bold] c.png").write_bytes(b"not a png at all")
    out_dir = tmp_path / "out [bold]"
    code, out, err = run(capsys, "enhance", folder, "-o", f"{out_dir}/")
    assert code == 1  # the broken file failed; the others were written
    assert "Traceback" not in err
    written = sorted(Path(line).name for line in out.splitlines())
    assert written == ["a [red]b.png", "good ünï.png"]
    assert (out_dir / odd.name).is_file() and (out_dir / good.name).is_file()
    assert f"{folder / 'broken [bold] c.png'}" in err  # the error names the file exactly
    assert "2 enhanced, 1 failed" in err


def test_messages_are_not_wrapped_without_a_terminal(tmp_path, capsys) -> None:
    deep = tmp_path / ("a-very-long-folder-name-" * 6) / "missing [x].png"
    code, _, err = run(capsys, "enhance", deep)
    assert code == 1
    assert str(deep) in err.replace("\n", "") and str(deep) in err  # on one line


# ---- inputs are sacred --------------------------------------------------------------------------
def test_output_equal_to_the_input_is_refused_even_with_overwrite(tmp_path, rng, capsys) -> None:
    src = _photo(tmp_path / "a.png", rng)
    before = src.read_bytes()
    hard = tmp_path / "hard.png"
    os.link(src, hard)
    soft = tmp_path / "soft.png"
    soft.symlink_to(src)
    for target in (src, hard, soft):
        for extra in ([], ["--overwrite"]):
            code, out, err = run(capsys, "enhance", src, "-o", target, *extra)
            assert code == 1 and out == ""
            assert "is the input" in err and "--in-place" in err
    assert src.read_bytes() == before


def test_in_place_replaces_the_input_atomically(tmp_path, rng, capsys) -> None:
    src = _photo(tmp_path / "a.png", rng)
    link = tmp_path / "link.png"
    link.symlink_to(src)
    before = np.asarray(Image.open(src)).astype(int)
    code, out, err = run(capsys, "enhance", src, "--in-place")
    assert code == 0 and out.strip() == str(src) and "replaced in place" in err
    after = np.asarray(Image.open(src)).astype(int)
    assert after.shape == before.shape and after.mean() > before.mean()  # enhanced, brighter
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "link.png"]  # no temporary left
    # through a symlink: the file it points to is replaced and the link stays a link
    # (Zero-DCE: its curves brighten every pass, so the second replacement is visible in the pixels)
    code, _, _ = run(capsys, "enhance", link, "-o", link, "--in-place", "-m", "zero-dce.lle-sice")
    assert code == 0 and link.is_symlink() and np.asarray(Image.open(src)).astype(int).mean() > after.mean()


# ---- resumable batches ----------------------------------------------------------------------------
def test_an_interrupted_batch_is_reported_and_resumes_with_skip_existing(tmp_path, rng, capsys, monkeypatch) -> None:
    from lle_cli.runner import LoadedModel

    folder = tmp_path / "in"
    for i in range(4):
        _photo(folder / f"p{i}.png", rng)
    out_dir = tmp_path / "out"
    real = LoadedModel.enhance
    calls = {"n": 0}

    def stop_at_third(self, rgb):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, rgb)

    monkeypatch.setattr(LoadedModel, "enhance", stop_at_third)
    code, out, err = run(capsys, "enhance", folder, "-o", f"{out_dir}/")
    assert code == 130
    done = [Path(line).name for line in out.splitlines()]
    assert done == ["p0.png", "p1.png"]  # both finished images reported, the second written while the third ran
    assert "interrupted after 2 of 4 inputs" in err and "--skip-existing" in err
    record = json.loads((out_dir / "lle-run.json").read_text())["runs"][-1]
    assert record["interrupted"] is True and sorted(o["file"] for o in record["outputs"]) == ["p0.png", "p1.png"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["lle-run.json", "p0.png", "p1.png"]  # nothing partial

    monkeypatch.setattr(LoadedModel, "enhance", real)
    code, out, err = run(capsys, "enhance", folder, "-o", f"{out_dir}/", "--skip-existing", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(Path(r["input"]).name, r["status"]) for r in rows] == [
        ("p0.png", "skipped"), ("p1.png", "skipped"), ("p2.png", "ok"), ("p3.png", "ok")]
    assert len(json.loads((out_dir / "lle-run.json").read_text())["runs"]) == 2
    code, out, err = run(capsys, "enhance", folder, "-o", f"{out_dir}/")
    assert code == 1 and out == "" and "--skip-existing" in err  # without it, existing outputs are errors


def test_skip_existing_redoes_an_output_that_does_not_read_back(tmp_path, rng, capsys) -> None:
    src = _photo(tmp_path / "a.png", rng)
    out = tmp_path / "a_out.png"
    out.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, stdout, _ = run(capsys, "enhance", src, "-o", out, "--skip-existing")
    # a broken output is not "complete": it is still refused without --overwrite, never silently kept
    assert code == 1 and stdout == ""
    code, _, err = run(capsys, "enhance", src, "-o", out, "--skip-existing", "--overwrite")
    assert code == 2 and "one of them" in err


# ---- folders ---------------------------------------------------------------------------------------
def test_sub_folders_are_noted_or_searched_with_recursive(tmp_path, rng, capsys) -> None:
    folder = tmp_path / "shoot"
    _photo(folder / "top.png", rng)
    _photo(folder / "day2" / "deep.png", rng)
    _photo(folder / ".hidden" / "secret.png", rng)
    code, out, err = run(capsys, "enhance", folder, "-o", f"{tmp_path / 'o1'}/")
    assert code == 0 and [Path(x).name for x in out.split()] == ["top.png"]
    assert "1 sub-folder(s) with images not searched (day2)" in err and "--recursive" in err
    code, out, _ = run(capsys, "enhance", folder, "-o", f"{tmp_path / 'o2'}/", "--recursive")
    assert code == 0
    assert (tmp_path / "o2" / "top.png").is_file() and (tmp_path / "o2" / "day2" / "deep.png").is_file()
    assert not (tmp_path / "o2" / ".hidden").exists()


# ---- options checked before any work ---------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--tile", "7", "-m", "zero-dce.lle-sice"], "at least 32 px"),
    (["--tile", "7"], "cannot run in tiles"),  # the default (IAT) sees the whole image
    (["--tile", "7", "-m", "llflow.lle-synth-rqs"], "at least 384 px"),
    (["--tile", "-3"], "--tile -3"),
    (["--precision", "fp8"], "fp8"),
    (["--device", "tpu"], "tpu"),
])
def test_bad_options_fail_before_the_model_loads(tmp_path, rng, capsys, monkeypatch, args, words) -> None:
    import lle_cli.api as api

    src = _photo(tmp_path / "a.png", rng)

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(api, "load_weights", no_load)
    t0 = time.perf_counter()
    code, out, err = run(capsys, "enhance", src, *args)
    assert code == 2 and out == "" and words in err
    assert len(err.strip().splitlines()) == 1
    assert time.perf_counter() - t0 < 5


def test_import_says_what_is_wrong_with_the_file(tmp_path, capsys) -> None:
    import torch

    code, _, err = run(capsys, "models", "import", tmp_path)
    assert code == 1 and "is a directory" in err
    good = tmp_path / "w.pth"
    torch.save({"e_conv1.weight": torch.zeros(32, 3, 3, 3)}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code, _, err = run(capsys, "models", "import", cut, "--trust-unknown")
    assert code == 1 and "truncated or corrupt" in err and "plain state dict" not in err


# ---- per-item failures in every batch command ----------------------------------------------------
def test_score_ood_scores_the_others_when_one_image_gives_non_finite_features(tmp_path, rng, capsys, monkeypatch) -> None:
    import torch

    import lle_cli.api as api

    folder = tmp_path / "in"
    for i in range(2):
        _photo(folder / f"p{i}.png", rng, size=(64, 64))
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(folder / "white.png")
    real = api.load_model

    def poisoned(*a, **k):
        m = real(*a, **k)
        prepare = m.module.prepare

        def nan_for_white(x):
            # the white image's encoder input becomes NaN: what a broken encoder or a bad input would give
            lq, pad = prepare(x)
            return (lq * float("nan"), pad) if float(x.mean()) > 0.9 else (lq, pad)

        m.module.prepare = nan_for_white
        return m

    monkeypatch.setattr(api, "load_model", poisoned)
    code, out, err = run(capsys, "score-ood", folder, "--json")
    assert code == 1
    rows = [json.loads(line) for line in out.splitlines() if '"input"' in line]
    assert sorted(Path(r["input"]).name for r in rows if r["status"] == "ok") == ["p0.png", "p1.png"]
    [bad] = [r for r in rows if r["status"] == "error"]
    assert Path(bad["input"]).name == "white.png" and "non-finite" in bad["error"] and "white.png" in bad["error"]
    assert torch.is_tensor(torch.zeros(1))  # torch stayed usable (no global state left broken)


@pytest.mark.slow
def test_eval_samples_a_flow_and_records_tau(tmp_path, rng, capsys) -> None:
    low, high = tmp_path / "low", tmp_path / "high"
    for i in range(2):
        _photo(low / f"{i}.png", rng, size=(48, 64))
        _photo(high / f"{i}.png", rng, size=(48, 64))
    code, out, err = run(capsys, "eval", low, high, "--model", "llflow.lle-synth-rqs", "--n", "2", "--tau", "0.5", "--json")
    assert code == 0, err
    report = json.loads(out)
    text = json.dumps(report)
    assert '"tau": 0.5' in text and '"n": 2' in text
    code, out0, _ = run(capsys, "eval", low, high, "--model", "llflow.lle-synth-rqs", "--json")
    assert json.loads(out0)["mean"] != report["mean"]  # sampling changed the predictions
    code, _, err = run(capsys, "eval", low, high, "--model", "default", "--n", "2")
    assert code == 2 and "flow" in err.lower()


@pytest.mark.parametrize("argv", [
    ["enhance", "{p}"],
    ["sample", "{p}"],
    ["score-ood", "{p}"],
    ["eval", "{p}", "{p}"],
    ["models", "import", "{p}"],
    ["train", "llflow", "--data", "{p}", "-o", "{d}/w.safetensors"],
    ["train", "synth-pairs", "{p}", "-o", "{d}/pairs"],
])
def test_every_command_prints_an_odd_path_literally(tmp_path, capsys, argv) -> None:
    odd = tmp_path / "dir[/x]" / "a [red]b [/bold] ünï.png"
    args = [a.format(p=odd, d=tmp_path) for a in argv]
    code, _, err = run(capsys, *args)
    assert code != 0 and "Traceback" not in err
    assert str(odd) in err, err
