"""The files photographers actually have: HEIC, AVIF and camera RAW in (and HEIC/AVIF out), with
EXIF, ICC, orientation and bit depth; ``--strength``; and the one-line message when an optional
package is missing.

There is no camera file here: ``write_dng`` builds a small valid DNG (a Bayer mosaic with the DNG
tags LibRaw needs) so the test knows exactly which colours LibRaw must produce.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms

from lle_cli import imageio
from lle_cli.batch import blend_linear
from lle_cli.cli.main import main
from lle_cli.errors import InputError
from lle_cli.imageio import MissingExtraError, Picture, encode_image, read_image
from lle_cli.raw import linear_srgb_profile

tifffile = pytest.importorskip("tifffile")

MAKE = ExifTags.Base.Make
MODEL = ExifTags.Base.Model
ORIENTATION = ExifTags.Base.Orientation
# a profile no writer would invent on its own, so finding it in an output proves it was carried
ICC = linear_srgb_profile()


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def exif_of(pic: Picture) -> Image.Exif:
    exif = Image.Exif()
    exif.load(pic.exif or b"")
    return exif


def camera_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[MAKE] = "LLE Test Camera"
    exif[MODEL] = "Model 7"
    exif[ORIENTATION] = orientation
    return exif.tobytes()


# -- HEIC ------------------------------------------------------------------------------------------


@pytest.fixture
def pillow_heif():
    return pytest.importorskip("pillow_heif", reason="pillow-heif (the heif extra) is not installed")


def ten_bit_scene(h: int = 16, w: int = 24) -> np.ndarray:
    """10-bit code values with a distinct value at every pixel position (so rotations show)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx * 40 + yy) % 1024, (yy * 60 + 7) % 1024, (xx * 13 + yy * 29) % 1024], axis=2).astype(np.uint16)


def write_heic(path: Path, pillow_heif, values: np.ndarray, *, orientation: int = 6) -> Path:
    """A lossless 10-bit HEIC whose EXIF says ``orientation`` (pillow-heif turns it into the HEIF rotation box)."""
    h, w = values.shape[:2]
    heif = pillow_heif.from_bytes(mode="RGB;10", size=(w, h), data=values.tobytes())
    heif.save(str(path), quality=-1, chroma=444, matrix_coefficients=0, exif=camera_exif(orientation), icc_profile=ICC)
    return path


def test_heic_reads_10_bits_exactly_upright_once_with_exif_and_icc(tmp_path, pillow_heif) -> None:
    values = ten_bit_scene()
    pic = read_image(write_heic(tmp_path / "phone.heic", pillow_heif, values))
    assert pic.format == "HEIC" and pic.bit_depth == 16 and pic.sample_bits == 10
    # orientation 6 (turn 90 degrees clockwise), applied by libheif and not a second time by lle
    upright = np.rot90(values, -1)
    assert pic.rgb.shape == upright.shape
    np.testing.assert_array_equal(np.rint(pic.rgb * 1023).astype(np.uint16), upright)
    exif = exif_of(pic)
    assert exif[MAKE] == "LLE Test Camera" and exif[ORIENTATION] == 1
    assert pic.icc_profile == ICC


def test_heic_round_trip_keeps_exif_icc_depth_and_orientation(tmp_path, pillow_heif) -> None:
    pic = read_image(write_heic(tmp_path / "phone.heic", pillow_heif, ten_bit_scene(32, 48)))
    again = read_image(encode_image(pic, "HEIC", quality=95))
    assert again.format == "HEIC" and again.sample_bits == 10
    assert again.rgb.shape == pic.rgb.shape  # written upright, not turned again
    assert np.abs(again.rgb - pic.rgb).mean() < 0.01  # HEVC at quality 95, 4:4:4
    assert exif_of(again)[MAKE] == "LLE Test Camera" and exif_of(again)[ORIENTATION] == 1
    assert again.icc_profile == ICC


