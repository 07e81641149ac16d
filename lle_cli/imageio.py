"""Reading and writing photos without losing what a photographer cares about.

Pixels come in as float32 RGB in [0, 1] at the source's full precision (16-bit PNG and TIFF
included, which Pillow alone would cut to 8 bits; 10/12-bit HEIC too), with EXIF orientation applied,
alpha kept aside, and the ICC profile and EXIF carried to the output. Every failure is one
``InputError`` line that names the file and says what to do.

HEIC (pillow-heif), AVIF (Pillow's own plugin) and camera RAW (rawpy, ``lle_cli.raw``) need optional
packages; without them a ``MissingExtraError`` names the pip extra to install.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError, features

from . import _png
from .atomic import write_bytes_atomic
from .errors import InputError, NonFiniteError, OutputError, UsageError

# The suffix table, the optional-package mechanism and the Picture primitives live in lower modules
# (``formats``, ``extras``, ``picture``) that ``raw`` shares with this one; they are re-exported here
# because ``lle_cli.imageio`` is where callers have always found them.
from .extras import HEIF_EXTRA, RAW_EXTRA, MissingExtraError, require_extra
from .formats import (
    FORMATS,
    IMAGE_SUFFIXES,
    RAW_SUFFIXES,
    default_output_format,
    format_from_suffix,
    is_image_path,
    is_raw_path,
    normalise_format,
)
from .picture import (
    Picture,
    assemble,
    check_pixels,
    corrupt_error,
    descriptive_exif,
    icc_space,
    reset_orientation,
    tiff_exif,
    to_unit,
)

__all__ = [
    "Picture",
    "read_image",
    "read_rgb8",
    "encode_image",
    "write_bytes_atomic",
    "format_from_suffix",
    "default_output_format",
    "is_image_path",
    "is_raw_path",
    "normalise_format",
    "check_format_available",
    "check_input_available",
    "require_extra",
    "MissingExtraError",
    "IMAGE_SUFFIXES",
    "RAW_SUFFIXES",
    "FORMATS",
    "RAW_MODES",
]

RAW_MODES: tuple[str, ...] = ("srgb", "linear")
# Pillow >= 11.3 carries its own AVIF plugin (libavif with dav1d and aom); older or custom builds may not.
_PILLOW_AVIF = features.check("avif") is True
# The JPEG opener returns "MPO" for camera JPEGs that carry a second (preview) frame.
_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP") + (("AVIF",) if _PILLOW_AVIF else ())
_HIGH_DEPTH = ("PNG", "TIFF")
_WHAT_WE_READ = "JPEG/PNG/TIFF/WebP/BMP/HEIC/AVIF or camera RAW"
# ISO-BMFF major/compatible brands (the ``ftyp`` box) of HEIF stills, AVIF and Canon's CR3.
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_CR3_BRAND = b"crx "
# 4:4:4 chroma at high quality (as JPEG): halving the colour resolution is what shows first.
_FULL_CHROMA_QUALITY = 90
_JPEG_MAX_EXIF = 65533  # one APP1 segment
_TIFF_STDLIB_COMPRESSION = {1, 8, 32946}  # none, Adobe deflate, deflate: readable without imagecodecs
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# 8-bit PNG: Up filter + zlib level 2 is 5-7x faster to write than Pillow's level 6 (which took as long
# as Zero-DCE's network on a 600x400 photo) for files about 15% larger (bench/vs_official.py).
_PNG8_LEVEL = 2

# Errors Pillow's decoders raise for damaged data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error, RuntimeError)


# --------------------------------------------------------------------------------------------
# Optional packages


def check_format_available(fmt: str, label: str | None = None) -> None:
    """Raise ``MissingExtraError`` now if writing ``fmt`` would need a package that is missing."""
    if fmt == "HEIC":
        HEIF_EXTRA.load(label)
    elif fmt == "AVIF":
        _require_pillow_avif(label)


def check_input_available(path: str | os.PathLike) -> None:
    """Raise ``MissingExtraError`` now if reading ``path`` (judged by its suffix) needs a missing package,
    so a batch stops before any work rather than failing file after file."""
    if is_raw_path(path):
        RAW_EXTRA.load(os.fspath(path))
    else:
        check_format_available(format_from_suffix(path) or "", os.fspath(path))


def _require_pillow_avif(label: str | None) -> None:
    if not _PILLOW_AVIF:
        where = f"{label}: " if label else ""
        raise MissingExtraError(
            f"{where}AVIF needs Pillow 11.3 or newer with its AVIF plugin; install it with: "
            'pip install "lle-cli[avif]"'
        )


# --------------------------------------------------------------------------------------------
# Reading


def read_image(source: str | os.PathLike | bytes, *, name: str | None = None, raw: str = "srgb") -> Picture:
    """Decode a path or raw bytes (stdin) into a ``Picture``; raise ``InputError`` on any failure.

    ``name`` replaces the label used in messages and in ``Picture.source``. ``raw`` says how a camera
    RAW is rendered (``lle_cli.raw``): "srgb" (camera white balance, sRGB primaries and curve, the
    exposure as shot) or "linear" (the same without the curve, tagged with a linear profile).
    A HEIC, AVIF or RAW without its optional package raises ``MissingExtraError``.
    """
    if raw not in RAW_MODES:
        raise UsageError(f"raw rendering {raw!r}: use one of {', '.join(RAW_MODES)}")
    suffix = ""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<stdin>"
        data = bytes(source)
    else:
        label = name or os.fspath(source)
        suffix = Path(source).suffix.lower()
        if suffix in RAW_SUFFIXES:  # before reading tens of MB only to be told rawpy is missing
            RAW_EXTRA.load(label)
        data = _read_file(os.fspath(source), label)
    if not data:
        raise InputError(f"{label}: the file is empty (0 bytes); check it was written completely")
    return _decode(data, label, suffix, raw)


def read_rgb8(path: str | os.PathLike) -> np.ndarray:
    """A still image as upright 8-bit RGB (H, W, 3), alpha dropped: for trainers and data tools.

    They list files by ``IMAGE_SUFFIXES`` and read them here, so they take every format
    ``lle enhance`` takes (16-bit, HEIC, RAW, CMYK through its profile) and no other.
    """
    return _quantise(read_image(path).rgb, 8)


def _read_file(path: str, label: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"{label}: no such file; check the path") from None
    except IsADirectoryError:
        raise InputError(f"{label}: is a directory; pass an image file") from None
    except PermissionError:
        raise InputError(f"{label}: permission denied; check the file's read permission") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot be read ({exc.strerror or exc}); check the file") from None


def _ftyp_brands(data: bytes) -> set[bytes]:
    """Major and compatible brands of an ISO-BMFF file (HEIF, AVIF, CR3, MP4), empty if it is not one."""
    if data[4:8] != b"ftyp":
        return set()
    size = int.from_bytes(data[:4], "big")
    box = data[8 : min(max(size, 16), 4096)]
    return {box[0:4]} | {box[i : i + 4] for i in range(8, len(box) - 3, 4)}


def _is_raw_data(data: bytes, suffix: str) -> bool:
    """A camera RAW by suffix, or by its magic where the bytes alone say so (stdin)."""
    if suffix in RAW_SUFFIXES:
        return True
    if data.startswith((b"IIRO", b"MMOR", b"IIRS", b"IIU\x00", b"FUJIFILMCCD-RAW")):  # ORF, RW2, RAF
        return True
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return data[8:10] == b"CR" or _has_dng_version(data)  # CR2, DNG
    return _CR3_BRAND in _ftyp_brands(data)


def _has_dng_version(data: bytes) -> bool:
    """Whether a TIFF's first IFD carries DNGVersion (50706): a DNG's IFD0 is often only its preview."""
    order = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
        for i in range(min(count, 1000)):
            (tag,) = struct.unpack(order + "H", data[ifd + 2 + 12 * i : ifd + 4 + 12 * i])
            if tag == 50706:
                return True
    except struct.error:
        return False
    return False


def _decode(data: bytes, label: str, suffix: str = "", raw: str = "srgb") -> Picture:
    if _is_raw_data(data, suffix):
        from . import raw as _raw

        return _raw.read_raw(data, label, linear=raw == "linear")
    brands = _ftyp_brands(data)
    if brands & _AVIF_BRANDS:
        _require_pillow_avif(label)
        return _decode_pillow(data, label)
    if brands & _HEIF_BRANDS:
        return _read_heif(data, label)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        pic = _read_tiff_high_depth(data, label)
        if pic is not None:
            return pic
    if data.startswith(_png.PNG_SIGNATURE):
        try:
            header = _png.read_header(data)
        except _png.PngError as exc:
            raise corrupt_error(label, exc) from None
        if header.bit_depth == 16:
            check_pixels(label, header.width, header.height)
            return _read_png16(data, label)
    return _decode_pillow(data, label)


def _decode_pillow(data: bytes, label: str) -> Picture:
    try:
        im = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise InputError(f"{label}: {exc}; if the image is genuine, downscale it first") from None
    except UnidentifiedImageError:
        if _looks_like_image(data):
            raise corrupt_error(label, "cannot identify image file") from None
        raise InputError(
            f"{label}: not a readable image (cannot identify image file); "
            f"check the file is a {_WHAT_WE_READ}"
        ) from None
    except _DECODE_ERRORS as exc:
        raise corrupt_error(label, exc) from None
    with im:
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise InputError(f"{label}: {exc}; if the image is genuine, downscale it first") from None
        except _DECODE_ERRORS as exc:
            raise corrupt_error(label, exc) from None
        return _from_pillow(im, label)


def _looks_like_image(data: bytes) -> bool:
    """Magic numbers of the formats we read: such a file is damaged rather than the wrong kind."""
    return (
        data.startswith((_png.PNG_SIGNATURE, b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*"))
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
        or bool(_ftyp_brands(data) & (_HEIF_BRANDS | _AVIF_BRANDS))
    )


def _from_pillow(im: Image.Image, label: str) -> Picture:
    fmt = "JPEG" if im.format == "MPO" else str(im.format)
    icc = im.info.get("icc_profile") or None
    if fmt == "TIFF":
        exif, orientation = tiff_exif(im)
    else:
        exif, orientation = reset_orientation(im.info.get("exif"))

    mode = im.mode
    try:
        if mode == "CMYK":
            im = _cmyk_to_rgb(im, icc)
            icc = None
            mode = "RGB"
        elif mode == "LAB":
            im = ImageCms.profileToProfile(im, ImageCms.createProfile("LAB"), _srgb(), outputMode="RGB")
            icc = None
            mode = "RGB"
        elif mode in ("P", "PA"):
            mode = "RGBA" if _has_transparency(im) else "RGB"
            im = im.convert(mode)
        elif mode == "1":
            im, mode = im.convert("L"), "L"
        elif mode in ("La", "RGBa"):
            mode = mode.replace("a", "A")
            im = im.convert(mode)
        elif mode not in _GRAY_MODES and mode not in ("RGB", "RGBA"):
            mode = "RGBA" if "A" in mode else "RGB"
            im = im.convert(mode)
        arr = np.asarray(im)
        if mode == "I":  # 32-bit container that Pillow fills with 16-bit data
            arr = np.clip(arr, 0, 65535).astype(np.uint16)
    except (ImageCms.PyCMSError, *_DECODE_ERRORS) as exc:
        raise corrupt_error(label, exc) from None

    grayscale = mode in _GRAY_MODES
    if arr.ndim == 2:
        arr = arr[:, :, None]
    alpha = None
    if mode in ("LA", "RGBA"):
        arr, alpha = arr[:, :, :-1], arr[:, :, -1]
    elif mode in ("L", "RGB") and "transparency" in im.info:
        alpha = _key_alpha(arr, im.info["transparency"])
    depth = 8 if arr.dtype == np.uint8 else 16
    return assemble(arr, alpha, depth, grayscale, icc, exif, orientation, fmt, label)


def _has_transparency(im: Image.Image) -> bool:
    if hasattr(im, "has_transparency_data"):  # Pillow >= 10.1
        return bool(im.has_transparency_data)
    return im.mode == "PA" or "transparency" in im.info or getattr(im.palette, "mode", "") == "RGBA"


def _key_alpha(arr: np.ndarray, key: object) -> np.ndarray | None:
    """Alpha from a single transparent colour (PNG tRNS on grey/RGB images)."""
    key_t = (key,) if isinstance(key, int) else key
    if not isinstance(key_t, tuple) or len(key_t) != arr.shape[2]:
        return None
    hit = np.all(arr == np.asarray(key_t, dtype=arr.dtype), axis=2)
    return np.where(hit, 0, np.iinfo(arr.dtype).max).astype(arr.dtype)


def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Through the embedded profile when there is a usable one, else Pillow's naive formula."""
    if icc and icc_space(icc) == b"CMYK":
        try:
            return ImageCms.profileToProfile(
                im,
                ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                _srgb(),
                renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
                outputMode="RGB",
                flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
            )
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile should not cost the user the photo
    return im.convert("RGB")


