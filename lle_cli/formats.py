"""The one table of file formats lle reads and writes, and the questions asked of it.

Every suffix rule (which files a folder walk picks up, what ``--format jpg`` means, which suffix an
output is written with, which files need an optional package, which are videos) reads this table, so
that ``lle enhance``, ``lle sample``, ``lle eval`` and the trainers agree on what an image is.
Pure data: no image library is imported here, so anything may ask it cheaply.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

__all__ = [
    "Format",
    "TABLE",
    "FORMATS",
    "BUILTIN_FORMATS",
    "IMAGE_SUFFIXES",
    "RAW_SUFFIXES",
    "VIDEO_SUFFIXES",
    "lookup",
    "format_from_suffix",
    "default_suffix",
    "default_output_format",
    "is_image_path",
    "is_raw_path",
    "is_video_path",
    "list_image_files",
    "normalise_format",
    "muxer_for",
]


@dataclass(frozen=True)
class Format:
    """One file format: its name, its suffixes (the first is the one lle writes) and what it needs."""

    name: str  # "PNG", "JPEG", ...: what ``Picture.format`` and ``--format`` say
    suffixes: tuple[str, ...]  # lower case with the dot; suffixes[0] is the one written
    video: bool = False  # a container of frames rather than a still image
    readable: bool = True
    writable: bool = True
    extra: str | None = None  # the pip extra (``lle-cli[extra]``) reading or writing it needs
    raw: bool = False  # a camera RAW: demosaiced by LibRaw, never written
    muxer: str | None = None  # videos: the FFmpeg muxer (the temporary ".part" name hides the suffix)

    @property
    def suffix(self) -> str:
        """The suffix a file written in this format gets."""
        return self.suffixes[0]


_RAW = (".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw")

TABLE: tuple[Format, ...] = (
    Format("PNG", (".png",)),
    Format("JPEG", (".jpg", ".jpeg")),
    Format("TIFF", (".tif", ".tiff")),
    Format("WEBP", (".webp",)),
    Format("BMP", (".bmp",)),
    Format("HEIC", (".heic", ".heif", ".hif"), extra="heif"),
    Format("AVIF", (".avif",), extra="avif"),
    Format("RAW", _RAW, writable=False, extra="raw", raw=True),
    Format("MP4", (".mp4", ".m4v"), video=True, extra="video", muxer="mp4"),
    Format("MOV", (".mov",), video=True, extra="video", muxer="mov"),
    Format("MKV", (".mkv",), video=True, extra="video", muxer="matroska"),
    Format("WEBM", (".webm",), video=True, extra="video", muxer="webm"),
    Format("AVI", (".avi",), video=True, extra="video", muxer="avi"),
)

_BY_SUFFIX: dict[str, Format] = {s: f for f in TABLE for s in f.suffixes}
# ``--format`` takes a format's name or any of its suffixes (jpg, tif, heif, hif), in any case.
_BY_NAME: dict[str, Format] = {n: f for f in TABLE for n in (f.name, *(s[1:].upper() for s in f.suffixes))}

# Still images lle writes (``--format``), in the order messages list them.
FORMATS: tuple[str, ...] = tuple(f.name for f in TABLE if f.writable and not f.video)
# The ones that need no optional package: what ``lle sample`` writes, since it does not check
# extras before drawing (a missing package would otherwise fail every input after the work).
BUILTIN_FORMATS: tuple[str, ...] = tuple(f.name for f in TABLE if f.writable and not f.video and f.extra is None)
# Every still image lle reads, camera RAW included: what folder walks and the trainers pick up.
IMAGE_SUFFIXES: frozenset[str] = frozenset(s for f in TABLE if f.readable and not f.video for s in f.suffixes)
RAW_SUFFIXES: frozenset[str] = frozenset(s for f in TABLE if f.raw for s in f.suffixes)
VIDEO_SUFFIXES: frozenset[str] = frozenset(s for f in TABLE if f.video for s in f.suffixes)


def _suffix(path: str | os.PathLike) -> str:
    return Path(path).suffix.lower()


def lookup(path: str | os.PathLike) -> Format | None:
    """The table's row for a file name's suffix (any case), or None for a suffix lle does not know."""
    return _BY_SUFFIX.get(_suffix(path))


def format_from_suffix(path: str | os.PathLike) -> str | None:
    """Still-image format a file name implies for writing, or None for suffixes we do not write."""
    row = lookup(path)
    return row.name if row is not None and row.writable and not row.video else None


def default_suffix(fmt: str) -> str:
    """The suffix a file of this format (any accepted spelling) is written with: ".jpg" for JPEG."""
    return _BY_NAME[normalise_format(fmt)].suffix


def default_output_format(path: str | os.PathLike) -> str:
    """What an enhanced ``path`` is written as when nobody says: its own format, 16-bit TIFF for a
    camera RAW (nothing writes RAW), PNG for anything unknown (stdin)."""
    if is_raw_path(path):
        return "TIFF"
    return format_from_suffix(path) or "PNG"


def is_image_path(path: str | os.PathLike) -> bool:
    """Whether a directory walk should pick this file up as a still image (camera RAW included)."""
    return _suffix(path) in IMAGE_SUFFIXES


def is_raw_path(path: str | os.PathLike) -> bool:
    """A camera RAW by its suffix (.dng, .cr2, .nef, ...)."""
    return _suffix(path) in RAW_SUFFIXES


def is_video_path(path: str | os.PathLike) -> bool:
    """A video by its suffix (.mp4, .mov, .mkv, .webm, .avi, .m4v)."""
    return _suffix(path) in VIDEO_SUFFIXES


def list_image_files(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """The still images in ``folder`` (and below it), sorted; [] when it is not a folder.

    Hidden files are left out as ``lle enhance`` leaves them out: macOS writes ``._photo.jpg``
    resource forks beside copied photos, which carry the suffix but are not images.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in found if is_image_path(p) and not p.name.startswith(".") and p.is_file())


def normalise_format(fmt: str, allowed: Iterable[str] = FORMATS) -> str:
    """``--format`` spellings (jpg, .tif, heif, ...) to one of ``allowed``; ``UsageError`` otherwise."""
    allowed = tuple(allowed)
    name = fmt.strip().upper().lstrip(".")
    row = _BY_NAME.get(name)
    if row is None or row.name not in allowed:
        raise UsageError(f"unsupported output format {fmt!r}; use one of {', '.join(allowed)}")
    return row.name


def muxer_for(path: str | os.PathLike) -> str | None:
    """The FFmpeg muxer that writes a video file of this name, or None if it is not a video suffix."""
    row = lookup(path)
    return row.muxer if row is not None and row.video else None
