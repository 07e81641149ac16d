"""Output names: the one place that turns an input into the paths lle writes, and reads them back.

Users' scripts glob and parse these names, so they are part of the interface and never change
silently (``tests/test_naming.py`` pins them):

* ``lle enhance``: beside the input ``<stem><suffix><ext>`` (``--suffix``, default ``_enhanced``);
  under ``-o DIR`` ``DIR/<sub>/<stem><ext>``, where ``<sub>`` mirrors the input's folder below the
  input root given on the command line (``--recursive``). ``<ext>`` is the input's own suffix when
  the output keeps its format (``.jpeg`` stays ``.jpeg``), else the format's (``.tif`` for a camera
  RAW); a video keeps its container.
* ``lle sample``: ``<stem>_sample<j>_tau<t>_off<o><ext>``, ``<stem>_mean_tau<t>_off<o><ext>`` and
  ``<stem>_sheet_tau<t1,t2,..>_off<o1,o2,..>.png``, numbers as ``format_number`` writes them.
* ``lle score-ood --heatmap``: ``<stem>_ood.png``; a second input with the same stem in one run gets
  ``<stem>_2_ood.png``, and so on.
* run records: ``lle-run.json``; a shard's ``lle-run.K-of-N.json``; ``lle-run.<id>.json`` when a
  file named ``lle-run.json`` is not an lle record.

Stdin (``-``) has the stem ``stdin``. Pure string and path work: nothing here touches the disk.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from .formats import (
    default_output_format,
    default_suffix,
    format_from_suffix,
    is_video_path,
)

__all__ = [
    "ENHANCED_SUFFIX",
    "OWN_OUTPUT_STEM",
    "RECORD_GLOB",
    "RECORD_NAME",
    "SHARD_RECORD",
    "SHARD_RECORD_GLOB",
    "STDIN_STEM",
    "STDIO",
    "EnhancedName",
    "OutputName",
    "SheetName",
    "enhance_output",
    "format_number",
    "heatmap_name",
    "input_stem",
    "is_enhanced_output",
    "is_sample_output",
    "mean_name",
    "output_extension",
    "parse_enhanced_name",
    "parse_output_name",
    "parse_shard_record_name",
    "parse_sheet_name",
    "record_name",
    "sample_folder",
    "sample_name",
    "shard_record_name",
    "sheet_name",
]

STDIO = "-"  # stdin as an input, stdout as an output
STDIN_STEM = "stdin"  # what an image read from stdin is called in the names of its outputs
ENHANCED_SUFFIX = "_enhanced"  # ``lle enhance --suffix``'s default


def input_stem(input: str | os.PathLike) -> str:
    """The part of an input's name its outputs start with: the file name without its suffix."""
    return STDIN_STEM if os.fspath(input) == STDIO else Path(input).stem


# --------------------------------------------------------------------------------------------
# lle enhance


def output_extension(input: str | os.PathLike, fmt: str | None = None) -> str:
    """The suffix (with its dot) an enhanced ``input`` is written with; ``fmt``: ``--format``, normalised.

    A video keeps its container (``--format`` is for photos); a photo written in its own format keeps
    its own spelling (``.jpeg``, ``.TIF``), so that scripts find ``x_enhanced.*`` as they found ``x.*``.
    """
    path = os.fspath(input)
    if path != STDIO and is_video_path(path):
        return Path(path).suffix
    if fmt is not None:
        return default_suffix(fmt)
    if path == STDIO:
        return default_suffix("PNG")
    own = default_output_format(path)
    return Path(path).suffix if format_from_suffix(path) == own else default_suffix(own)


def enhance_output(
    input: str | os.PathLike,
    *,
    out_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    suffix: str = ENHANCED_SUFFIX,
    fmt: str | None = None,
) -> Path:
    """Where ``lle enhance`` writes ``input``'s result when the output is not one named file.

    Without ``out_dir``: beside the input, ``<stem><suffix><ext>``. With it: ``out_dir/<stem><ext>``
    (the folder already says what the files are, so no suffix), and with ``root`` (the input folder
    given on the command line that holds ``input``) the input's sub-folders below ``root`` are
    mirrored under ``out_dir``, so that ``a/x.png`` and ``b/x.png`` do not collide.
    """
    stem, ext = input_stem(input), output_extension(input, fmt)
    if out_dir is None:
        return Path(input).with_name(f"{stem}{suffix}{ext}")
    sub = Path(input).relative_to(root).parent if root is not None else Path()
    return Path(out_dir) / sub / f"{stem}{ext}"