def _read_png16(data: bytes, label: str) -> Picture:
    try:
        png = _png.decode(data)
    except _png.PngUnsupportedError as exc:
        raise InputError(f"{label}: unsupported PNG ({exc}); re-save it as 8- or 16-bit RGB") from None
    except _png.PngError as exc:
        raise corrupt_error(label, exc) from None
    arr = png.pixels
    channels = arr.shape[2]
    alpha = None
    if channels in (2, 4):
        arr, alpha = arr[:, :, :-1], arr[:, :, -1]
    elif png.transparent is not None:
        alpha = _key_alpha(arr, png.transparent)
    exif, orientation = reset_orientation(png.exif)
    return assemble(arr, alpha, 16, channels <= 2, png.icc_profile, exif, orientation, "PNG", label)


def _read_heif(data: bytes, label: str) -> Picture:
    """HEIC through pillow-heif at the stored precision (10/12 bits are not cut to 8).

    libheif applies the container's rotation and mirroring (``irot``/``imir``), which is what HEIF
    readers must honour; the EXIF Orientation of such a file describes the same turn, so it is
    reset to 1 and not applied a second time.
    """
    pillow_heif = HEIF_EXTRA.load(label)
    try:
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False)
        width, height = heif.size
        check_pixels(label, width, height)
        mode = heif.mode
        arr = np.asarray(heif)  # decodes the primary image
        info = heif.info
    except InputError:
        raise
    except (*_DECODE_ERRORS, TypeError) as exc:
        raise corrupt_error(label, exc) from None
    bits = int(info.get("bit_depth") or 8)
    if arr.dtype == np.uint16:
        # pillow-heif hands 10/12-bit samples over in the top bits of 16 ("RGB;16"); bring them back
        # to their own range so 1023 (or 4095) is white exactly
        bits = min(max(bits, 9), 16)
        if mode.endswith(";16") and bits < 16:
            arr = arr >> (16 - bits)
        values = arr.astype(np.float32)
        values /= np.float32((1 << bits) - 1)
    else:
        values = arr
    if values.ndim == 2:
        values = values[:, :, None]
    grayscale = mode.startswith(("L", "I"))
    alpha = None
    if mode.split(";")[0] in ("RGBA", "RGBa", "LA", "La"):
        values, alpha = values[:, :, :-1], values[:, :, -1]
    exif, _ = reset_orientation(info.get("exif"))
    icc = info.get("icc_profile") if info.get("icc_profile_type", "prof") in ("prof", "rICC") else None
    return assemble(values, alpha, 16 if bits > 8 else 8, grayscale, icc or None, exif, 1, "HEIC", label,
                     sample_bits=bits if bits not in (8, 16) else None)


