"""The pipelined batch (lle_cli.batch.run_batch): order, per-file error isolation, bounded read-ahead,
and outputs byte-identical to the one-after-another run."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lle_cli import api, batch
from lle_cli.batch import Job, OutputOptions, plan_jobs, run_batch


@pytest.fixture(scope="module")
def model():
    return api.load_model(None, device="cpu")  # the embedded Zero-DCE: no download, fast on tiny images


@pytest.fixture
def folder(tmp_path, rng) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for i in range(6):
        Image.fromarray((rng.random((12 + i, 16, 3)) * 90).astype(np.uint8)).save(d / f"p{i}.png")
    (d / "p2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # a damaged file in the middle
    return d


def _run(model, folder: Path, out: Path, **kw):
    jobs, opts = plan_jobs([str(folder)], str(out) + "/", OutputOptions())
    return jobs, list(run_batch(model, jobs, opts, digests=True, **kw))


def test_pipeline_keeps_order_isolates_errors_and_matches_sequential(model, folder, tmp_path) -> None:
    jobs, piped = _run(model, folder, tmp_path / "piped")
    _, seq = _run(model, folder, tmp_path / "seq", pipeline=False)
    assert [r.input for r in piped] == [j.input for j in jobs] == [r.input for r in seq]
    assert [r.status for r in piped] == ["ok", "ok", "error", "ok", "ok", "ok"]
    assert "p2.png" in piped[2].error and "corrupt" in piped[2].error
    assert not (tmp_path / "piped" / "p2.png").exists()  # nothing written for the bad file
    for a, b in zip(piped, seq):
        assert (a.status, a.error, a.input_sha256, a.output_sha256) == (b.status, b.error, b.input_sha256, b.output_sha256)
        if a.status == "ok":
            assert Path(a.output).read_bytes() == Path(b.output).read_bytes()
            assert a.seconds > 0


def test_write_failure_is_isolated(model, folder, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "p4.png").mkdir()  # the output path of p4 is a directory: its atomic write fails
    jobs, opts = plan_jobs([str(folder)], str(out) + "/", OutputOptions(overwrite=True))
    results = list(run_batch(model, jobs, opts))
    assert [r.status for r in results] == ["ok", "ok", "error", "ok", "error", "ok"]
    assert results[4].error.startswith(str(out / "p4.png"))
    assert (out / "p5.png").is_file() and (out / "p3.png").is_file()


def test_reads_run_ahead_on_a_helper_thread_by_one_image_only(model, folder, tmp_path, monkeypatch) -> None:
    events: list[tuple[str, str, str]] = []
    lock = threading.Lock()
    real_read, real_enhance = batch.read_image, model.enhance

    def read(path, **kw):
        with lock:
            events.append(("read", Path(path).stem, threading.current_thread().name))
        return real_read(path, **kw)

    def enhance(rgb):
        with lock:
            events.append(("enhance", str(rgb.shape[0]), threading.current_thread().name))
        return real_enhance(rgb)

    monkeypatch.setattr(batch, "read_image", read)
    monkeypatch.setattr(model, "enhance", enhance)
    _run(model, folder, tmp_path / "o")
    reads = [e for e in events if e[0] == "read"]
    assert all(name.startswith("lle-read") for *_, name in reads)
    assert all(name == threading.main_thread().name for kind, _, name in events if kind == "enhance")
    # image i + 2 is never read before image i is enhanced (heights 12 + i identify the images)
    for i in range(4):
        if i == 2:
            continue  # the damaged file is never enhanced
        enhanced_at = events.index(("enhance", str(12 + i), threading.main_thread().name))
        read_at = next(k for k, e in enumerate(events) if e[0] == "read" and e[1] == f"p{i + 2}")
        assert read_at > enhanced_at


def test_single_job_and_missing_inputs(model, tmp_path, rng) -> None:
    src = tmp_path / "a.png"
    Image.fromarray((rng.random((10, 10, 3)) * 90).astype(np.uint8)).save(src)
    jobs = [Job(str(tmp_path / "missing.png"), None, "missing.png: no such file"), Job(str(src), str(tmp_path / "a_out.png"))]
    results = list(run_batch(model, jobs, OutputOptions()))
    assert [r.status for r in results] == ["error", "ok"]
    assert results[0].error == "missing.png: no such file"
    (one,) = run_batch(model, [Job(str(src), str(tmp_path / "b_out.png"))], OutputOptions())
    assert one.status == "ok" and (tmp_path / "b_out.png").read_bytes() == (tmp_path / "a_out.png").read_bytes()
