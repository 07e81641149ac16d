"""Device and precision selection, written once for every model."""

from __future__ import annotations

import re

import torch

from .errors import DeviceError, UsageError

__all__ = ["select_device", "select_dtype", "PRECISIONS"]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def select_device(spec: str = "auto") -> torch.device:
    """``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if m := re.fullmatch(r"cuda(?::(\d+))?", spec):
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
        idx = int(m.group(1) or 0)
        if idx >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", idx)
    if spec == "mps":
        if not _mps_available():
            raise DeviceError("--device mps: Apple MPS is not available here; use --device cpu or auto")
        return torch.device("mps")
    raise UsageError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps")


def select_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp32 on CPU (exact parity) and fp16 on CUDA/MPS; bf16 needs CPU or an Ampere+ GPU."""
    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if p == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if p == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("--precision bf16: this GPU has no bf16 support; use fp16 or fp32")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[p]
