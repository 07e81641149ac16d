"""Device and precision selection, written once for every model."""

from __future__ import annotations

import re

import torch

from .cpu_features import cpu_has_native_bf16
from .errors import DeviceError, UsageError

__all__ = ["select_device", "select_dtype", "PRECISIONS", "cpu_has_native_bf16", "auto_cpu_bf16", "AUTO_BF16_MAX_RATIO", "AUTO_BF16_WITHIN1"]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# ``--precision auto`` runs a family in bf16 on a CPU only where bench/precision.py measured both:
# bf16 takes at most this share of float32's time (a smaller gain is not worth a changed output) ...
AUTO_BF16_MAX_RATIO = 0.9
# ... and the 8-bit output is within one level of float32's on at least this share of the pixels.
AUTO_BF16_WITHIN1 = 0.999


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


def auto_cpu_bf16(family: str | None) -> bool:
    """Whether ``--precision auto`` runs ``family`` in bf16 on this CPU: the family's measured policy
    (``FamilySpec.auto_cpu_bf16``, from bench/precision.py) and native bf16 in the CPU."""
    if family is None:
        return False
    from .models import FAMILIES

    spec = FAMILIES.get(family)
    # a flow's sampler and OOD features run outside the runner's autocast scope: never auto bf16
    return bool(spec is not None and spec.auto_cpu_bf16 and not spec.samples and cpu_has_native_bf16())


def select_dtype(precision: str, device: torch.device, family: str | None = None) -> torch.dtype:
    """``auto``: fp16 on CUDA/MPS; on the CPU fp32 (exact parity), or bf16 for a ``family`` whose
    measured policy allows it on a CPU with native bf16 (``auto_cpu_bf16``). bf16 needs a CPU or an
    Ampere+ GPU."""
    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if p == "auto":
        if device.type != "cpu":
            return torch.float16
        return torch.bfloat16 if auto_cpu_bf16(family) else torch.float32
    if p == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("--precision bf16: this GPU has no bf16 support; use fp16 or fp32")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[p]
