"""CPU inference settings applied when a model is loaded (measured in bench/vs_official.py).

Two things cost the convolutional families most on a CPU besides the convolutions themselves:

* memory layout: oneDNN's convolutions run fastest on channels-last (NHWC) tensors; with the
  weights in that layout every activation stays NHWC, and no layer reorders its input;
* fresh pages: glibc hands every large freed block back to the kernel (``mmap``/trim), so each new
  activation tensor is page-faulted and zeroed again. For Zero-DCE at 600x400 that was a quarter of
  the CPU time. Keeping freed memory in the heap makes the next layer reuse it.

And one thing that cuts the convolutions' own cost: LLFlow's wide 3x3 convolutions run as Winograd
transforms (NNPACK, ``conv3x3``), with several times fewer multiplications than oneDNN's direct
method (its 192- and 320-channel layers run about 2x faster).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "prepare_for_inference",
    "keep_freed_memory",
    "MALLOC_ENV",
    "conv3x3",
    "winograd_workspace_mb",
    "WINOGRAD_ENV",
    "WINOGRAD_MIN_CHANNELS",
]

MALLOC_ENV = "LLE_KEEP_FREED_MEMORY"  # "0" leaves the C allocator as it is

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: free memory above 2 GiB still goes back

WINOGRAD_ENV = "LLE_WINOGRAD"  # "0": every convolution goes to F.conv2d (oneDNN's direct method)
# Narrower layers gain little (64 -> 32 channels: ~5%) and the small test models stay on oneDNN.
WINOGRAD_MIN_CHANNELS = 32
# Input bytes per NNPACK call: its workspace (about twice the call's input, kept for reuse) stays
# bounded however large the image; taller inputs run as strips of rows.
WINOGRAD_STRIP_BYTES = 64 << 20

_tuned: bool | None = None
_winograd: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc to serve large blocks from the heap and not to trim it; True if it took effect.

    Process-wide and done once: RSS no longer drops after a big image, it is reused by the next one
    (the peak is unchanged). Off with ``LLE_KEEP_FREED_MEMORY=0``; a no-op off glibc.
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get(MALLOC_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _tuned


def prepare_for_inference(module: nn.Module, channels_last: bool, device: torch.device) -> nn.Module:
    """Channels-last parameters on the CPU for the families whose descriptor asks for them
    (``FamilySpec.channels_last``: plain convolutional networks, where oneDNN runs them faster).

    The allocator setting is process-wide, so the library leaves it to the caller: the ``lle``
    commands call ``keep_freed_memory()``; a Python user may too.
    """
    if device.type == "cpu" and channels_last:
        module.to(memory_format=torch.channels_last)
    return module


def _winograd_ready() -> bool:
    global _winograd
    if _winograd is None:
        # is_available() also initialises NNPACK: without that first call every convolution fails
        _winograd = os.environ.get(WINOGRAD_ENV, "1") != "0" and bool(torch.backends.nnpack.is_available())
    return _winograd


def winograd_workspace_mb() -> float:
    """Memory the Winograd path holds besides the tensors, whatever the image size (MiB): NNPACK's
    transform buffers for one strip, the strip's padded copy and its output. About 6 strips' worth;
    measured with LLFlow mid (320-channel features): peak RSS ~360-420 MB over the direct path's
    per-pixel line at 0.8-3 MP. 0 when the direct convolution is used.
    """
    return 6 * WINOGRAD_STRIP_BYTES / 2**20 if _winograd_ready() else 0.0


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int] | int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)``, as a Winograd convolution where that pays.

    Inference only (no autograd), one image (NNPACK's batched algorithm gains nothing below ~8
    images and loses at 2), float32 on the CPU, 3x3 kernels with "same" zero padding and at least
    ``WINOGRAD_MIN_CHANNELS`` channels in and out (stride 1, no dilation or groups: the caller's
    contract). NNPACK's Winograd transform needs several times fewer multiplications and runs
    LLFlow's 192 -> 64 and 320 -> 64 layers about 2x faster than oneDNN's direct convolution here
    (bench/vs_official.py). It rounds differently: about 2x the direct method's float32 error
    against a float64 reference, within the LLFlow parity tolerance
    (tests/models/test_llflow_parity.py). Anything else, a machine without NNPACK, or
    ``LLE_WINOGRAD=0`` runs ``F.conv2d``.
    """
    global _winograd
    pad = (padding, padding) if isinstance(padding, int) else tuple(padding)
    if (
        pad == (1, 1)
        and weight.shape[-2:] == (3, 3)
        and min(weight.shape[0], weight.shape[1]) >= WINOGRAD_MIN_CHANNELS
        and x.dim() == 4
        and x.shape[0] == 1
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and _winograd_ready()
    ):
        try:
            return _winograd_strips(x, weight.contiguous(), bias)
        except RuntimeError:  # an NNPACK that refuses this machine or shape: oneDNN from now on
            _winograd = False
    return F.conv2d(x, weight, bias, padding=padding)


def _winograd_strips(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    n, c, h, w = x.shape
    # NNPACK's transform buffers scale with the input and the output of a call: bound the wider of
    # the two (LLFlow's spline couplings expand 32 channels to 768), else the workspace grows with
    # the image. Whole 6-row Winograd tiles.
    rows = max(WINOGRAD_STRIP_BYTES // (max(c, weight.shape[0]) * w * 4) // 6 * 6, 6)
    if rows >= h:
        return torch._nnpack_spatial_convolution(x.contiguous(), weight, bias, [1, 1])
    out = x.new_empty(n, weight.shape[0], h, w)
    for y0 in range(0, h, rows):
        y1 = min(y0 + rows, h)
        lo, hi = max(y0 - 1, 0), min(y1 + 1, h)
        # one row of context on each side, or the zero row "same" padding puts at the image's edge;
        # the call pads columns only, so it computes exactly rows y0..y1
        part = F.pad(x[..., lo:hi, :], (0, 0, int(lo == y0), int(hi == y1)))
        out[..., y0:y1, :] = torch._nnpack_spatial_convolution(part, weight, bias, [0, 1])
    return out
