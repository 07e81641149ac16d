"""What the CPU computes natively, read without importing PyTorch (the engines' path uses it too)."""

from __future__ import annotations

__all__ = ["cpu_has_native_bf16"]

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # without them oneDNN and OpenVINO emulate bf16, slower than float32
_native_bf16: bool | None = None


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX; Linux ``/proc/cpuinfo`` flags)."""
    global _native_bf16
    if _native_bf16 is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        except OSError:
            flags = []
        _native_bf16 = any(flag in flags for flag in _BF16_FLAGS)
    return _native_bf16