def test_16_bit_source_is_stored_at_10_bits_in_heic(tmp_path, pillow_heif, rng) -> None:
    ramp = np.linspace(0, 1, 64 * 48 * 3, dtype=np.float32).reshape(48, 64, 3)
    pic = Picture(ramp, None, 16, False, None, None, "PNG", "ramp.png")
    back = read_image(encode_image(pic, "HEIC", quality=100))
    assert back.sample_bits == 10
    # far finer than 8 bits could hold: distinct levels survive
    assert len(np.unique(np.rint(back.rgb[..., 0] * 1023))) > 400
    assert np.abs(back.rgb - ramp).mean() < 2 / 1023


def test_enhanced_heic_stays_heic_unless_format_says_otherwise(tmp_path, pillow_heif, capsys) -> None:
    src = write_heic(tmp_path / "phone.heic", pillow_heif, ten_bit_scene())
    code, out, err = run(capsys, "enhance", src, "--json")
    assert code == 0, err
    written = Path(json.loads(out)["output"])
    assert written.name == "phone_enhanced.heic"
    pic = read_image(written)
    assert pic.format == "HEIC" and pic.sample_bits == 10 and exif_of(pic)[MAKE] == "LLE Test Camera"
    code, out, err = run(capsys, "enhance", src, "-o", tmp_path / "as.png", "--json")
    assert code == 0, err
    png = read_image(tmp_path / "as.png")
    assert png.format == "PNG" and png.bit_depth == 16 and png.icc_profile == ICC


# -- AVIF ------------------------------------------------------------------------------------------


@pytest.fixture
def avif():
    if not imageio._PILLOW_AVIF:
        pytest.skip("this Pillow has no AVIF plugin")


def test_avif_round_trip_keeps_exif_icc_and_orientation(tmp_path, avif, rng) -> None:
    pixels = (rng.random((16, 24, 3)) * 200).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.avif", quality=100, subsampling="4:4:4", exif=camera_exif(6), icc_profile=ICC)
    pic = read_image(tmp_path / "a.avif")
    assert pic.format == "AVIF" and pic.bit_depth == 8
    assert pic.rgb.shape == (24, 16, 3)  # turned upright once
    assert exif_of(pic)[MAKE] == "LLE Test Camera" and exif_of(pic)[ORIENTATION] == 1
    assert pic.icc_profile == ICC
    again = read_image(encode_image(pic, "AVIF", quality=95))
    assert again.rgb.shape == pic.rgb.shape and again.icc_profile == ICC
    assert exif_of(again)[MAKE] == "LLE Test Camera"
    assert np.abs(again.rgb - pic.rgb).mean() < 0.03


def test_avif_has_no_16_bit_output(avif) -> None:
    pic = Picture(np.zeros((4, 4, 3), np.float32), None, 16, False, None, None, "PNG", "x.png")
    with pytest.raises(imageio.UsageError, match="8 bits"):
        encode_image(pic, "AVIF", bit_depth=16)


# -- camera RAW ------------------------------------------------------------------------------------

# four vertical bands of scene colour (linear light): red, green, blue, grey
BANDS = [(0.8, 0.1, 0.1), (0.1, 0.7, 0.1), (0.1, 0.1, 0.8), (0.4, 0.4, 0.4)]
# the camera's response to grey (what DNG calls AsShotNeutral): a warm light, blue weak
NEUTRAL = (0.5, 1.0, 0.8)
# XYZ (D65) -> linear sRGB: with this ColorMatrix1 the "camera" sees in sRGB primaries
XYZ_TO_SRGB = (3.2404542, -1.5371385, -0.4985314, -0.9692660, 1.8760108, 0.0415560, 0.0556434, -0.2040259, 1.0572252)


