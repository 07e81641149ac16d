"""bench/vs_official.py: the plain LLFlow baseline's preprocessing and the worker protocol."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lle_cli.models.llflow import auto_padding, equalize_hist, pad_symmetric

from .conftest import shared_path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "vs_official.py"


@pytest.fixture(scope="module")
def vs():
    spec = importlib.util.spec_from_file_location("bench_vs_official", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("shape", [(37, 53), (16, 32), (90, 131)])
def test_padding_matches_lle(vs, shape) -> None:
    img = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    padded, (h1, h2, w1, w2) = vs._llflow_pad(img)
    pad = auto_padding(*shape)
    assert (h1, h2, w1, w2) == (pad.top, pad.bottom, pad.left, pad.right)
    assert min(h1 + h2, w1 + w2) >= 1 and padded.shape[0] % 16 == 0 and padded.shape[1] % 16 == 0
    ours = pad_symmetric(torch.from_numpy(img).permute(2, 0, 1), pad).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(padded, ours)


@pytest.mark.parametrize("kind", ["random", "dark", "constant", "two_values"])
def test_equalize_hist_matches_lle(vs, kind) -> None:
    rng = np.random.default_rng(2)
    plane = {
        "random": rng.integers(0, 256, (40, 60)),
        "dark": rng.integers(3, 40, (40, 60)),
        "constant": np.full((40, 60), 17),
        "two_values": np.where(rng.random((40, 60)) < 0.3, 5, 200),
    }[kind].astype(np.uint8)
    np.testing.assert_array_equal(vs._equalize_hist(plane), equalize_hist(torch.from_numpy(plane)).numpy())


def test_llflow_input_matches_official_fixtures(vs) -> None:
    common = shared_path("golden", "llflow", "common")
    for img in ("lowlight_a", "lowlight_odd"):
        lq, _, padded, his = vs._llflow_prepare(shared_path("golden", "inputs", f"{img}.png"))
        np.testing.assert_array_equal(vs._llflow_t(padded).numpy(), np.load(common / f"{img}_padded.npy"))
        np.testing.assert_array_equal(vs._llflow_t(his).numpy(), np.load(common / f"{img}_histeq.npy"))
        want = np.load(common / f"{img}_net_input.npy")
        assert np.abs(lq.numpy() - want).max() <= 1e-6 * np.abs(want).max()


@pytest.mark.slow
def test_plain_llflow_reproduces_golden(vs) -> None:
    shared_path("golden", "llflow", "mid", "lowlight_a_final.npy")
    fam = vs.FAMILIES["llflow"]
    err, detail = fam.golden(fam, vs._official_net(fam))
    assert err <= 1e-4, detail
    assert set(detail) == {"lowlight_a", "lowlight_odd"}


@pytest.mark.slow
def test_workers_are_separate_processes_and_errors_come_back_as_one_line(vs) -> None:
    off = vs.Worker("official", "zero_dce", 1)
    lle = vs.Worker("lle", "zero_dce", 1)
    try:
        a, b = off.call("hello"), lle.call("hello")
        assert a["pid"] != b["pid"] and a["threads"] == b["threads"] == 1
        assert a["keep_freed_memory"] is False  # the baseline stays a plain process
        if sys.platform.startswith("linux"):
            assert b["keep_freed_memory"] is True
        with pytest.raises(vs.WorkerError, match=r"official worker \(zero_dce\), network: \w+Error") as e:
            off.call("network", src="/nonexistent/x.png")  # before "load": no network yet
        assert "\n" not in str(e.value)
        assert off.call("hello")["pid"] == a["pid"]  # the worker survives a failed command
    finally:
        off.close()
        lle.close()
    assert off.proc.returncode == 0 and lle.proc.returncode == 0
