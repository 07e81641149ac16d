"""Past one process without Ray: ``--shard K/N`` with ``lle runs merge``, and ``--workers N``."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lle_cli import record
from lle_cli.cli.main import main
from lle_cli.errors import UsageError
from lle_cli.shard import parse_shard, shard_key, shard_number


@pytest.fixture
def photos(tmp_path, rng) -> Path:
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    for i in range(7):
        Image.fromarray((rng.random((20, 28, 3)) * 80).astype(np.uint8)).save(d / f"p{i}.png")
    Image.fromarray((rng.random((16, 16, 3)) * 80).astype(np.uint8)).save(d / "sub" / "deep.png")
    return d


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def images(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha(p) for p in sorted(folder.rglob("*.png"))}


def outputs(run: dict) -> list[tuple]:
    return sorted((o["file"], o["sha256"], o["input"], o["input_sha256"]) for o in run["outputs"])


@pytest.mark.parametrize("text", ["0/2", "3/2", "x/y", "1/0", "2", "-1/2"])
def test_bad_shard_is_one_line_and_exit_2(capsys, photos, tmp_path, text) -> None:
    assert main(["enhance", str(photos), "-o", f"{tmp_path / 'out'}/", "--shard", text, "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: --shard")
    assert not (tmp_path / "out").exists()


def test_shards_are_disjoint_covering_and_stable() -> None:
    keys = [f"dir{i % 7}/img{i}.png" for i in range(500)]
    for n in (1, 2, 3, 5):
        parts = {k: shard_number(k, n) for k in keys}
        assert set(parts.values()) <= set(range(1, n + 1))
        assert sorted(keys, key=lambda k: parts[k]) == sorted(keys, key=lambda k: shard_number(k, n))  # a function of the key alone
    counts = np.bincount([shard_number(k, 4) for k in keys])[1:]
    assert counts.min() > 80  # roughly even
    assert parse_shard("2/3").record_name == "lle-run.2-of-3.json" and parse_shard(" 1 / 1 ").count == 1
    with pytest.raises(UsageError):
        parse_shard("4/3")
    # relative to the folder it was found in: the same on every machine, wherever the data is mounted
    assert shard_key("/mnt/a/photos/x/y.png", [Path("/mnt/a/photos")]) == shard_key("data/photos/x/y.png", [Path("data/photos")])


def test_two_shards_equal_the_whole_run_and_merge(capsys, photos, tmp_path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["enhance", str(photos), "-o", f"{whole}/", "-q"]) == 0
    for k in (2, 1):  # any order
        assert main(["enhance", str(photos), "-o", f"{split}/", "--shard", f"{k}/2", "-q"]) == 0
    assert images(split) == images(whole) and len(images(whole)) == 7
    per_shard = [json.loads((split / f"lle-run.{k}-of-2.json").read_text())["runs"][0] for k in (1, 2)]
    assert sum(r["shard"]["inputs_assigned"] for r in per_shard) == 7 and all(r["shard"]["inputs_assigned"] for r in per_shard)
    capsys.readouterr()
    assert main(["runs", "merge", str(split), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shards"] == 2 and info["inputs"] == 7 and info["outputs"] == 7 and info["failed"] == 0
    runs = record.read_runs(split)
    assert len(runs) == 1 and not list(split.glob("lle-run.*-of-*.json"))  # the shard records are inside it now
    merged, reference = runs[0], record.read_runs(whole)[0]
    assert outputs(merged) == outputs(reference)
    assert sorted(i["input"] for i in merged["inputs"]) == sorted(o["input"] for o in reference["outputs"])
    assert [s["index"] for s in merged["shards"]] == [1, 2] and merged["model"] == reference["model"]


def test_recursive_shards_and_failures_are_accounted(capsys, photos, tmp_path) -> None:
    (photos / "bad.png").write_bytes(b"not a png")
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["enhance", str(photos), "-r", "-o", f"{whole}/", "-q"]) == 1
    codes = [main(["enhance", str(photos), "-r", "-o", f"{split}/", "--shard", f"{k}/3", "-q"]) for k in (1, 2, 3)]
    assert 1 in codes  # the shard holding bad.png
    assert images(split) == images(whole)
    # every shard left a record in every output folder of the batch, even with nothing there
    assert len(list(split.glob("lle-run.*-of-3.json"))) == 3 and len(list((split / "sub").glob("lle-run.*-of-3.json"))) == 3
    capsys.readouterr()
    assert main(["runs", "merge", str(split), "-r", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert sorted((x["inputs"], x["failed"]) for x in lines) == [(1, 0), (8, 1)]
    top = record.read_runs(split)[0]
    assert {i["input"].rsplit("/", 1)[-1]: i["status"] for i in top["inputs"]}["bad.png"] == "error"


def test_merge_refuses_incomplete_and_mismatched_sets(capsys, photos, tmp_path) -> None:
    out = tmp_path / "out"
    assert main(["enhance", str(photos), "-o", f"{out}/", "--shard", "1/2", "-q"]) == 0
    capsys.readouterr()
    assert main(["runs", "merge", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "incomplete" in err and "2/2" in err
    assert (out / "lle-run.1-of-2.json").exists()  # nothing removed
    assert main(["enhance", str(photos), "-o", f"{out}/", "--shard", "2/2", "--quality", "80", "-q"]) == 0
    capsys.readouterr()
    assert main(["runs", "merge", str(out)]) == 1
    assert "not of the same batch" in capsys.readouterr().err
    assert main(["runs", "merge", str(tmp_path / "nowhere")]) == 1


def test_sample_shards_equal_the_whole(capsys, photos, tmp_path, monkeypatch) -> None:
    for p in list(photos.glob("p[3-6].png")):
        p.unlink()
    whole, split = tmp_path / "whole", tmp_path / "split"
    args = [str(photos), "-n", "2", "--seed", "5", "--no-sheet", "-q"]
    assert main(["sample", *args, "-o", str(whole)]) == 0
    for k in (1, 2):
        assert main(["sample", *args, "-o", str(split), "--shard", f"{k}/2"]) == 0
    assert images(split) == images(whole) and len(images(whole)) == 6
    assert main(["runs", "merge", str(split)]) == 0
    assert outputs(record.read_runs(split)[0]) == outputs(record.read_runs(whole)[0])


def test_options_for_workers_are_checked_first(capsys, photos, tmp_path, monkeypatch) -> None:
    out = f"{tmp_path / 'out'}/"
    assert main(["enhance", str(photos), "-o", out, "--workers", "0"]) == 2
    assert main(["enhance", str(photos), "-o", out, "--threads-per-worker", "2"]) == 2
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    assert main(["enhance", str(photos), "-o", out, "--ray", "local"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("Error: --ray") and 'pip install "lle-cli[ray]"' in err[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_workers_match_a_local_run(capsys, photos, tmp_path) -> None:
    (photos / "bad.png").write_bytes(b"not a png")
    local, pooled = tmp_path / "local", tmp_path / "pooled"
    assert main(["enhance", str(photos), "-o", f"{local}/", "-q"]) == 1
    capsys.readouterr()
    assert main(["enhance", str(photos), "-o", f"{pooled}/", "--workers", "2", "--threads-per-worker", "1", "--json"]) == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert sorted(x["status"] for x in lines) == ["error"] + ["ok"] * 7
    assert images(pooled) == images(local)
    run, reference = record.read_runs(pooled)[0], record.read_runs(local)[0]
    assert outputs(run) == outputs(reference) and [o["file"] for o in run["outputs"]] == [o["file"] for o in reference["outputs"]]
    assert run["parallel"] == {"workers": 2, "threads_per_worker": 1, "ray": None}
    assert main(["enhance", str(photos), "-o", f"{pooled}/", "--workers", "2", "--skip-existing", "--json"]) == 1
    again = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert sorted(x["status"] for x in again) == ["error"] + ["skipped"] * 7
