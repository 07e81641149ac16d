"""Exceptions lle raises on purpose; the CLI maps each to a one-line message and an exit code.

Every message says what went wrong and what to do about it. Library code never prints and never
uses ``assert`` to validate input.
"""

from __future__ import annotations

__all__ = [
    "LLEError",
    "InputError",
    "UsageError",
    "ModelNotFoundError",
    "WeightsError",
    "ChecksumError",
    "DownloadError",
    "OfflineError",
    "OutputExistsError",
    "OutputError",
    "NonFiniteError",
    "DeviceError",
    "RecordError",
]


class LLEError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with when this reaches it."""

    exit_code = 1


class InputError(LLEError):
    """An input file is missing, unreadable, truncated or not an image."""


class OutputError(LLEError):
    """An output cannot be written (missing or unwritable folder, disk full); the input was fine."""


class OutputExistsError(OutputError):
    """Refusing to overwrite an existing file without ``--overwrite``."""


class NonFiniteError(LLEError):
    """A model produced Inf/NaN for this input; nothing was written."""


class UsageError(LLEError):
    """Flags or arguments that do not make sense together."""

    exit_code = 2


class ModelNotFoundError(UsageError):
    """Unknown model name; the message lists close matches."""


class RecordError(LLEError):
    """Run records that cannot be joined: a shard missing or interrupted, or records of different batches."""


class DeviceError(UsageError):
    """The requested device is not available on this machine."""


class WeightsError(LLEError):
    """Weights are missing, unreadable or do not fit the architecture."""


class ChecksumError(WeightsError):
    """A weights file's sha256 does not match the manifest."""


class DownloadError(WeightsError):
    """Every download source of a model failed (network, server, missing file); nothing was cached."""


class OfflineError(WeightsError):
    """The weights are not on this machine and downloads are off (``--offline`` or ``HF_HUB_OFFLINE=1``)."""