@dataclass(frozen=True)
class EnhancedName:
    """What a file name ``lle enhance`` wrote beside its input says: the input's stem and the suffix written."""

    stem: str
    extension: str


def parse_enhanced_name(name: str | os.PathLike, suffix: str = ENHANCED_SUFFIX) -> EnhancedName | None:
    """Read back ``<stem><suffix><ext>``; None for a name that does not end so (or an empty ``suffix``)."""
    p = Path(name)
    if not suffix or not p.stem.endswith(suffix) or len(p.stem) == len(suffix):
        return None
    return EnhancedName(p.stem[: -len(suffix)], p.suffix)


def is_enhanced_output(path: str | os.PathLike, suffix: str = ENHANCED_SUFFIX) -> bool:
    """Whether a file found in a folder is an earlier ``lle enhance`` output written beside its input,
    so that enhancing the folder again does not enhance the results a second time."""
    return bool(suffix) and Path(path).stem.endswith(suffix)


# --------------------------------------------------------------------------------------------
# lle sample

_NUMBER = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"  # what format_number writes
_LIST = rf"{_NUMBER}(?:,{_NUMBER})*"
_SPAN = rf"{_NUMBER}\.\.{_NUMBER}"  # never a number: a number has at most one dot, and no two in a row
# Matched whole (fullmatch) and with DOTALL: a stem may hold any character a file system allows,
# a newline included, and "$" would also match before a trailing newline.
_SAMPLE_NAME = re.compile(
    rf"(?P<stem>.+)_(?:sample(?P<index>\d+)|mean)_tau(?P<tau>{_NUMBER})_off(?P<offset>{_NUMBER})(?P<suffix>\.[A-Za-z]\w*)?",
    re.DOTALL,
)
_SHEET_NAME = re.compile(
    rf"(?P<stem>.+)_sheet_tau(?P<taus>{_SPAN}|{_LIST})_off(?P<offsets>{_SPAN}|{_LIST})(?P<suffix>\.png)?", re.DOTALL
)
# Stems of every file `lle sample` writes, today's names and the older ones whose tau/offset tags were
# optional, so that sampling a folder again never takes earlier outputs for photos.
OWN_OUTPUT_STEM = re.compile(r"_(?:sample\d+|mean)(?:_tau[^_]+)?(?:_off[^_]+)?$|_sheet(?:_tau[^_]+_off[^_]+)?$")
_SHEET_TAG_MAX = 80  # characters per value list in a sheet's name; longer sweeps are named by their range
_SHEET_SUFFIX = ".png"  # a contact sheet is always a PNG, whatever the samples' format


def format_number(x: float) -> str:
    """The shortest text that reads back (``float``) as exactly ``x``, made of ``0-9 . - e`` only.

    ``1``, ``0.5``, ``-0.2``, ``1e-05``, ``1e16``: Python's shortest round-trip repr without the
    ``.0`` of whole numbers and the ``+`` of exponents, which some tools treat specially in names.
    """
    x = float(x) + 0.0  # -0.0 and 0.0 are the same latent: one name
    if not math.isfinite(x):
        raise ValueError(f"{x} has no file-name form; tau and offset must be finite")
    return repr(x).removesuffix(".0").replace("e+", "e")


def _pair_tag(tau: float, offset: float) -> str:
    return f"_tau{format_number(tau)}_off{format_number(offset)}"


def _list_tag(values: Sequence[float]) -> str:
    text = ",".join(format_number(v) for v in values)
    if len(text) <= _SHEET_TAG_MAX:
        return text
    return f"{format_number(min(values))}..{format_number(max(values))}"  # file names stop at 255 bytes


def sample_name(stem: str, index: int, tau: float, offset: float, extension: str = "", *, n: int = 1) -> str:
    """``<stem>_sample<j>_tau<t>_off<o><ext>``; ``j`` has as many digits as ``n`` samples need, at least 2,
    so that the files of one input sort in drawing order."""
    width = max(2, len(str(n - 1)))
    return f"{stem}_sample{index:0{width}d}{_pair_tag(tau, offset)}{extension}"


def mean_name(stem: str, tau: float, offset: float, extension: str = "") -> str:
    """``<stem>_mean_tau<t>_off<o><ext>``: the mean of one (tau, offset) pair's samples."""
    return f"{stem}_mean{_pair_tag(tau, offset)}{extension}"


def sheet_name(stem: str, taus: Sequence[float], offsets: Sequence[float]) -> str:
    """``<stem>_sheet_tau<t1,t2,..>_off<o1,o2,..>.png``; a list longer than 80 characters is written
    as its range ``<min>..<max>``. Every tau and offset is in the name, even a single one, so that
    runs with other values into the same folder never collide."""
    return f"{stem}_sheet_tau{_list_tag(taus)}_off{_list_tag(offsets)}{_SHEET_SUFFIX}"


