"""``lle_cli._cpu.conv3x3``: LLFlow's wide 3x3 convolutions as NNPACK Winograd transforms in inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lle_cli import _cpu

pytestmark = pytest.mark.skipif(not torch.backends.nnpack.is_available(), reason="this torch build has no NNPACK")


@pytest.fixture
def calls(monkeypatch) -> list[tuple[int, ...]]:
    """Counts NNPACK calls (their input shapes) and restores the module's one-time availability check."""
    seen: list[tuple[int, ...]] = []
    real = torch._nnpack_spatial_convolution

    def counting(x, weight, bias, padding, *rest):
        seen.append(tuple(x.shape))
        return real(x, weight, bias, padding, *rest)

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", counting)
    monkeypatch.setattr(_cpu, "_winograd", None)
    monkeypatch.delenv(_cpu.WINOGRAD_ENV, raising=False)
    return seen


def _reference(x, w, b) -> torch.Tensor:
    return F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 64, 23, 31), (1, 32, 13, 8), (1, 96, 1, 5)])
def test_winograd_matches_the_convolution(calls, shape, bias) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape)
    w = torch.randn(48, shape[1], 3, 3) * 0.05
    b = torch.randn(48) if bias else None
    with torch.inference_mode():
        y = _cpu.conv3x3(x, w, b, (1, 1))
        direct = F.conv2d(x, w, b, padding=1)
    assert calls == [shape]
    assert y.shape == direct.shape
    # Winograd rounds differently from the direct method, but stays at float32 accuracy
    assert _rel_err(y, _reference(x, w, b)) < 2e-5
    assert _rel_err(direct, _reference(x, w, b)) < 2e-6


@pytest.mark.parametrize("h", [29, 30, 31, 7])
def test_strips_compute_every_row_exactly_once(calls, monkeypatch, h) -> None:
    # 6-row strips of a tall input: each strip reads one row of context (or the zero padding at the
    # image's edges) and the rows join without seams
    torch.manual_seed(1)
    x = torch.randn(1, 32, h, 40)
    w = torch.randn(32, 32, 3, 3) * 0.05
    b = torch.randn(32)
    monkeypatch.setattr(_cpu, "WINOGRAD_STRIP_BYTES", 32 * 40 * 4 * 7)  # 7 rows -> 6-row strips
    with torch.inference_mode():
        y = _cpu.conv3x3(x, w, b, 1)
    assert len(calls) == -(-h // 6)
    assert sum(s[2] for s in calls) == h + 2 * len(calls)  # its rows plus one row above and below
    assert _rel_err(y, _reference(x, w, b)) < 2e-5


def test_strips_are_bounded_by_the_wider_of_input_and_output(calls, monkeypatch) -> None:
    # An expanding layer (LLFlow's spline coupling goes from 32 to 768 channels) needs transform
    # buffers for its output too: strips are sized by the output when it is the wider side
    torch.manual_seed(2)
    x = torch.randn(1, 32, 24, 40)
    w = torch.randn(128, 32, 3, 3) * 0.05
    monkeypatch.setattr(_cpu, "WINOGRAD_STRIP_BYTES", 128 * 40 * 4 * 7)  # 7 output rows -> 6-row strips
    with torch.inference_mode():
        y = _cpu.conv3x3(x, w, None, 1)
    assert len(calls) == 4  # the input alone (32 channels) would have fit one call
    assert _rel_err(y, _reference(x, w, None)) < 2e-5


def test_what_stays_on_the_direct_convolution(calls, monkeypatch) -> None:
    x = torch.randn(1, 32, 12, 12)
    w = torch.randn(32, 32, 3, 3)
    with torch.no_grad():
        _cpu.conv3x3(x, w[:16], None, 1)  # too few output channels
        _cpu.conv3x3(x[:, :16], w[:, :16], None, 1)  # too few input channels
        _cpu.conv3x3(x, w[..., :1, :1], None, 0)  # 1x1 kernel
        _cpu.conv3x3(x.double(), w.double(), None, 1)  # not float32
        _cpu.conv3x3(x.expand(3, -1, -1, -1), w, None, 1)  # a batch: NNPACK's batched algorithm gains nothing
    y = _cpu.conv3x3(x, w.requires_grad_(), None, 1)  # autograd: training keeps the direct path
    assert y.requires_grad
    assert calls == []
    monkeypatch.setenv(_cpu.WINOGRAD_ENV, "0")
    monkeypatch.setattr(_cpu, "_winograd", None)
    with torch.no_grad():
        _cpu.conv3x3(x, w, None, 1)
    assert calls == []


def test_an_nnpack_failure_falls_back_for_good(calls, monkeypatch) -> None:
    def refuse(*args):
        calls.append(())
        raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", refuse)
    x = torch.randn(1, 32, 12, 12)
    w = torch.randn(32, 32, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(_cpu.conv3x3(x, w, None, 1), F.conv2d(x, w, None, padding=1))
        _cpu.conv3x3(x, w, None, 1)
    assert len(calls) == 1  # tried once, then the direct convolution for the rest of the process