def write_dng(path: Path, *, height: int = 48, width: int = 64, orientation: int = 6, white: int = 4095) -> Path:
    """A 12-bit RGGB Bayer DNG of ``BANDS`` as the camera recorded it under ``NEUTRAL`` light."""
    scene = np.zeros((height, width, 3))
    for i, colour in enumerate(BANDS):
        scene[:, i * width // 4 : (i + 1) * width // 4] = colour
    seen = scene * np.array(NEUTRAL)
    mosaic = np.empty((height, width))
    mosaic[0::2, 0::2] = seen[0::2, 0::2, 0]  # R
    mosaic[0::2, 1::2] = seen[0::2, 1::2, 1]  # G
    mosaic[1::2, 0::2] = seen[1::2, 0::2, 1]  # G
    mosaic[1::2, 1::2] = seen[1::2, 1::2, 2]  # B

    def rationals(values):
        return [v for x in values for v in (round(x * 10000), 10000)]

    tags = [
        (254, "I", 1, 0, True),  # NewSubFileType: the main image
        (271, "s", 0, "LLE Test Camera", True),
        (272, "s", 0, "Model 7", True),
        (274, "H", 1, orientation, True),
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, "LLE Test Camera Model 7", True),  # UniqueCameraModel
        (50714, "H", 1, 0, True),  # BlackLevel
        (50717, "H", 1, white, True),  # WhiteLevel
        (50721, "2i", 9, rationals(XYZ_TO_SRGB), True),  # ColorMatrix1
        (50728, "2I", 3, rationals(NEUTRAL), True),  # AsShotNeutral
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
    ]
    tifffile.imwrite(path, np.round(mosaic * white).astype(np.uint16), photometric=32803, extratags=tags, metadata=None)
    return path


@pytest.fixture
def rawpy():
    return pytest.importorskip("rawpy", reason="rawpy (the raw extra) is not installed")


def band_means(rgb: np.ndarray) -> list[np.ndarray]:
    """Mean colour of the middle of each band; orientation 6 turned the vertical bands into rows."""
    h = rgb.shape[0]
    return [rgb[i * h // 4 + 3 : (i + 1) * h // 4 - 3, 4:-4].reshape(-1, 3).mean(0) for i in range(4)]


def srgb(v: float) -> float:
    return 12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055


def test_libraw_demosaics_the_synthetic_dng_to_its_colours(tmp_path, rawpy) -> None:
    pic = read_image(write_dng(tmp_path / "shot.dng"))
    assert pic.format == "RAW" and pic.bit_depth == 16 and pic.sample_bits == 12
    assert pic.rgb.shape == (64, 48, 3)  # 48x64 mosaic, turned by its orientation 6
    for got, colour in zip(band_means(pic.rgb), BANDS, strict=True):
        assert int(np.argmax(got)) == int(np.argmax(colour)) or len(set(colour)) == 1
        # camera white balance applied (grey stays grey under the warm light), sRGB curve, as shot
        np.testing.assert_allclose(got, [srgb(c) for c in colour], atol=0.02)
    exif = exif_of(pic)
    assert exif[MAKE] == "LLE Test Camera" and exif[MODEL] == "Model 7" and exif[ORIENTATION] == 1
    assert pic.icc_profile is None  # sRGB, the default everyone assumes


def test_linear_raw_rendering_is_linear_and_says_so(tmp_path, rawpy) -> None:
    pic = read_image(write_dng(tmp_path / "shot.dng"), raw="linear")
    for got, colour in zip(band_means(pic.rgb), BANDS, strict=True):
        np.testing.assert_allclose(got, colour, atol=0.02)
    assert pic.icc_profile == linear_srgb_profile()
    # a colour-managed viewer turns linear 0.4 grey into sRGB 0.665 through that profile
    grey = Image.fromarray(np.full((1, 1, 3), round(0.4 * 255), np.uint8))
    shown = ImageCms.profileToProfile(grey, ImageCms.ImageCmsProfile(io.BytesIO(pic.icc_profile)), ImageCms.createProfile("sRGB"))
    assert abs(np.asarray(shown)[0, 0, 0] / 255 - srgb(0.4)) < 0.01


def test_dng_on_stdin_is_recognised_as_raw_not_as_a_tiff(tmp_path, rawpy) -> None:
    data = write_dng(tmp_path / "shot.dng").read_bytes()
    pic = read_image(data)
    assert pic.format == "RAW" and pic.rgb.shape == (64, 48, 3)


def test_raw_is_enhanced_into_a_16_bit_tiff_and_never_replaced(tmp_path, rawpy, capsys) -> None:
    src = write_dng(tmp_path / "shot.dng")
    code, out, err = run(capsys, "enhance", src, "--json")
    assert code == 0, err
    written = Path(json.loads(out)["output"])
    assert written.name == "shot_enhanced.tif"
    tif = read_image(written)
    assert tif.format == "TIFF" and tif.bit_depth == 16 and tif.rgb.shape == (64, 48, 3)
    code, out, err = run(capsys, "enhance", src, "--in-place", "--json")
    assert code == 1 and "cannot be replaced in place" in json.loads(out)["error"]


def test_raw_exif_keeps_the_exposure_and_drops_the_maker_note() -> None:
    from lle_cli.raw import _raw_exif

    # a TIFF-structured file as NEF/ARW/CR2 are: IFD0 with camera tags, an Exif sub-IFD with a maker note
    exif = Image.Exif()
    exif[MAKE], exif[ORIENTATION] = "LLE Test Camera", 6
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.ExposureTime] = 0.5
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.MakerNote] = b"offsets into the RAW" * 4
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "TIFF", exif=exif.tobytes())
    kept = Image.Exif()
    kept.load(_raw_exif(buf.getvalue()))
    assert kept[MAKE] == "LLE Test Camera" and kept[ORIENTATION] == 1  # LibRaw already turned the pixels
    assert dict(kept.get_ifd(ExifTags.IFD.Exif)) == {ExifTags.Base.ExposureTime: 0.5}


