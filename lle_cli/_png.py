"""A small PNG codec for the cases Pillow gets wrong: 16-bit colour PNG, read and written at full
precision (Pillow reduces 16-bit RGB/RGBA to 8 bits). ``lle_cli.imageio`` also writes 8-bit PNG with
it, at a low zlib level: one vectorised filter pass and a single ``zlib.compress`` call (which runs
without the GIL, so a batch's encoding overlaps the next image's compute).

Only non-palette images at 8 or 16 bits per sample are handled (colour types 0, 2, 4, 6), which is
all ``lle_cli.imageio`` needs; Pillow covers the rest. Errors are ``PngError`` with a short reason;
the caller turns them into a message that names the file.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = [
    "PNG_SIGNATURE",
    "PngError",
    "PngUnsupportedError",
    "PngHeader",
    "DecodedPng",
    "read_header",
    "decode",
    "encode",
    "unfilter",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Samples per pixel by colour type (palette images are left to Pillow).
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
_COLOR_TYPE = {v: k for k, v in _CHANNELS.items()}

# Adam7 passes: (x0, y0, dx, dy).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))

# The wavefront works on a skewed copy of the image; bands keep that copy below this many bytes.
_BAND_BYTES = 1 << 26

_IDAT_CHUNK = 1 << 23


class PngError(Exception):
    """The data is not a well-formed PNG (bad signature, CRC, zlib stream, truncation)."""


class PngUnsupportedError(PngError):
    """A well-formed PNG this codec does not handle (palette, sub-byte depths)."""


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    color_type: int
    interlace: int

    @property
    def channels(self) -> int:
        return _CHANNELS.get(self.color_type, 1)


@dataclass(eq=False)
class DecodedPng:
    header: PngHeader
    pixels: np.ndarray  # (H, W, C), uint8 or native-endian uint16
    icc_profile: bytes | None
    exif: bytes | None  # raw TIFF-structured EXIF, without the "Exif\0\0" prefix
    transparent: tuple[int, ...] | None  # tRNS key colour for colour types 0 and 2


def _parse_ihdr(body: bytes) -> PngHeader:
    if len(body) != 13:
        raise PngError("IHDR chunk has the wrong length")
    width, height, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", body)
    if width == 0 or height == 0:
        raise PngError("image has zero width or height")
    if comp != 0 or filt != 0 or interlace not in (0, 1):
        raise PngError("IHDR has an unknown compression, filter or interlace method")
    return PngHeader(width, height, depth, ctype, interlace)


def _chunks(data: bytes):
    """Yield (type, body) for each chunk, checking lengths and CRCs."""
    if not data.startswith(PNG_SIGNATURE):
        raise PngError("missing PNG signature")
    pos = len(PNG_SIGNATURE)
    end = len(data)
    while True:
        if pos + 8 > end:
            raise PngError("file ends before the IEND chunk")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if length > 0x7FFFFFFF:
            raise PngError("chunk length out of range")
        body_end = pos + 8 + length
        if body_end + 4 > end:
            raise PngError(f"file ends inside the {ctype.decode('latin-1')} chunk")
        (crc,) = struct.unpack(">I", data[body_end : body_end + 4])
        if zlib.crc32(data[pos + 4 : body_end]) != crc:
            raise PngError(f"CRC mismatch in the {ctype.decode('latin-1')} chunk")
        yield ctype, data[pos + 8 : body_end]
        if ctype == b"IEND":
            return
        pos = body_end + 4


def read_header(data: bytes) -> PngHeader:
    """Parse only the IHDR chunk (cheap; used to pick a decoder)."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise PngError("missing PNG signature or IHDR chunk")
    (length,) = struct.unpack(">I", data[8:12])
    if length != 13:
        raise PngError("IHDR chunk has the wrong length")
    return _parse_ihdr(data[16:29])


def _pass_sizes(header: PngHeader) -> list[tuple[int, int, int, int, int, int]]:
    """(x0, y0, dx, dy, width, height) of each sub-image; one full-size pass when not interlaced."""
    w, h = header.width, header.height
    if header.interlace == 0:
        return [(0, 0, 1, 1, w, h)]
    out = []
    for x0, y0, dx, dy in _ADAM7:
        pw = (w - x0 + dx - 1) // dx if w > x0 else 0
        ph = (h - y0 + dy - 1) // dy if h > y0 else 0
        out.append((x0, y0, dx, dy, pw, ph))
    return out


