"""Tests for lle_cli.imageio and its PNG codec: precision, metadata, orientation and failures."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, ImageOps

from lle_cli import _png, imageio
from lle_cli.errors import InputError, NonFiniteError, OutputError, OutputExistsError, UsageError
from lle_cli.imageio import (
    IMAGE_SUFFIXES,
    Picture,
    encode_image,
    format_from_suffix,
    is_image_path,
    read_image,
    write_bytes_atomic,
)

tifffile = pytest.importorskip("tifffile")

RNG = np.random.default_rng(1234)


# ------------------------------------------------------------------------------------------
# Reference PNG encoder: deliberately naive, one byte at a time, straight from the spec.


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filter_row(row: bytes, prev: bytes, ftype: int, bpp: int) -> bytes:
    out = bytearray(len(row))
    for i, value in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[ftype]
        out[i] = (value - pred) & 0xFF
    return bytes(out)


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _filtered_stream(pix: np.ndarray, filters: list[int]) -> bytes:
    depth = 16 if pix.dtype == np.uint16 else 8
    h, w, c = pix.shape
    bpp = c * depth // 8
    raw = pix.astype(">u2" if depth == 16 else "u1").tobytes()
    stride = w * bpp
    prev = bytes(stride)
    out = b""
    for y in range(h):
        row = raw[y * stride : (y + 1) * stride]
        ftype = filters[y % len(filters)]
        out += bytes([ftype]) + _filter_row(row, prev, ftype, bpp)
        prev = row
    return out


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def ref_png(
    pix: np.ndarray, filters: list[int], *, interlace: bool = False, extra: tuple[bytes, ...] = ()
) -> bytes:
    h, w, c = pix.shape
    depth = 16 if pix.dtype == np.uint16 else 8
    if interlace:
        body = b"".join(
            _filtered_stream(pix[y0::dy, x0::dx], filters)
            for x0, y0, dx, dy in _ADAM7
            if pix[y0::dy, x0::dx].size
        )
    else:
        body = _filtered_stream(pix, filters)
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, int(interlace))
    return (
        _png.PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + b"".join(extra)
        + _chunk(b"IDAT", zlib.compress(body))
        + _chunk(b"IEND", b"")
    )


def rand16(h: int, w: int, c: int) -> np.ndarray:
    """Values 1..65534 whose low bytes differ: an 8-bit path cannot round-trip them."""
    return RNG.integers(1, 65535, size=(h, w, c), dtype=np.uint16)


def as16(x: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(x, dtype=np.float64) * 65535).astype(np.uint16)


def as8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(x, dtype=np.float64) * 255).astype(np.uint8)


def save(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def pil_bytes(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _s15(x: float) -> bytes:
    return struct.pack(">i", int(round(x * 65536)))


def cmyk_icc(a_shift: float = 0.0) -> bytes:
    """A minimal CMYK printer profile (lut8 A2B0 to Lab) built from the naive CMYK formula.

    ``a_shift`` tints every colour towards red so a test can tell the profile was applied.
    """
    to_xyz = np.array(
        [[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169], [0.0139322, 0.0971045, 0.7141733]]
    )
    white = np.array([0.9642, 1.0, 0.8249])
    clut = bytearray()
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    rgb = np.array([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)])
                    xyz = to_xyz @ rgb / white
                    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
                    lab = (116 * f[1] - 16, 500 * (f[0] - f[1]) + a_shift, 200 * (f[1] - f[2]))
                    clut += bytes(
                        int(round(np.clip(v, 0, 255)))
                        for v in (lab[0] * 255 / 100, lab[1] + 128, lab[2] + 128)
                    )
    ident = bytes(range(256))
    matrix = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a2b0 = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + matrix + ident * 4 + bytes(clut) + ident * 3
    text = b"test CMYK\x00"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    wtpt = b"XYZ " + bytes(4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    cprt = b"text" + bytes(4) + b"none\x00"
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"cprt", cprt), (b"A2B0", a2b0)]
    offset = 128 + 4 + 12 * len(tags)
    table = blobs = b""
    for sig, blob in tags:
        blob += bytes(-len(blob) % 4)
        table += sig + struct.pack(">II", offset + len(blobs), len(blob))
        blobs += blob
    header = (
        struct.pack(">I", offset + len(blobs))
        + bytes(4)
        + bytes([2, 0x10, 0, 0])
        + b"prtrCMYKLab "
        + bytes(12)
        + b"acsp"
        + bytes(24)
        + bytes(4)
        + _s15(0.9642)
        + _s15(1.0)
        + _s15(0.8249)
        + bytes(48)
    )
    return header + struct.pack(">I", len(tags)) + table + blobs


def exif_bytes(orientation: int | None = None, make: str = "LLE Camera") -> bytes:
    exif = Image.Exif()
    exif[0x010F] = make
    if orientation is not None:
        exif[0x0112] = orientation
    exif[0x8769] = {0x829A: (1, 125), 0x9003: "2024:05:06 07:08:09"}
    return exif.tobytes()


def parsed_exif(raw: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.load(raw)
    return exif


# ------------------------------------------------------------------------------------------
# 8-bit basics


def test_png8_rgb_roundtrip_exact(tmp_path: Path) -> None:
    arr = RNG.integers(0, 256, size=(23, 31, 3), dtype=np.uint8)
    path = save(tmp_path, "a.png", pil_bytes(Image.fromarray(arr), "PNG"))
    pic = read_image(path)
    assert pic.rgb.dtype == np.float32 and pic.rgb.shape == (23, 31, 3) and pic.rgb.flags.c_contiguous
    assert (pic.bit_depth, pic.grayscale, pic.format, pic.source) == (8, False, "PNG", str(path))
    assert pic.alpha is None
    np.testing.assert_array_equal(as8(pic.rgb), arr)
    back = read_image(encode_image(pic, "png"))
    np.testing.assert_array_equal(as8(back.rgb), arr)
    assert back.bit_depth == 8 and back.source == "<stdin>"


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "WEBP"])
def test_lossless_8bit_formats_roundtrip(fmt: str) -> None:
    arr = RNG.integers(0, 256, size=(9, 14, 3), dtype=np.uint8)
    pic = read_image(pil_bytes(Image.fromarray(arr), "PNG"))
    kwargs = {"quality": 100} if fmt == "WEBP" else {}
    back = read_image(encode_image(pic, fmt, **kwargs))
    assert back.format == fmt and back.rgb.shape == arr.shape
    if fmt != "WEBP":
        np.testing.assert_array_equal(as8(back.rgb), arr)


def test_quantisation_rounds() -> None:
    rgb = np.full((1, 2, 3), 0.5, dtype=np.float32)
    rgb[0, 1] = 2.6 / 255  # truncation would give 2
    pic = Picture(rgb, None, 8, False, None, None, "PNG", "x")
    back = read_image(encode_image(pic, "PNG"))
    assert as8(back.rgb)[0, 0, 0] == 128 and as8(back.rgb)[0, 1, 0] == 3


def test_with_rgb_keeps_metadata() -> None:
    pic = Picture(np.zeros((2, 2, 3), np.float32), np.ones((2, 2), np.float32), 16, False, b"icc", b"ex", "PNG", "p")
    new = pic.with_rgb(np.ones((2, 2, 3), np.float64))
    assert new.rgb.dtype == np.float32 and new.rgb.flags.c_contiguous and new.rgb.max() == 1
    assert (new.alpha is pic.alpha, new.icc_profile, new.exif, new.bit_depth) == (True, b"icc", b"ex", 16)


# ------------------------------------------------------------------------------------------
# 16-bit PNG


@pytest.mark.parametrize("ftype", [0, 1, 2, 3, 4])
def test_png16_rgb_each_filter_exact(tmp_path: Path, ftype: int) -> None:
    pix = rand16(11, 13, 3)
    pic = read_image(save(tmp_path, f"f{ftype}.png", ref_png(pix, [ftype])))
    assert pic.bit_depth == 16 and not pic.grayscale and pic.alpha is None
    np.testing.assert_array_equal(as16(pic.rgb), pix)


@pytest.mark.parametrize("filters", [[0, 1, 2, 3, 4], [4, 1], [3, 2, 2], [1]])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_mixed_filters_and_layouts(channels: int, filters: list[int]) -> None:
    pix = rand16(9, 10, channels)
    pic = read_image(ref_png(pix, filters))
    np.testing.assert_array_equal(as16(pic.rgb[..., : 1 if channels <= 2 else 3]), pix[..., : 1 if channels <= 2 else 3])
    assert pic.grayscale == (channels <= 2)
    if channels in (2, 4):
        np.testing.assert_array_equal(as16(pic.alpha), pix[..., -1])


def test_png16_wavefront_bands_match(monkeypatch: pytest.MonkeyPatch) -> None:
    pix = rand16(70, 9, 3)
    data = ref_png(pix, [4, 3, 1, 4, 2, 0])
    monkeypatch.setattr(_png, "_BAND_BYTES", 1)  # force many small bands
    np.testing.assert_array_equal(_png.decode(data).pixels, pix)


def test_png16_interlaced(tmp_path: Path) -> None:
    pix = rand16(13, 11, 3)
    pic = read_image(ref_png(pix, [4, 1, 3], interlace=True))
    np.testing.assert_array_equal(as16(pic.rgb), pix)


def test_png16_rgba(tmp_path: Path) -> None:
    pix = rand16(8, 9, 4)
    pic = read_image(save(tmp_path, "rgba.png", ref_png(pix, [4])))
    np.testing.assert_array_equal(as16(pic.rgb), pix[..., :3])
    assert pic.alpha is not None and pic.alpha.dtype == np.float32
    np.testing.assert_array_equal(as16(pic.alpha), pix[..., 3])
    back = read_image(encode_image(pic, "PNG"))
    assert back.bit_depth == 16
    np.testing.assert_array_equal(as16(back.rgb), pix[..., :3])
    np.testing.assert_array_equal(as16(back.alpha), pix[..., 3])


def test_png16_gray_from_pillow(tmp_path: Path) -> None:
    gray = RNG.integers(1, 65535, size=(7, 12), dtype=np.uint16)
    im = Image.fromarray(gray)
    assert im.mode == "I;16"
    pic = read_image(save(tmp_path, "g16.png", pil_bytes(im, "PNG")))
    assert pic.grayscale and pic.bit_depth == 16
    for ch in range(3):
        np.testing.assert_array_equal(as16(pic.rgb[..., ch]), gray)
    out = encode_image(pic, "PNG")
    assert _png.read_header(out).color_type == 0 and _png.read_header(out).bit_depth == 16
    with Image.open(io.BytesIO(out)) as reread:
        np.testing.assert_array_equal(np.asarray(reread), gray)


def test_png16_encode_roundtrip_and_pillow_can_open() -> None:
    pix = rand16(10, 12, 3)
    pic = read_image(ref_png(pix, [2]))
    data = encode_image(pic, "PNG")
    np.testing.assert_array_equal(as16(read_image(data).rgb), pix)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.size == (12, 10)
    assert encode_image(pic, "PNG", bit_depth=8)[:8] == _png.PNG_SIGNATURE
    assert read_image(encode_image(pic, "PNG", bit_depth=8)).bit_depth == 8


def test_png16_gray_alpha_roundtrip() -> None:
    pix = rand16(6, 5, 2)
    pic = read_image(ref_png(pix, [0]))
    out = encode_image(pic, "PNG")
    assert _png.read_header(out).color_type == 4
    back = read_image(out)
    assert back.grayscale
    np.testing.assert_array_equal(as16(back.rgb[..., 0]), pix[..., 0])
    np.testing.assert_array_equal(as16(back.alpha), pix[..., 1])


def test_png16_trns_key_becomes_alpha() -> None:
    pix = rand16(4, 4, 3)
    pix[1, 2] = (100, 200, 300)
    trns = _chunk(b"tRNS", struct.pack(">3H", 100, 200, 300))
    pic = read_image(ref_png(pix, [0], extra=(trns,)))
    assert pic.alpha is not None and pic.alpha[1, 2] == 0 and pic.alpha.sum() == 15


def test_png16_metadata_chunks() -> None:
    icc = srgb_icc()
    iccp = _chunk(b"iCCP", b"sRGB\x00\x00" + zlib.compress(icc))
    exif = _chunk(b"eXIf", exif_bytes(orientation=6)[6:])
    pix = rand16(3, 5, 3)
    pic = read_image(ref_png(pix, [1], extra=(iccp, exif)))
    assert pic.icc_profile == icc
    np.testing.assert_array_equal(as16(pic.rgb), np.rot90(pix, -1))
    kept = parsed_exif(pic.exif)
    assert kept[0x0112] == 1 and kept[0x010F] == "LLE Camera"
    back = read_image(encode_image(pic, "PNG"))
    assert back.icc_profile == icc and parsed_exif(back.exif)[0x010F] == "LLE Camera"
    np.testing.assert_array_equal(as16(back.rgb), np.rot90(pix, -1))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_png_decoder_matches_pillow_8bit(mode: str) -> None:
    channels = len(mode)
    arr = RNG.integers(0, 256, size=(17, 19, channels), dtype=np.uint8)
    im = Image.frombytes(mode, (19, 17), arr.tobytes())
    data = pil_bytes(im, "PNG")
    np.testing.assert_array_equal(_png.decode(data).pixels, arr)
    np.testing.assert_array_equal(_png.decode(ref_png(arr, [0, 1, 2, 3, 4])).pixels, arr)


def test_png16_bad_crc_and_truncation(tmp_path: Path) -> None:
    data = bytearray(ref_png(rand16(8, 8, 3), [4]))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    with pytest.raises(InputError, match=r"bad\.png: the file is truncated or corrupt \(CRC mismatch"):
        read_image(save(tmp_path, "bad.png", bytes(data)))
    good = ref_png(rand16(8, 8, 3), [4])
    with pytest.raises(InputError, match=r"cut\.png: the file is truncated or corrupt"):
        read_image(save(tmp_path, "cut.png", good[: len(good) // 2]))


def test_png16_bad_zlib_stream() -> None:
    pix = rand16(4, 4, 3)
    png = ref_png(pix, [0])
    start = png.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", png[start - 8 : start - 4])
    junk = b"\x00" * length
    bad = png[: start - 8] + _chunk(b"IDAT", junk) + png[start + length + 4 :]
    with pytest.raises(InputError, match="does not decompress|shorter"):
        read_image(bad, name="junk.png")


# ------------------------------------------------------------------------------------------
# TIFF


def test_tiff16_rgb_roundtrip(tmp_path: Path) -> None:
    pix = rand16(9, 14, 3)
    icc = srgb_icc()
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, pix, photometric="rgb", iccprofile=icc)
    pic = read_image(path)
    assert (pic.format, pic.bit_depth, pic.grayscale, pic.icc_profile) == ("TIFF", 16, False, icc)
    np.testing.assert_array_equal(as16(pic.rgb), pix)
    out = encode_image(pic, "TIFF")
    with tifffile.TiffFile(io.BytesIO(out)) as tif:
        page = tif.pages[0]
        assert page.dtype == np.uint16 and page.bitspersample == 16
        np.testing.assert_array_equal(page.asarray(), pix)
    back = read_image(out)
    assert back.bit_depth == 16 and back.icc_profile == icc
    np.testing.assert_array_equal(as16(back.rgb), pix)


def test_tiff16_rgba_gray_planar_and_float(tmp_path: Path) -> None:
    rgba = rand16(5, 6, 4)
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    pic = read_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(as16(pic.alpha), rgba[..., 3])
    back = read_image(encode_image(pic, "TIFF"))
    np.testing.assert_array_equal(as16(back.alpha), rgba[..., 3])
    np.testing.assert_array_equal(as16(back.rgb), rgba[..., :3])

    gray = rand16(5, 6, 1)[..., 0]
    tifffile.imwrite(tmp_path / "g.tif", gray, photometric="minisblack")
    pic = read_image(tmp_path / "g.tif")
    assert pic.grayscale and pic.bit_depth == 16
    np.testing.assert_array_equal(as16(pic.rgb[..., 1]), gray)
    with tifffile.TiffFile(io.BytesIO(encode_image(pic, "TIFF"))) as tif:
        np.testing.assert_array_equal(tif.pages[0].asarray(), gray)

    planar = rand16(3, 5, 6)
    tifffile.imwrite(tmp_path / "p.tif", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(as16(read_image(tmp_path / "p.tif").rgb), np.moveaxis(planar, 0, -1))

    flt = np.array([[[0.25, -1.0, np.nan], [2.0, np.inf, 0.5]]], dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", flt, photometric="rgb")
    pic = read_image(tmp_path / "f.tif")
    assert np.isfinite(pic.rgb).all() and pic.rgb.min() >= 0 and pic.rgb.max() <= 1
    assert pic.rgb[0, 0, 0] == pytest.approx(0.25) and pic.rgb[0, 1, 0] == 1.0


def test_tiff16_needs_imagecodecs_for_lzw(tmp_path: Path) -> None:
    if imageio._has_imagecodecs():
        pytest.skip("imagecodecs is installed")
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, rand16(4, 4, 3), photometric="rgb")
    with tifffile.TiffFile(path) as tif:
        where = tif.pages[0].tags[259].valueoffset
    data = bytearray(path.read_bytes())
    data[where : where + 2] = struct.pack("<H", 5)  # claim LZW compression
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="lzw.tif: .*install imagecodecs"):
        read_image(path)


def test_tiff16_cmyk_falls_back_to_pillow(tmp_path: Path) -> None:
    cmyk = np.zeros((2, 3, 4), np.uint16)
    cmyk[0, 0] = (65535, 0, 0, 0)  # cyan
    tifffile.imwrite(tmp_path / "c.tif", cmyk, photometric="separated")
    pic = read_image(tmp_path / "c.tif")
    np.testing.assert_array_equal(as8(pic.rgb[0, :2]), [[0, 255, 255], [255, 255, 255]])


def test_tiff8_roundtrip_with_exif(tmp_path: Path) -> None:
    arr = RNG.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    pic = read_image(pil_bytes(Image.fromarray(arr), "PNG", exif=exif_bytes()))
    out = encode_image(pic, "TIFF")
    back = read_image(out)
    assert back.format == "TIFF" and back.bit_depth == 8
    np.testing.assert_array_equal(as8(back.rgb), arr)
    kept = parsed_exif(back.exif)
    assert kept[0x010F] == "LLE Camera" and 0x0111 not in kept  # camera kept, strip offsets not
    assert kept.get_ifd(0x8769)[0x9003] == "2024:05:06 07:08:09"


# ------------------------------------------------------------------------------------------
# Orientation and colour management


def test_exif_orientation_6_jpeg(tmp_path: Path) -> None:
    arr = np.zeros((40, 64, 3), np.uint8)
    arr[:8, :8] = 255  # white top-left block
    path = save(tmp_path, "rot.jpg", pil_bytes(Image.fromarray(arr), "JPEG", exif=exif_bytes(6), quality=95))
    pic = read_image(path)
    assert pic.rgb.shape == (64, 40, 3)
    assert pic.rgb[:8, -8:].mean() > 0.9 and pic.rgb[-8:, :8].mean() < 0.1  # top-left went top-right
    kept = parsed_exif(pic.exif)
    assert kept[0x0112] == 1 and kept[0x010F] == "LLE Camera"
    again = read_image(encode_image(pic, "JPEG"))
    assert again.rgb.shape == (64, 40, 3) and parsed_exif(again.exif)[0x0112] == 1


def test_stale_exif_thumbnail_is_unlinked() -> None:
    body = bytearray(exif_bytes(8)[6:])  # big-endian ("MM") as Pillow writes it
    (ifd0,) = struct.unpack(">I", body[4:8])
    (count,) = struct.unpack(">H", body[ifd0 : ifd0 + 2])
    link = ifd0 + 2 + 12 * count
    body[link : link + 4] = struct.pack(">I", len(body))
    body += struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0103, 3, 1, 6, 0) + bytes(4)  # IFD1
    assert parsed_exif(bytes(body)).get_ifd(ExifTags.IFD.IFD1)
    arr = RNG.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    pic = read_image(pil_bytes(Image.fromarray(arr), "PNG", exif=b"Exif\x00\x00" + bytes(body)))
    np.testing.assert_array_equal(as8(pic.rgb), np.rot90(arr, 1))
    kept = parsed_exif(pic.exif)
    assert kept[0x0112] == 1 and kept[0x010F] == "LLE Camera" and not kept.get_ifd(ExifTags.IFD.IFD1)
    assert len(pic.exif) == len(body) + 6  # patched in place, nothing re-serialised


@pytest.mark.parametrize(
    ("mode", "values"),
    [("I;16B", [0, 1000, 65535]), ("I", [0, 1000, 65535]), ("F", [0.5, float("nan"), 7.0])],
)
def test_high_depth_pillow_modes(mode: str, values: list[float]) -> None:
    if mode == "F":
        im = Image.fromarray(np.array([values], np.float32))
    else:
        im = Image.frombytes("I;16B", (3, 1), np.array(values, ">u2").tobytes()).convert(mode)
    assert im.mode == mode
    pic = imageio._from_pillow(im, "x.tif")
    assert pic.grayscale and pic.bit_depth == 16 and np.isfinite(pic.rgb).all()
    expected = [0.5, 0.0, 1.0] if mode == "F" else [v / 65535 for v in values]
    np.testing.assert_allclose(pic.rgb[0, :, 0], expected, atol=1e-7)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow(orientation: int) -> None:
    arr = RNG.integers(0, 256, size=(5, 8, 3), dtype=np.uint8)
    data = pil_bytes(Image.fromarray(arr), "PNG", exif=exif_bytes(orientation))
    with Image.open(io.BytesIO(data)) as im:
        expected = np.asarray(ImageOps.exif_transpose(im))
    pic = read_image(data)
    np.testing.assert_array_equal(as8(pic.rgb), expected)
    assert parsed_exif(pic.exif)[0x0112] == 1


@pytest.mark.parametrize(("fmt", "bits"), [("PNG", 8), ("PNG", 16), ("JPEG", 8), ("WEBP", 8), ("TIFF", 8), ("TIFF", 16)])
def test_icc_profile_survives_encode(fmt: str, bits: int) -> None:
    icc = srgb_icc()
    pic = Picture(RNG.random((6, 7, 3), dtype=np.float32), None, bits, False, icc, exif_bytes(), "PNG", "x")
    back = read_image(encode_image(pic, fmt))
    assert back.icc_profile == icc
    assert back.bit_depth == bits
    assert parsed_exif(back.exif)[0x010F] == "LLE Camera"


def test_icc_of_wrong_colour_space_is_dropped() -> None:
    gray = Picture(np.zeros((2, 2, 3), np.float32), None, 8, True, srgb_icc(), None, "PNG", "x")
    assert read_image(encode_image(gray, "PNG")).icc_profile is None


def test_cmyk_jpeg_without_profile(tmp_path: Path) -> None:
    im = Image.new("CMYK", (4, 1))
    for x, v in enumerate([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 255, 0)]):
        im.putpixel((x, 0), v)
    big = im.resize((32, 8), Image.Resampling.NEAREST)
    pic = read_image(save(tmp_path, "cmyk.jpg", pil_bytes(big, "JPEG", quality=100)))
    assert not pic.grayscale and pic.bit_depth == 8 and pic.icc_profile is None
    px = as8(pic.rgb[4, [4, 12, 20, 28]]).astype(int)
    np.testing.assert_allclose(px, [[255, 255, 255], [0, 255, 255], [0, 0, 0], [255, 255, 0]], atol=12)


def test_cmyk_jpeg_with_profile(tmp_path: Path) -> None:
    im = Image.new("CMYK", (24, 8), (0, 0, 0, 0))
    im.paste((0, 0, 0, 255), (8, 0, 16, 8))
    im.paste((0, 0, 0, 128), (16, 0, 24, 8))
    neutral = read_image(pil_bytes(im, "JPEG", quality=100, icc_profile=cmyk_icc()))
    assert neutral.icc_profile is None  # pixels are now sRGB
    assert as8(neutral.rgb[4, 2]).min() > 240 and as8(neutral.rgb[4, 12]).max() < 15
    red, _, blue = as8(neutral.rgb[4, 20]).astype(int)
    assert 80 < red < 180 and abs(red - blue) < 10
    tinted = read_image(pil_bytes(im, "JPEG", quality=100, icc_profile=cmyk_icc(a_shift=25)))
    red, _, blue = as8(tinted.rgb[4, 20]).astype(int)
    assert red - blue > 20  # the profile, not the naive formula, produced the colours


# ------------------------------------------------------------------------------------------
# Alpha and grayscale


def test_palette_with_transparency_gives_alpha(tmp_path: Path) -> None:
    im = Image.new("P", (4, 3), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((1, 1), 1)
    data = pil_bytes(im, "PNG", transparency=0)
    pic = read_image(save(tmp_path, "p.png", data))
    assert pic.alpha is not None and not pic.grayscale
    assert pic.alpha[1, 1] == 1.0 and pic.alpha[0, 0] == 0.0
    np.testing.assert_allclose(pic.rgb[1, 1], [0, 0, 1])


def test_la_is_grayscale_with_alpha() -> None:
    arr = RNG.integers(0, 256, size=(5, 6, 2), dtype=np.uint8)
    pic = read_image(pil_bytes(Image.frombytes("LA", (6, 5), arr.tobytes()), "PNG"))
    assert pic.grayscale and pic.bit_depth == 8
    np.testing.assert_array_equal(as8(pic.rgb[..., 2]), arr[..., 0])
    np.testing.assert_array_equal(as8(pic.alpha), arr[..., 1])
    with Image.open(io.BytesIO(encode_image(pic, "PNG"))) as back:
        assert back.mode == "LA"
        np.testing.assert_array_equal(np.asarray(back), arr)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF"])
def test_grayscale_in_grayscale_out(fmt: str) -> None:
    arr = RNG.integers(0, 256, size=(8, 8), dtype=np.uint8)
    pic = read_image(pil_bytes(Image.fromarray(arr), "PNG"))
    assert pic.grayscale
    out = encode_image(pic, fmt)
    with Image.open(io.BytesIO(out)) as im:
        assert im.mode == "L"
    back = read_image(out)
    assert back.grayscale
    if fmt != "JPEG":
        np.testing.assert_array_equal(as8(back.rgb[..., 0]), arr)


def test_one_bit_and_gray_jpeg() -> None:
    im = Image.new("1", (5, 4), 0)
    im.putpixel((2, 2), 1)
    pic = read_image(pil_bytes(im, "PNG"))
    assert pic.grayscale and pic.rgb[2, 2, 0] == 1.0 and pic.rgb.sum() == 3


def test_alpha_dropped_for_jpeg_and_bmp() -> None:
    rgba = Picture(np.full((3, 3, 3), 0.5, np.float32), np.zeros((3, 3), np.float32), 8, False, None, None, "PNG", "x")
    for fmt in ("JPEG", "BMP"):
        back = read_image(encode_image(rgba, fmt))
        assert back.alpha is None
        assert abs(float(back.rgb.mean()) - 0.5) < 0.02


# ------------------------------------------------------------------------------------------
# Failures while reading


def test_truncated_jpeg(tmp_path: Path) -> None:
    arr = RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    data = pil_bytes(Image.fromarray(arr), "JPEG", quality=90)
    path = save(tmp_path, "cut.jpg", data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.jpg: the file is truncated or corrupt \(.*\); re-export"):
        read_image(path)
    assert not getattr(__import__("PIL.ImageFile").ImageFile, "LOAD_TRUNCATED_IMAGES")


def test_garbage_bytes(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"junk\.jpg: not a readable image .*JPEG/PNG/TIFF/WebP/BMP"):
        read_image(save(tmp_path, "junk.jpg", b"this is not an image" * 10))
    with pytest.raises(InputError, match=r"^<stdin>: not a readable image"):
        read_image(b"\x00\x01garbage")


def test_unsupported_container_is_rejected() -> None:
    gif = pil_bytes(Image.new("RGB", (2, 2)), "GIF")
    with pytest.raises(InputError, match="not a readable image"):
        read_image(gif, name="anim.gif")


def test_empty_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"empty\.png: the file is empty"):
        read_image(save(tmp_path, "empty.png", b""))
    with pytest.raises(InputError, match=r"missing\.png: no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(InputError, match="empty"):
        read_image(b"")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions, non-root")
def test_permission_denied(tmp_path: Path) -> None:
    path = save(tmp_path, "secret.png", pil_bytes(Image.new("RGB", (2, 2)), "PNG"))
    path.chmod(0)
    try:
        with pytest.raises(InputError, match=r"secret\.png: permission denied"):
            read_image(path)
    finally:
        path.chmod(0o600)


def test_permission_denied_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(imageio, "open", denied, raising=False)  # works as root too
    with pytest.raises(InputError, match=r"locked\.png: permission denied"):
        read_image(tmp_path / "locked.png")


def test_damaged_header_is_called_corrupt() -> None:
    png = pil_bytes(Image.new("RGB", (4, 4)), "PNG")
    with pytest.raises(InputError, match=r"x\.png: the file is truncated or corrupt"):
        read_image(png[:40], name="x.png")


def test_decompression_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(InputError, match=r"big\.png: .*downscale"):
        read_image(pil_bytes(Image.new("RGB", (8, 8)), "PNG"), name="big.png")
    with pytest.raises(InputError, match=r"big16\.png: .*decompression-bomb"):
        read_image(ref_png(rand16(8, 8, 3), [0]), name="big16.png")


# ------------------------------------------------------------------------------------------
# Encoding errors


def test_nan_refused_and_nothing_written(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[0, 0, 1] = np.nan
    pic = Picture(rgb, None, 8, False, None, None, "PNG", "photo.png")
    target = tmp_path / "out.png"
    with pytest.raises(NonFiniteError, match=r"photo\.png: the model produced non-finite values; nothing was written"):
        write_bytes_atomic(target, encode_image(pic, "PNG"))
    assert list(tmp_path.iterdir()) == []


def test_encode_rejects_bad_format_and_depth() -> None:
    pic = Picture(np.zeros((2, 2, 3), np.float32), None, 16, False, None, None, "PNG", "x")
    with pytest.raises(UsageError, match="PNG, JPEG, TIFF, WEBP, BMP"):
        encode_image(pic, "GIF")
    with pytest.raises(UsageError, match="8 bits"):
        encode_image(pic, "JPEG", bit_depth=16)
    with pytest.raises(UsageError, match="8 or 16"):
        encode_image(pic, "PNG", bit_depth=12)
    with pytest.raises(UsageError, match="quality"):
        encode_image(pic, "JPEG", quality=0)
    assert read_image(encode_image(pic, "jpg")).format == "JPEG"
    assert read_image(encode_image(pic, "JPEG")).bit_depth == 8


# ------------------------------------------------------------------------------------------
# Atomic writes


def _parts(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".part")]


def test_write_bytes_atomic_basic_and_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    write_bytes_atomic(target, b"one")
    assert target.read_bytes() == b"one"
    with pytest.raises(OutputExistsError, match=r"out\.png: already exists; pass --overwrite"):
        write_bytes_atomic(target, b"two")
    assert target.read_bytes() == b"one"
    write_bytes_atomic(target, b"three", overwrite=True)
    assert target.read_bytes() == b"three"
    assert _parts(tmp_path) == []


def test_write_bytes_atomic_cleans_up_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imageio.os, "replace", boom)
    with pytest.raises(OutputError, match="No space left"):
        write_bytes_atomic(target, b"new", overwrite=True)
    assert target.read_bytes() == b"old" and _parts(tmp_path) == []

    def interrupt(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(imageio.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(tmp_path / "fresh.png", b"new")
    assert not (tmp_path / "fresh.png").exists() and _parts(tmp_path) == []


def test_write_bytes_atomic_race_and_missing_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "late.png"
    real_link = os.link

    def someone_else_first(src: object, dst: object) -> None:
        Path(dst).write_bytes(b"theirs")  # type: ignore[arg-type]
        real_link(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(imageio.os, "link", someone_else_first)
    with pytest.raises(OutputExistsError):
        write_bytes_atomic(target, b"mine")
    assert target.read_bytes() == b"theirs" and _parts(tmp_path) == []
    with pytest.raises(OutputError, match="does not exist; create it first"):
        write_bytes_atomic(tmp_path / "nope" / "x.png", b"x")
    with pytest.raises(OutputError, match="is a directory"):
        write_bytes_atomic(tmp_path, b"x", overwrite=True)


# ------------------------------------------------------------------------------------------
# Suffixes


def test_suffix_helpers() -> None:
    assert format_from_suffix("a/b.JPG") == "JPEG"
    assert format_from_suffix(Path("x.jpeg")) == "JPEG"
    assert format_from_suffix("x.tif") == format_from_suffix("x.TIFF") == "TIFF"
    assert (format_from_suffix("x.png"), format_from_suffix("x.webp"), format_from_suffix("x.bmp")) == (
        "PNG",
        "WEBP",
        "BMP",
    )
    assert format_from_suffix("x.gif") is None and format_from_suffix("noext") is None
    assert is_image_path("IMG_0001.JPG") and not is_image_path("notes.txt")
    assert ".png" in IMAGE_SUFFIXES and isinstance(IMAGE_SUFFIXES, frozenset)
