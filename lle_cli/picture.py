"""A decoded photo (``Picture``) and the pixel and EXIF primitives every decoder shares.

``lle_cli.imageio`` (Pillow, tifffile, pillow-heif) and ``lle_cli.raw`` (LibRaw) both turn their
samples into a ``Picture`` through ``assemble`` (unit range, EXIF orientation, ICC check) and word
their failures through ``corrupt_error`` and ``check_pixels``. They live here, below both readers,
so that imports run one way: ``imageio`` -> ``raw`` -> ``picture``.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import InputError

__all__ = [
    "Picture",
    "assemble",
    "to_unit",
    "orient",
    "icc_space",
    "corrupt_error",
    "too_large_error",
    "check_pixels",
    "reset_orientation",
    "descriptive_exif",
    "tiff_exif",
    "ORIENTATION",
]

_CORRUPT_FIX = "re-export or re-download it"
ORIENTATION = 0x0112  # the EXIF Orientation tag
# EXIF tags that describe the photo rather than the file layout; all a TIFF's IFD0 may pass on.
_DESCRIPTIVE_TAGS = (0x010E, 0x010F, 0x0110, 0x0112, 0x011A, 0x011B, 0x0128, 0x0131, 0x0132, 0x013B, 0x8298)
_SUB_IFDS = (0x8769, 0x8825)  # Exif, GPS


@dataclass(eq=False)
class Picture:
    """A decoded photo plus everything needed to write it back faithfully."""

    rgb: np.ndarray  # float32 (H, W, 3) in [0, 1], C-contiguous
    alpha: np.ndarray | None  # float32 (H, W) in [0, 1]; never touched by enhancement
    bit_depth: int  # 8 or 16: precision of the source (16 for anything above 8 bits)
    grayscale: bool  # the source had one colour channel
    icc_profile: bytes | None  # RGB or grey profile, matching ``grayscale``
    exif: bytes | None  # "Exif\0\0"-prefixed EXIF with Orientation reset to 1
    format: str  # "PNG", "JPEG", "TIFF", "WEBP", "BMP", "HEIC", "AVIF" or "RAW"
    source: str  # path, or "<stdin>"
    sample_bits: int | None = None  # bits the source stored when not 8 or 16 (10/12-bit HEIC, RAW)

    def with_rgb(self, rgb: np.ndarray) -> Picture:
        """The same picture with new pixels: what the enhancer returns keeps all metadata."""
        return dataclasses.replace(self, rgb=np.ascontiguousarray(rgb, dtype=np.float32))


# --------------------------------------------------------------------------------------------
# Errors shared by the decoders


def corrupt_error(label: str, exc: BaseException | str) -> InputError:
    """The one message for damaged data, whichever decoder found it (first line of its reason)."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InputError(f"{label}: the file is truncated or corrupt ({reason}); {_CORRUPT_FIX}")


def too_large_error(label: str, width: int, height: int) -> InputError:
    """The message for a picture over Pillow's decompression-bomb limit."""
    return InputError(
        f"{label}: {width}x{height} pixels is over the decompression-bomb limit; "
        "if the image is genuine, downscale it first"
    )


def check_pixels(label: str, width: int, height: int) -> None:
    """Pillow's decompression-bomb rule, for the decoders that bypass Pillow."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > 2 * limit:
        raise too_large_error(label, width, height)


# --------------------------------------------------------------------------------------------
# Pixels


def to_unit(arr: np.ndarray) -> np.ndarray:
    """Any integer or float sample array as float32 in [0, 1]."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype.kind in "ui":
        info = np.iinfo(arr.dtype)
        out = arr.astype(np.float32)
        out /= np.float32(info.max)  # in place: a 24 MP image is 288 MB per float copy
        return np.clip(out, 0.0, 1.0, out=out) if info.min < 0 else out
    out = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0)