def _read_tiff_high_depth(data: bytes, label: str) -> Picture | None:
    """Decode TIFFs with more than 8 bits per sample via tifffile; None means "let Pillow do it"."""
    import tifffile

    try:
        tif = tifffile.TiffFile(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - Pillow gets its chance and reports the damage
        return None
    depth = 16
    with tif:
        try:
            page = tif.pages[0]
            depth = page.bitspersample
            if depth <= 8 and page.sampleformat == 1:
                return None
            photometric = int(page.photometric)
            if photometric not in (0, 1, 2):  # palette, CMYK, YCbCr, Lab: Pillow may manage at 8 bits
                return _pillow_or(data, label, f"{depth}-bit TIFF in {page.photometric.name} colour")
            check_pixels(label, page.imagewidth, page.imagelength)
            if page.compression not in _TIFF_STDLIB_COMPRESSION and not _has_imagecodecs():
                raise _needs_imagecodecs(label, f"{depth}-bit TIFF with {page.compression.name} compression")
            arr = page.asarray()
            axes = page.axes
            extras = tuple(int(e) for e in page.extrasamples)
            icc_tag = page.tags.get(34675)
            orient_tag = page.tags.get(274)
        except InputError:
            raise
        except (tifffile.TiffFileError, *_DECODE_ERRORS, KeyError) as exc:
            if "imagecodecs" in str(exc):
                raise _needs_imagecodecs(label, f"{depth}-bit TIFF") from None
            raise corrupt_error(label, exc) from None

    if axes == "YX":
        arr = arr[:, :, None]
    elif axes == "SYX":
        arr = np.moveaxis(arr, 0, -1)
    elif axes != "YXS":
        raise InputError(f"{label}: TIFF layout {axes} is not supported; save a single 2-D image")
    colour = 3 if photometric == 2 else 1
    if arr.shape[2] < colour:
        raise corrupt_error(label, "fewer samples than the colour space needs")

    values = to_unit(arr)
    if photometric == 0:  # min-is-white
        values[:, :, :colour] = 1.0 - values[:, :, :colour]
    alpha = None
    if extras and extras[0] in (1, 2) and arr.shape[2] > colour:
        alpha = values[:, :, colour]
        if extras[0] == 1:  # associated alpha: undo the premultiplication
            safe = np.where(alpha > 0, alpha, 1.0)[:, :, None]
            values[:, :, :colour] = np.clip(values[:, :, :colour] / safe, 0.0, 1.0)
    values = values[:, :, :colour]

    icc = icc_tag.value if icc_tag is not None and isinstance(icc_tag.value, bytes) else None
    orientation = int(orient_tag.value) if orient_tag is not None else 1
    exif = None
    try:
        with Image.open(io.BytesIO(data), formats=["TIFF"]) as im:
            exif, _ = tiff_exif(im)
    except Exception:  # noqa: BLE001 - metadata is optional; pixels are already decoded
        exif = None
    return assemble(values, alpha, 16, colour == 1, icc, exif, orientation, "TIFF", label)


def _needs_imagecodecs(label: str, what: str) -> InputError:
    return InputError(f"{label}: {what}; install imagecodecs to read LZW/JPEG-compressed 16-bit TIFF")


def _pillow_or(data: bytes, label: str, what: str) -> Picture:
    """Let Pillow try a layout tifffile-based reading does not cover; say so if it fails too."""
    try:
        return _decode_pillow(data, label)
    except InputError:
        raise InputError(f"{label}: {what} is not supported; convert it to 16-bit RGB or grayscale") from None


def _has_imagecodecs() -> bool:
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Encoding


def encode_image(pic: Picture, fmt: str, *, quality: int = 95, bit_depth: int | None = None) -> bytes:
    """Encode for writing: PNG/TIFF keep 16 bits when the source had them, metadata is embedded.

    HEIC keeps more than 8 bits as 10 (12 when the source stored 12): ``bit_depth=16`` asks for
    that. JPEG and BMP cannot hold alpha, so it is dropped (not composited): flatten first if you
    want a background. WebP has no grey mode, so grey sources become neutral RGB there. AVIF is
    written at 8 bits (Pillow's plugin).
    """
    fmt = normalise_format(fmt)
    if not 1 <= quality <= 100:
        raise UsageError(f"JPEG/WebP/HEIC/AVIF quality must be between 1 and 100, not {quality}")
    high = ("HEIC",) + _HIGH_DEPTH
    if bit_depth is None:
        depth = (16 if pic.bit_depth > 8 else 8) if fmt in high else 8
    elif bit_depth not in (8, 16):
        raise UsageError(f"bit depth must be 8 or 16, not {bit_depth}")
    elif bit_depth == 16 and fmt not in high:
        raise UsageError(f"{fmt} holds 8 bits per channel here; write PNG, TIFF or HEIC for deeper output")
    else:
        depth = bit_depth
    check_format_available(fmt, pic.source)

    rgb = np.asarray(pic.rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"{pic.source}: expected an (H, W, 3) image, got shape {rgb.shape}")
    if not np.isfinite(rgb).all():
        raise NonFiniteError(f"{pic.source}: the model produced non-finite values; nothing was written")
    alpha = pic.alpha if fmt in ("PNG", "TIFF", "WEBP", "HEIC", "AVIF") else None
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != rgb.shape[:2]:
            raise InputError(f"{pic.source}: alpha is {alpha.shape} but the image is {rgb.shape[:2]}")
        if not np.isfinite(alpha).all():
            raise NonFiniteError(f"{pic.source}: the alpha channel has non-finite values; nothing was written")

    if pic.grayscale:
        gray = (rgb @ _LUMA)[:, :, None]
        colour = np.repeat(gray, 3, axis=2) if fmt == "WEBP" else gray
    else:
        colour = rgb
    planes = colour if alpha is None else np.concatenate([colour, alpha[:, :, None]], axis=2)
    if fmt == "HEIC":
        stored = 8 if depth == 8 else (pic.sample_bits if pic.sample_bits in (10, 12) else 10)
        icc = pic.icc_profile
        if icc is not None and icc_space(icc) != (b"GRAY" if pic.grayscale else b"RGB "):
            icc = None
        return _encode_heif(_quantise(planes, stored), stored, quality, icc, pic.exif)
    pix = _quantise(planes, depth)

    gray_out = pix.shape[2] in (1, 2)
    icc = pic.icc_profile
    if icc is not None and icc_space(icc) != (b"GRAY" if gray_out else b"RGB "):
        icc = None
    exif = pic.exif if fmt != "BMP" else None

    if depth == 16:
        if fmt == "PNG":
            return _png.encode(pix, icc_profile=icc, exif=exif)
        return _encode_tiff16(pix, icc, exif)
    if fmt == "PNG":
        return _png.encode(pix, icc_profile=icc, exif=exif, level=_PNG8_LEVEL)
    return _encode_pillow(pix, fmt, quality, icc, exif)


def _quantise(values: np.ndarray, depth: int) -> np.ndarray:
    """Round (not truncate) to the nearest code value, so read -> write is lossless."""
    top = (1 << depth) - 1
    scaled = np.clip(values, 0.0, 1.0, dtype=np.float32)  # the one float copy; the rest in place
    scaled *= np.float32(top)
    return np.rint(scaled, out=scaled).astype(np.uint16 if depth > 8 else np.uint8)


def _encode_heif(pix: np.ndarray, bits: int, quality: int, icc: bytes | None, exif: bytes | None) -> bytes:
    """HEIC (HEVC in HEIF) through pillow-heif: 8, 10 or 12 bits, 4:4:4 chroma from quality 90 up.

    ``pix`` holds the stored code values (0..2^bits - 1). The EXIF goes in as is: its Orientation is
    already 1, so the pixels are written upright and no rotation box is needed.
    """
    pillow_heif = HEIF_EXTRA.load()
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pix.shape[2]] + (f";{bits}" if bits > 8 else "")
    h, w = pix.shape[:2]
    kwargs: dict[str, object] = {"quality": quality, "chroma": 444 if quality >= _FULL_CHROMA_QUALITY else 420}
    if icc is not None:
        kwargs["icc_profile"] = icc
    if exif is not None:
        kwargs["exif"] = exif
    try:
        heif = pillow_heif.from_bytes(mode=mode, size=(w, h), data=np.ascontiguousarray(pix).tobytes())
        buf = io.BytesIO()
        heif.save(buf, **kwargs)
    except (RuntimeError, ValueError, OSError) as exc:
        raise OutputError(f"HEIC encoding failed ({exc}); try another --format") from None
    return buf.getvalue()


