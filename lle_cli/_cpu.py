"""CPU inference settings applied when a model is loaded (measured in bench/vs_official.py).

Two things cost the convolutional families most on a CPU besides the convolutions themselves:

* memory layout: oneDNN's convolutions run fastest on channels-last (NHWC) tensors; with the
  weights in that layout every activation stays NHWC, and no layer reorders its input;
* fresh pages: glibc hands every large freed block back to the kernel (``mmap``/trim), so each new
  activation tensor is page-faulted and zeroed again. For Zero-DCE at 600x400 that was a quarter of
  the CPU time. Keeping freed memory in the heap makes the next layer reuse it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch
from torch import nn

__all__ = ["CHANNELS_LAST_FAMILIES", "prepare_for_inference", "keep_freed_memory", "MALLOC_ENV"]

CHANNELS_LAST_FAMILIES = frozenset({"illumination_unet", "zero_dce"})
MALLOC_ENV = "LLE_KEEP_FREED_MEMORY"  # "0" leaves the C allocator as it is

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: free memory above 2 GiB still goes back

_tuned: bool | None = None


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


def prepare_for_inference(module: nn.Module, family: str, device: torch.device) -> nn.Module:
    """Channels-last parameters for the convolutional families on the CPU.

    The allocator setting is process-wide, so the library leaves it to the caller: the ``lle``
    commands call ``keep_freed_memory()``; a Python user may too.
    """
    if device.type == "cpu" and family in CHANNELS_LAST_FAMILIES:
        module.to(memory_format=torch.channels_last)
    return module