def sample_folder(input: str | os.PathLike, out_dir: str | os.PathLike | None) -> Path:
    """Where ``lle sample`` writes an input's files: ``-o DIR``, else beside the input (stdin: here)."""
    if out_dir is not None:
        return Path(out_dir)
    return Path.cwd() if os.fspath(input) == STDIO else Path(input).parent


@dataclass(frozen=True)
class OutputName:
    """What a sample's or mean's file name says: ``index`` is None for a mean."""

    stem: str
    index: int | None
    tau: float
    offset: float
    suffix: str = ""

    @property
    def kind(self) -> str:
        """``"sample"`` or ``"mean"``."""
        return "mean" if self.index is None else "sample"


@dataclass(frozen=True)
class SheetName:
    """What a contact sheet's file name says. With ``taus_span`` (``offsets_span``) the list was too long
    for a file name and ``taus`` (``offsets``) holds only its smallest and largest value."""

    stem: str
    taus: tuple[float, ...]
    offsets: tuple[float, ...]
    taus_span: bool = False
    offsets_span: bool = False
    suffix: str = _SHEET_SUFFIX
    kind: str = "sheet"


def parse_output_name(name: str) -> OutputName | None:
    """Read back ``<stem>_sample<j>_tau<t>_off<o>[.ext]`` or ``<stem>_mean_tau<t>_off<o>[.ext]``; None otherwise.

    The name's tail decides, so a stem that itself looks like an output (``a_sample01_tau2``) comes
    back whole.
    """
    m = _SAMPLE_NAME.fullmatch(name)
    if m is None:
        return None
    index = int(m["index"]) if m["index"] is not None else None
    return OutputName(m["stem"], index, float(m["tau"]), float(m["offset"]), m["suffix"] or "")


def _values(tag: str) -> tuple[tuple[float, ...], bool]:
    if ".." in tag:
        low, high = tag.split("..")
        return (float(low), float(high)), True
    return tuple(float(v) for v in tag.split(",")), False


def parse_sheet_name(name: str) -> SheetName | None:
    """Read back ``<stem>_sheet_tau<..>_off<..>[.png]``; None otherwise."""
    m = _SHEET_NAME.fullmatch(name)
    if m is None:
        return None
    taus, taus_span = _values(m["taus"])
    offsets, offsets_span = _values(m["offsets"])
    return SheetName(m["stem"], taus, offsets, taus_span, offsets_span, m["suffix"] or "")


def is_sample_output(path: str | os.PathLike) -> bool:
    """Whether a file found in a folder is one ``lle sample`` wrote (today's names or older ones)."""
    return OWN_OUTPUT_STEM.search(Path(path).stem) is not None


# --------------------------------------------------------------------------------------------
# lle score-ood --heatmap

_HEATMAP_TAIL = "_ood.png"


def heatmap_name(input: str | os.PathLike, taken: Collection[str] = ()) -> str:
    """``<stem>_ood.png`` for ``input``'s heat map; ``<stem>_<k>_ood.png`` (k = 2, 3, ...) when an
    earlier input of the same run already took that name (``taken``: the names written so far)."""
    stem = input_stem(input)
    name, k = f"{stem}{_HEATMAP_TAIL}", 1
    while name in taken:
        k += 1
        name = f"{stem}_{k}{_HEATMAP_TAIL}"
    return name


# --------------------------------------------------------------------------------------------
# run records

RECORD_NAME = "lle-run.json"
RECORD_GLOB = "lle-run.*.json"  # every other record file of a folder: shards' and foreign-name fallbacks
SHARD_RECORD = re.compile(r"^lle-run\.(\d+)-of-(\d+)\.json$")
SHARD_RECORD_GLOB = "lle-run.*-of-*.json"


def record_name(label: str | None = None) -> str:
    """``lle-run.json``, or ``lle-run.<label>.json`` for a record that must not share that file."""
    return RECORD_NAME if label is None else f"lle-run.{label}.json"


def shard_record_name(index: int, count: int) -> str:
    """``lle-run.K-of-N.json``: shard K of N's record, read with the others by ``RECORD_GLOB``."""
    return record_name(f"{index}-of-{count}")


def parse_shard_record_name(name: str) -> tuple[int, int] | None:
    """``(K, N)`` of ``lle-run.K-of-N.json``; None for any other name."""
    m = SHARD_RECORD.match(name)
    return (int(m[1]), int(m[2])) if m else None