def test_damaged_raw_is_one_error_line(tmp_path, rawpy) -> None:
    bad = tmp_path / "bad.nef"
    bad.write_bytes(b"II*\x00" + bytes(200))
    with pytest.raises(InputError, match="bad.nef"):
        read_image(bad)


# -- --strength ------------------------------------------------------------------------------------


def test_blend_is_in_linear_light() -> None:
    black, white = np.zeros((1, 1, 3), np.float32), np.ones((1, 1, 3), np.float32)
    half = blend_linear(black, white, 0.5)
    assert half[0, 0, 0] == pytest.approx(srgb(0.5), abs=1e-4)  # 0.735, not 0.5
    assert blend_linear(black, white, 1.0) is white
    np.testing.assert_array_equal(blend_linear(white, black, 0.0), white)


def test_strength_zero_is_the_input_and_one_is_the_plain_output(tmp_path, rng, capsys) -> None:
    src = tmp_path / "dark.png"
    pixels = (rng.random((24, 32, 3)) * 70).astype(np.uint8)
    Image.fromarray(pixels).save(src)
    outputs = {}
    for name, extra in (("plain", []), ("s1", ["--strength", "1"]), ("s0", ["--strength", "0"]), ("half", ["--strength", "0.5"])):
        code, _, err = run(capsys, "enhance", src, "-o", tmp_path / f"{name}.png", "-q", *extra)
        assert code == 0, err
        outputs[name] = np.asarray(Image.open(tmp_path / f"{name}.png")).astype(int)
    assert (tmp_path / "s1.png").read_bytes() == (tmp_path / "plain.png").read_bytes()
    assert np.abs(outputs["s0"] - pixels).max() <= 1
    # halfway (in linear light) between the input and the plain output, pixel by pixel, whichever way the model moved it
    lo, hi = np.minimum(outputs["s0"], outputs["plain"]), np.maximum(outputs["s0"], outputs["plain"])
    assert ((lo - 1 <= outputs["half"]) & (outputs["half"] <= hi + 1)).all()
    assert np.abs(outputs["half"] - outputs["s0"]).mean() > 1 and np.abs(outputs["half"] - outputs["plain"]).mean() > 1
    code, _, err = run(capsys, "enhance", src, "--strength", "1.5")
    assert code == 2 and "--strength" in err


