"""Camera RAW in (DNG, CR2/CR3, NEF, ARW, RAF, ORF, RW2, ...): LibRaw demosaics, lle enhances.

LibRaw (through rawpy, the ``lle-cli[raw]`` extra) turns the sensor's mosaic into 16-bit RGB with
the camera's own white balance, its colour matrix into sRGB primaries, and the EXIF orientation
applied. Two renderings:

* ``srgb`` (the default): the sRGB tone curve, exposure as shot (no auto-brightening, so a dark
  frame stays dark and brightening is left to the model, which was trained on sRGB photos).
* ``linear``: the same pixels without the curve (scene-linear light, for further processing),
  tagged with a linear-sRGB ICC profile so that colour-managed viewers still show them right.

Nothing writes RAW: an enhanced RAW is written as 16-bit TIFF unless ``--format`` says otherwise.
The camera, lens, date, exposure and GPS tags of TIFF-based RAWs (DNG, CR2, NEF, ARW, PEF, SRW) are
carried over; the maker notes are not (their offsets point into the RAW file).
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

from .errors import InputError
from .extras import RAW_EXTRA
from .picture import Picture, assemble, check_pixels, corrupt_error, descriptive_exif

__all__ = ["read_raw", "linear_srgb_profile"]

# sRGB's curve as LibRaw's (power, toe slope) pair; (1, 1) leaves the light linear
_SRGB_GAMMA = (2.4, 12.92)
_LINEAR_GAMMA = (1.0, 1.0)
_MAKER_NOTE = 0x927C
_EXIF_IFD = 0x8769


def read_raw(data: bytes, label: str, *, linear: bool = False) -> Picture:
    """Demosaic a camera RAW into a 16-bit ``Picture`` (see the module docstring for the rendering)."""
    rawpy = RAW_EXTRA.load(label)
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            sizes = raw.sizes
            check_pixels(label, sizes.width, sizes.height)
            white = int(np.max(raw.camera_white_level_per_channel or [raw.white_level]))
            rgb = raw.postprocess(
                use_camera_wb=True,
                no_auto_bright=True,
                output_bps=16,
                gamma=_LINEAR_GAMMA if linear else _SRGB_GAMMA,
                output_color=rawpy.ColorSpace.sRGB,
            )
    except InputError:
        raise
    except rawpy.LibRawError as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, rawpy.LibRawFileUnsupportedError):
            raise InputError(f"{label}: LibRaw cannot read this RAW ({reason}); convert it to DNG first") from None
        raise corrupt_error(label, reason) from None
    except (OSError, ValueError, MemoryError) as exc:
        raise corrupt_error(label, exc) from None
    bits = max(white, 1).bit_length()
    return assemble(
        rgb, None, 16, False, linear_srgb_profile() if linear else None, _raw_exif(data), 1, "RAW", label,
        sample_bits=bits if 8 < bits < 16 else None,
    )


def _raw_exif(data: bytes) -> bytes | None:
    """The descriptive EXIF of a TIFF-based RAW (its IFD0 and Exif/GPS sub-IFDs), Orientation 1.

    LibRaw has already turned the pixels upright. CR3 and RAF are not TIFF files: no EXIF from them.
    """
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    try:
        exif = Image.Exif()
        exif.load(data)
        kept = descriptive_exif(exif)
        if kept is None:
            return None
        sub = kept.get(_EXIF_IFD)
        if isinstance(sub, dict):  # descriptive_exif holds the sub-IFD as a plain dict
            kept[_EXIF_IFD] = {tag: value for tag, value in sub.items() if tag != _MAKER_NOTE}
        return kept.tobytes()
    except Exception:  # noqa: BLE001 - metadata is optional; the pixels are already decoded
        return None


# -- a linear-light sRGB ICC profile (ICC v2 matrix/TRC), so linear output is not shown too dark --

# sRGB's primaries adapted to the D50 connection space (Bradford), as in the IEC 61966-2-1 profile
_D50 = (0.9642, 1.0, 0.8249)
_COLORANTS = {
    b"rXYZ": (0.4360747, 0.2225045, 0.0139322),
    b"gXYZ": (0.3850649, 0.7168786, 0.0971045),
    b"bXYZ": (0.1430804, 0.0606169, 0.7141733),
}


def _s15f16(values: tuple[float, ...]) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)


def _xyz(values: tuple[float, ...]) -> bytes:
    return b"XYZ \0\0\0\0" + _s15f16(values)


def linear_srgb_profile() -> bytes:
    """ICC bytes describing sRGB primaries with a linear (gamma 1.0) response."""
    text = b"Linear sRGB (lle-cli)"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text) + 1) + text + b"\0" + bytes(4 + 4 + 2 + 1 + 67)
    tags = [
        (b"desc", desc),
        (b"cprt", b"text\0\0\0\0No copyright, use freely\0"),
        (b"wtpt", _xyz(_D50)),
        *((sig, _xyz(v)) for sig, v in _COLORANTS.items()),
        (b"rTRC", b"curv\0\0\0\0" + struct.pack(">I", 0)),  # no entries: the identity curve
    ]
    table_end = 128 + 4 + 12 * (len(tags) + 2)  # gTRC and bTRC share rTRC's data
    entries, blobs, offset = [], b"", table_end
    for sig, blob in tags:
        entries.append((sig, offset, len(blob)))
        if sig == b"rTRC":
            entries += [(b"gTRC", offset, len(blob)), (b"bTRC", offset, len(blob))]
        padded = blob + bytes(-len(blob) % 4)
        blobs += padded
        offset += len(padded)
    table = struct.pack(">I", len(entries)) + b"".join(struct.pack(">4sII", *e) for e in entries)
    size = 128 + len(table) + len(blobs)
    header = (
        struct.pack(">I", size) + b"\0\0\0\0" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + bytes(4 + 4 + 4 + 4 + 8 + 4)
        + _s15f16(_D50) + bytes(4 + 16 + 28)
    )
    return header + table + blobs
