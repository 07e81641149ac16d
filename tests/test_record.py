"""Run records: written beside outputs by enhance/train/eval, read back by eval."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lle_cli import api, record
from lle_cli.cli.main import main
from lle_cli.weights import sha256_file


@pytest.fixture
def photos(tmp_path, rng) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(3):
        Image.fromarray((rng.random((20, 28, 3)) * 80).astype(np.uint8)).save(d / f"p{i}.png")
    return d


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_write_append_read_and_index(tmp_path) -> None:
    run1 = record.new_run("enhance", model={"name": "m1"}, options={"quality": 90, "out": tmp_path / "x"}, seed=3)
    record.add_output(run1, tmp_path / "a.png", sha256="aa", input="in/a.png", input_sha256="11", seconds=0.5)
    record.add_output(run1, tmp_path / "b.png", sha256="bb", input="in/b.png", input_sha256="22")
    path = record.write_run(tmp_path, record.finish_run(run1))
    assert path == tmp_path / record.RECORD_NAME
    run2 = record.new_run("enhance", model={"name": "m2"})
    record.add_output(run2, tmp_path / "b.png", sha256="bb2")
    record.write_run(tmp_path, record.finish_run(run2))
    data = json.loads(path.read_text())
    assert data["schema"] == record.SCHEMA and [r["model"]["name"] for r in data["runs"]] == ["m1", "m2"]
    first = data["runs"][0]
    assert first["seed"] == 3 and first["options"] == {"quality": 90, "out": str(tmp_path / "x")}
    assert first["seconds"] >= 0 and first["lle_version"] and "_t0" not in first
    index = record.index_outputs(tmp_path)
    assert index["a.png"][0]["model"]["name"] == "m1" and index["a.png"][1]["input_sha256"] == "11"
    assert index["b.png"][0]["model"]["name"] == "m2"  # the later run wins
    assert "m1" in record.describe_run(first) and "seed 3" in record.describe_run(first)


def test_a_foreign_file_of_the_same_name_is_left_alone(tmp_path) -> None:
    foreign = tmp_path / record.RECORD_NAME
    foreign.write_text('{"not": "ours"}')
    run = record.new_run("eval")
    record.add_output(run, tmp_path / "a.png", sha256="aa")
    path = record.write_run(tmp_path, run)
    assert foreign.read_text() == '{"not": "ours"}' and path.name == f"lle-run.{run['id']}.json"
    assert [r["id"] for r in record.read_runs(tmp_path)] == [run["id"]]


def test_model_fields_hash_the_weights_actually_loaded(weights) -> None:
    m = api.load_model("scl-lle", weights=weights, precision="fp32")
    f = record.model_fields(m)
    assert f["name"] == "scl-lle.official" and f["weights_sha256"] == sha256_file(weights)
    assert f["device"] == "cpu" and f["dtype"] == "float32" and f["weights_source"] == str(weights)


def test_enhance_batch_writes_a_record_by_default(capsys, photos, weights, tmp_path) -> None:
    out = tmp_path / "out"
    assert main(["enhance", str(photos), "-o", f"{out}/", "-m", "scl-lle", "-w", str(weights), "-q"]) == 0
    runs = record.read_runs(out)
    assert len(runs) == 1
    run = runs[0]
    assert run["command"] == "enhance" and run["model"]["weights_sha256"] == sha256_file(weights)
    assert run["options"]["model"] == "scl-lle" and run["seconds"] is not None
    files = {o["file"]: o for o in run["outputs"]}
    assert sorted(files) == ["p0.png", "p1.png", "p2.png"]
    for name, o in files.items():
        assert o["sha256"] == sha(out / name)
        assert o["input"] == str(photos / name) and o["input_sha256"] == sha(photos / name)


def test_single_file_records_only_when_asked(capsys, photos, weights, tmp_path) -> None:
    src = photos / "p0.png"
    a, b = tmp_path / "a" / "one.png", tmp_path / "b" / "one.png"
    assert main(["enhance", str(src), "-o", str(a), "-m", "scl-lle", "-w", str(weights), "-q"]) == 0
    assert record.read_runs(a.parent) == []
    assert main(["enhance", str(src), "-o", str(b), "-m", "scl-lle", "-w", str(weights), "-q", "--record"]) == 0
    assert [o["file"] for o in record.read_runs(b.parent)[0]["outputs"]] == ["one.png"]
    c = tmp_path / "c"
    assert main(["enhance", str(photos), "-o", f"{c}/", "-m", "scl-lle", "-w", str(weights), "-q", "--no-record"]) == 0
    assert record.read_runs(c) == [] and len(list(c.iterdir())) == 3
    assert main(["enhance", str(src), "-o", "-", "-m", "scl-lle", "-w", str(weights), "--record"]) == 2
    assert "--record" in capsys.readouterr().err


def test_failed_files_are_not_recorded(capsys, photos, weights, tmp_path) -> None:
    (photos / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["enhance", str(photos), "-o", f"{out}/", "-m", "scl-lle", "-w", str(weights), "-q"]) == 1
    assert sorted(o["file"] for o in record.read_runs(out)[0]["outputs"]) == ["p0.png", "p1.png", "p2.png"]


def test_folder_digest_tracks_content(tmp_path) -> None:
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.png").write_bytes(b"1")
    (d / "sub" / "b.png").write_bytes(b"2")
    (d / "notes.txt").write_bytes(b"x")
    digest, n = record.folder_digest(d, {".png"})
    assert n == 2 and record.folder_digest(d, {".png"}) == (digest, 2)
    (d / "notes.txt").write_bytes(b"y")
    assert record.folder_digest(d, {".png"})[0] == digest  # not a training image
    (d / "sub" / "b.png").write_bytes(b"3")
    assert record.folder_digest(d, {".png"})[0] != digest


def test_train_record(capsys, tmp_path, rng) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(data / f"t{i}.png")
    out = tmp_path / "w" / "tiny.safetensors"
    out.parent.mkdir()
    args = ["train", "zero-dce", str(data), "-o", str(out), "--steps", "2", "--batch-size", "1", "--resize", "16", "--crop", "16", "-q", "--record"]
    assert main(args) == 0
    run = record.read_runs(out.parent)[0]
    assert run["command"] == "train" and run["seed"] == 0 and run["options"]["config"]["steps"] == 2
    [o] = run["outputs"]
    assert o["file"] == "tiny.safetensors" and o["sha256"] == sha256_file(out) == run["model"]["weights_sha256"]
    assert o["input"] == str(data) and o["input_sha256"] == record.folder_digest(data, {".png"})[0] and o["images"] == 2
