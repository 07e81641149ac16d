"""Optional packages (pip extras): import one, or say in one line which extra installs it.

HEIC, AVIF, camera RAW, video, ONNX export and Ray each need a package that a plain
``pip install lle-cli`` leaves out. Everything that needs one goes through ``require_extra`` so the
user always reads the same message, with the exact ``pip install "lle-cli[extra]"`` to run.
This module sits at the bottom of the house (it imports only ``errors``) so that readers, writers
and backends on every floor can use it without importing each other.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

from .errors import UsageError

__all__ = ["MissingExtraError", "Extra", "require_extra", "HEIF_EXTRA", "RAW_EXTRA", "VIDEO_EXTRA"]


class MissingExtraError(UsageError):
    """A file type needs an optional package (a pip extra) that is not installed; exit code 2."""


class Extra(NamedTuple):
    """A pip extra, the module it provides and what it is for (the message's words)."""

    name: str
    module: str
    what: str

    def load(self, label: str | None = None):
        """The module, or ``MissingExtraError`` naming this extra."""
        return require_extra(self.name, self.module, self.what, label)


def require_extra(extra: str, module: str, what: str, label: str | None = None):
    """Import ``module`` or raise ``MissingExtraError`` naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        where = f"{label}: " if label else ""
        raise MissingExtraError(
            f'{where}{what} needs the optional package {module}; install it with: pip install "lle-cli[{extra}]"'
        ) from None


# The extras the formats table (``lle_cli.formats``) names. AVIF is not here: it comes with Pillow
# itself (11.3 and newer), so ``lle_cli.imageio`` checks Pillow's plugin rather than a module.
HEIF_EXTRA = Extra("heif", "pillow_heif", "HEIC")
RAW_EXTRA = Extra("raw", "rawpy", "camera RAW")
VIDEO_EXTRA = Extra("video", "av", "video")