def _encode_pillow(pix: np.ndarray, fmt: str, quality: int, icc: bytes | None, exif: bytes | None) -> bytes:
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pix.shape[2]]
    h, w = pix.shape[:2]
    im = Image.frombytes(mode, (w, h), np.ascontiguousarray(pix).tobytes())
    kwargs: dict[str, object] = {}
    if icc is not None and fmt != "BMP":
        kwargs["icc_profile"] = icc
    if exif is not None:
        if fmt == "TIFF":
            kept = _exif_for_tiff(exif)
            if kept is not None:
                kwargs["exif"] = kept.tobytes()
        elif fmt != "JPEG" or len(exif) <= _JPEG_MAX_EXIF:
            kwargs["exif"] = exif
    if fmt == "JPEG":
        kwargs.update(quality=quality, subsampling=0 if quality >= 90 else 2, optimize=False)
    elif fmt == "WEBP":
        kwargs.update(quality=quality)
    elif fmt == "AVIF":
        kwargs.update(quality=quality, subsampling="4:4:4" if quality >= _FULL_CHROMA_QUALITY else "4:2:0")
    elif fmt == "PNG":
        kwargs.update(compress_level=6, optimize=False)
    # TIFF: Pillow's own writer (uncompressed) is the one that also writes the EXIF sub-IFD.
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _exif_for_tiff(exif: bytes) -> Image.Exif | None:
    try:
        parsed = Image.Exif()
        parsed.load(exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
        return descriptive_exif(parsed)
    except Exception:  # noqa: BLE001 - metadata is optional
        return None


def _encode_tiff16(pix: np.ndarray, icc: bytes | None, exif: bytes | None) -> bytes:
    """tifffile writes 16-bit TIFF (deflate + horizontal predictor, no imagecodecs needed).

    It cannot write an EXIF sub-IFD, so only the camera/date/author tags travel, in IFD0.
    """
    import tifffile

    channels = pix.shape[2]
    extratags = []
    parsed = _exif_for_tiff(exif) if exif else None
    if parsed is not None:
        for tag in (0x010F, 0x0110, 0x0132, 0x013B, 0x8298):
            value = parsed.get(tag)
            if isinstance(value, str) and value.isascii():
                extratags.append((tag, "s", 0, value, True))
    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        pix[:, :, 0] if channels == 1 else pix,
        photometric="rgb" if channels >= 3 else "minisblack",
        planarconfig="contig" if channels > 1 else None,
        extrasamples=("unassalpha",) if channels in (2, 4) else None,
        compression="zlib",
        predictor=True,
        iccprofile=icc,
        metadata=None,
        software="lle-cli",
        extratags=extratags,
    )
    return buf.getvalue()