def decode(data: bytes) -> DecodedPng:
    """Decode an 8- or 16-bit grey/grey+alpha/RGB/RGBA PNG (interlaced or not) exactly."""
    header: PngHeader | None = None
    idat: list[bytes] = []
    icc: bytes | None = None
    exif: bytes | None = None
    trns: bytes | None = None
    for ctype, body in _chunks(data):
        if header is None:
            if ctype != b"IHDR":
                raise PngError("the first chunk is not IHDR")
            header = _parse_ihdr(body)
            if header.color_type not in _CHANNELS or header.bit_depth not in (8, 16):
                raise PngUnsupportedError(
                    f"colour type {header.color_type} at {header.bit_depth} bits is not handled here"
                )
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"iCCP":
            icc = _read_iccp(body)
        elif ctype == b"eXIf":
            exif = body or None
        elif ctype == b"tRNS":
            trns = body
        elif ctype[0] & 0x20 == 0 and ctype not in (b"IEND", b"PLTE"):
            raise PngUnsupportedError(f"unknown critical chunk {ctype.decode('latin-1')}")
    if header is None:
        raise PngError("no IHDR chunk")
    if not idat:
        raise PngError("no image data (IDAT)")

    channels = header.channels
    nbytes = header.bit_depth // 8
    bpp = channels * nbytes
    passes = _pass_sizes(header)
    expected = sum(ph * (1 + pw * bpp) for *_, pw, ph in passes if pw and ph)
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(b"".join(idat), expected)
    except zlib.error as exc:
        raise PngError(f"image data does not decompress ({exc})") from None
    if len(raw) < expected:
        raise PngError("image data is shorter than the header says")

    buf = np.frombuffer(raw, dtype=np.uint8)
    out = np.empty((header.height, header.width * bpp), dtype=np.uint8)
    pos = 0
    for x0, y0, dx, dy, pw, ph in passes:
        if pw == 0 or ph == 0:
            continue
        size = ph * (1 + pw * bpp)
        rows = buf[pos : pos + size].reshape(ph, 1 + pw * bpp)
        pos += size
        if rows[:, 0].max(initial=0) > 4:
            raise PngError("unknown row filter type")
        sub = unfilter(rows, bpp)
        if dx == 1 and dy == 1:
            out[:] = sub
        else:
            full = out.reshape(header.height, header.width, bpp)
            full[y0::dy, x0::dx] = sub.reshape(ph, pw, bpp)

    if nbytes == 2:
        pixels = out.view(">u2").astype(np.uint16).reshape(header.height, header.width, channels)
    else:
        pixels = out.reshape(header.height, header.width, channels)

    transparent = None
    if trns is not None and header.color_type in (0, 2) and len(trns) == 2 * channels:
        mask = (1 << header.bit_depth) - 1
        transparent = tuple(v & mask for v in struct.unpack(f">{channels}H", trns))
    return DecodedPng(header, pixels, icc, exif, transparent)


def _read_iccp(body: bytes) -> bytes | None:
    """Return the decompressed profile; a damaged profile is dropped, as libpng does."""
    sep = body.find(b"\x00")
    if sep < 1 or sep + 2 > len(body) or body[sep + 1] != 0:
        return None
    try:
        return zlib.decompress(body[sep + 2 :]) or None
    except zlib.error:
        return None