def assemble(
    arr: np.ndarray,
    alpha: np.ndarray | None,
    bit_depth: int,
    grayscale: bool,
    icc: bytes | None,
    exif: bytes | None,
    orientation: int,
    fmt: str,
    label: str,
    *,
    sample_bits: int | None = None,
) -> Picture:
    """Decoded samples (any dtype, (H, W, C)) to a ``Picture``: unit range, upright, RGB.

    Every decoder ends here so orientation, grey expansion and the ICC colour-space check are the
    same for all formats; an ICC profile for another colour space than the pixels is dropped.
    """
    values = to_unit(arr)
    if alpha is not None:
        alpha = to_unit(alpha)
    values = orient(values, orientation)
    if alpha is not None:
        alpha = np.ascontiguousarray(orient(alpha, orientation))
    if grayscale:
        rgb = np.repeat(values[:, :, :1], 3, axis=2)
    else:
        rgb = np.ascontiguousarray(values[:, :, :3])
    wanted = b"GRAY" if grayscale else b"RGB "
    if icc is not None and icc_space(icc) != wanted:
        icc = None
    return Picture(rgb, alpha, 16 if bit_depth > 8 else 8, grayscale, icc, exif, fmt, label, sample_bits)


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) so the pixels display upright, as Pillow's exif_transpose."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def icc_space(icc: bytes) -> bytes | None:
    """The profile's data colour space signature ("RGB ", "GRAY", "CMYK", ...)."""
    return icc[16:20] if len(icc) >= 128 else None


# --------------------------------------------------------------------------------------------
# EXIF


def reset_orientation(raw: bytes | None) -> tuple[bytes | None, int]:
    """Return ("Exif\\0\\0"-prefixed EXIF with Orientation = 1, the original orientation).

    The EXIF is patched in place so everything else (maker notes included) stays byte-identical;
    Pillow's re-serialisation is only the fallback for odd layouts.
    """
    if not raw:
        return None, 1
    body = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    try:
        patched, orientation = _patch_exif(body)
    except (struct.error, ValueError):
        return _reset_orientation_pillow(body)
    return b"Exif\x00\x00" + patched, orientation if 1 <= orientation <= 8 else 1


def _patch_exif(body: bytes) -> tuple[bytes, int]:
    """Set Orientation to 1 and unlink IFD1, whose thumbnail shows the un-enhanced photo."""
    order = {b"II": "<", b"MM": ">"}.get(body[:2])
    if order is None:
        raise ValueError("not TIFF-structured EXIF")
    magic, ifd = struct.unpack(order + "HI", body[2:8])
    if magic != 42:
        raise ValueError("bad EXIF magic")
    (count,) = struct.unpack(order + "H", body[ifd : ifd + 2])
    fixed = bytearray(body)
    orientation = 1
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind, n = struct.unpack(order + "HHI", body[entry : entry + 8])
        if tag == ORIENTATION:
            if kind != 3 or n != 1:
                raise ValueError("unusual Orientation entry")
            (orientation,) = struct.unpack(order + "H", body[entry + 8 : entry + 10])
            fixed[entry + 8 : entry + 10] = struct.pack(order + "H", 1)
    link = ifd + 2 + 12 * count
    struct.unpack(order + "I", body[link : link + 4])  # raises if IFD0 is cut short
    fixed[link : link + 4] = bytes(4)
    return bytes(fixed), orientation


def _reset_orientation_pillow(body: bytes) -> tuple[bytes | None, int]:
    try:
        exif = Image.Exif()
        exif.load(body)
        orientation = int(exif.get(ORIENTATION, 1))
        if ORIENTATION in exif:
            exif[ORIENTATION] = 1
        return exif.tobytes(), orientation if 1 <= orientation <= 8 else 1
    except Exception:  # noqa: BLE001 - unparseable EXIF is dropped rather than fail the photo
        return None, 1


def descriptive_exif(exif: Image.Exif) -> Image.Exif | None:
    """Keep only tags about the photo (camera, dates, exposure, GPS), none about file layout.

    A TIFF's IFD0 doubles as its EXIF; copying strip offsets or sizes into another file is wrong.
    """
    kept = Image.Exif()
    for tag in _DESCRIPTIVE_TAGS:
        if tag in exif:
            kept[tag] = exif[tag]
    for tag in _SUB_IFDS:
        sub = exif.get_ifd(tag)
        if sub:
            kept[tag] = dict(sub)
    if ORIENTATION in kept:
        kept[ORIENTATION] = 1
    return kept if len(kept) else None


def tiff_exif(im: Image.Image) -> tuple[bytes | None, int]:
    """A TIFF's descriptive EXIF (``descriptive_exif``) as bytes, and its orientation (1-8)."""
    try:
        exif = im.getexif()
        orientation = int(exif.get(ORIENTATION, 1))
        kept = descriptive_exif(exif)
        return (kept.tobytes() if kept is not None else None), orientation if 1 <= orientation <= 8 else 1
    except Exception:  # noqa: BLE001 - metadata is optional
        return None, 1