# -- missing optional packages ---------------------------------------------------------------------


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_missing_pillow_heif_names_the_heif_extra(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(16))
    Image.fromarray(np.full((8, 8, 3), 30, np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # what `import pillow_heif` does when it is missing
    code, out, err = run(capsys, "enhance", tmp_path / "phone.heic")
    assert code == 2 and out == ""
    assert 'pip install "lle-cli[heif]"' in _one_line(err)
    code, _, err = run(capsys, "enhance", tmp_path / "a.png", "--format", "heic")
    assert code == 2 and 'pip install "lle-cli[heif]"' in _one_line(err)
    with pytest.raises(MissingExtraError, match=r"lle-cli\[heif\]"):
        read_image(tmp_path / "phone.heic")


def test_missing_rawpy_names_the_raw_extra(tmp_path, capsys, monkeypatch) -> None:
    write_dng(tmp_path / "shot.dng")
    monkeypatch.setitem(sys.modules, "rawpy", None)
    code, out, err = run(capsys, "enhance", tmp_path / "shot.dng")
    assert code == 2 and out == ""
    assert 'pip install "lle-cli[raw]"' in _one_line(err)


def test_missing_avif_support_names_the_avif_extra(tmp_path, capsys, monkeypatch) -> None:
    Image.fromarray(np.full((8, 8, 3), 30, np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setattr(imageio, "_PILLOW_AVIF", False)
    code, _, err = run(capsys, "enhance", tmp_path / "a.png", "--format", "avif")
    assert code == 2 and 'pip install "lle-cli[avif]"' in _one_line(err)


def test_a_file_needing_a_missing_extra_inside_a_folder_fails_alone(tmp_path, capsys, monkeypatch) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(16))
    Image.fromarray(np.full((8, 8, 3), 30, np.uint8)).save(folder / "a.png")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    code, out, _ = run(capsys, "enhance", folder, "-o", f"{tmp_path / 'out'}/", "--json")
    assert code == 1
    records = {Path(r["input"]).name: r for r in map(json.loads, out.splitlines())}
    assert records["a.png"]["status"] == "ok"
    assert records["phone.heic"]["status"] == "error" and "lle-cli[heif]" in records["phone.heic"]["error"]


# -- batch rules across formats --------------------------------------------------------------------


def test_batch_of_new_formats_reports_each_file_and_never_overwrites(tmp_path, pillow_heif, rawpy, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_heic(folder / "good.heic", pillow_heif, ten_bit_scene())
    (folder / "broken.heic").write_bytes((folder / "good.heic").read_bytes()[:120])
    write_dng(folder / "shot.dng")
    out_dir = tmp_path / "out"
    code, out, _ = run(capsys, "enhance", folder, "-o", f"{out_dir}/", "--json", "--no-record")
    assert code == 1
    records = {Path(r["input"]).name: r for r in map(json.loads, out.splitlines())}
    assert {n: r["status"] for n, r in records.items()} == {"broken.heic": "error", "good.heic": "ok", "shot.dng": "ok"}
    assert sorted(p.name for p in out_dir.iterdir()) == ["good.heic", "shot.tif"]  # nothing partial
    before = (out_dir / "good.heic").read_bytes()
    code, out, _ = run(capsys, "enhance", folder / "good.heic", "-o", f"{out_dir}/", "--json")
    assert code == 1 and "already exists" in json.loads(out)["error"]
    assert (out_dir / "good.heic").read_bytes() == before