def unfilter(rows: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG row filters: ``rows`` is (h, 1 + stride) uint8 with the filter byte first.

    None/Sub/Up rows are cheap per row. Average and Paeth depend on the left neighbour, so when
    they occur we sweep anti-diagonals instead: pixel (y, x) needs only (y, x-1), (y-1, x) and
    (y-1, x-1), so every pixel with the same x + y can be computed at once.
    """
    h = rows.shape[0]
    stride = rows.shape[1] - 1
    types = rows[:, 0]
    data = rows[:, 1:]
    out = np.empty((h, stride), dtype=np.uint8)
    w = stride // bpp
    band = max(64, min(h, _BAND_BYTES // max(1, (w + h) * bpp)))
    prev = np.zeros(stride, dtype=np.uint8)
    for start in range(0, h, band):
        stop = min(h, start + band)
        if (types[start:stop] >= 3).any():
            out[start:stop] = _unfilter_wavefront(data[start:stop], types[start:stop], prev, bpp)
        else:
            _unfilter_simple(data[start:stop], types[start:stop], prev, out[start:stop], bpp)
        prev = out[stop - 1]
    return out


def _unfilter_simple(data: np.ndarray, types: np.ndarray, prev: np.ndarray, out: np.ndarray, bpp: int) -> None:
    """Rows filtered with None, Sub or Up only (uint8 arithmetic wraps mod 256, as PNG wants)."""
    for y in range(data.shape[0]):
        t = types[y]
        row = data[y]
        if t == 0:
            out[y] = row
        elif t == 1:
            out[y] = np.cumsum(row.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        else:
            np.add(row, prev, out=out[y])
        prev = out[y]


def _unfilter_wavefront(data: np.ndarray, types: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """Any mix of filters, one anti-diagonal at a time over a skewed layout.

    ``skew[d, y]`` holds pixel (y, d - y), so a diagonal is a contiguous slice. In the padded
    result ``res[d + 2, y + 1]`` = pixel (y, d - y); its left, upper and upper-left neighbours are
    ``res[d + 1, y + 1]``, ``res[d + 1, y]`` and ``res[d, y]``. Slots outside the image stay zero,
    which is exactly PNG's rule for missing neighbours; ``res[x + 1, 0]`` holds the previous row.
    """
    h, stride = data.shape
    w = stride // bpp
    ndiag = w + h - 1

    # Skew with a strided view: element (y, x) of the view is element (y, y + x) of `sheared`.
    sheared = np.zeros((h, ndiag, bpp), dtype=np.uint8)
    s0, s1, s2 = sheared.strides
    as_strided(sheared, shape=(h, w, bpp), strides=(s0 + s1, s1, s2))[...] = data.reshape(h, w, bpp)
    skew = np.ascontiguousarray(sheared.transpose(1, 0, 2))
    del sheared

    res = np.zeros((ndiag + 2, h + 1, bpp), dtype=np.uint8)
    res[1 : w + 1, 0] = prev.reshape(w, bpp)

    ftype = types.astype(np.int16)[:, None]
    uniform = int(types[0]) if (types == types[0]).all() else -1
    for d in range(ndiag):
        y0 = max(0, d - w + 1)
        y1 = min(h, d + 1)
        f = skew[d, y0:y1]
        a = res[d + 1, y0 + 1 : y1 + 1].astype(np.int16)
        b = res[d + 1, y0:y1].astype(np.int16)
        if uniform == 4:
            pred = _paeth(a, b, res[d, y0:y1].astype(np.int16))
        elif uniform == 3:
            pred = (a + b) >> 1
        else:
            pred = _mixed(ftype[y0:y1], a, b, res[d, y0:y1].astype(np.int16))
        np.add(f, pred, out=res[d + 2, y0 + 1 : y1 + 1], casting="unsafe")

    # Un-skew: pixel (y, x) sits at res[y + x + 2, y + 1].
    body = res[2:, 1:]
    t0, t1, t2 = body.strides
    return np.ascontiguousarray(as_strided(body, shape=(h, w, bpp), strides=(t0 + t1, t0, t2))).reshape(h, stride)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    pa = np.abs(b - c)
    pb = np.abs(a - c)
    pc = np.abs(a + b - 2 * c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _mixed(t: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Predictor for rows with different filter types (``t`` is (n, 1))."""
    pred = np.where(t == 1, a, 0)
    pred = np.where(t == 2, b, pred)
    pred = np.where(t == 3, (a + b) >> 1, pred)
    return np.where(t == 4, _paeth(a, b, c), pred)


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def encode(
    pixels: np.ndarray,
    *,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    level: int = 6,
) -> bytes:
    """Encode (H, W, C) uint8 or uint16 pixels, C in 1..4, as a non-interlaced PNG.

    Every row uses the Up filter (row 0 has nothing above, so Up equals None there): it is one
    vectorised subtraction and compresses photos about as well as adaptive filtering.
    """
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    h, w, channels = pixels.shape
    if pixels.dtype == np.uint16:
        depth = 16
        raw = pixels.astype(">u2").view(np.uint8).reshape(h, w * channels * 2)
    elif pixels.dtype == np.uint8:
        depth = 8
        raw = np.ascontiguousarray(pixels).reshape(h, w * channels)
    else:
        raise TypeError(f"PNG pixels must be uint8 or uint16, not {pixels.dtype}")
    if channels not in _COLOR_TYPE or h == 0 or w == 0:
        raise ValueError(f"cannot store an image of shape {pixels.shape} as PNG")

    filtered = np.empty((h, raw.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2
    filtered[0, 1:] = raw[0]
    np.subtract(raw[1:], raw[:-1], out=filtered[1:, 1:])

    parts = [
        PNG_SIGNATURE,
        _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, _COLOR_TYPE[channels], 0, 0, 0)),
    ]
    if icc_profile:
        parts.append(_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile, 9)))
    if exif:
        if exif.startswith(b"Exif\x00\x00"):
            exif = exif[6:]
        parts.append(_chunk(b"eXIf", exif))
    stream = zlib.compress(filtered.tobytes(), level)
    for i in range(0, len(stream), _IDAT_CHUNK):
        parts.append(_chunk(b"IDAT", stream[i : i + _IDAT_CHUNK]))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
