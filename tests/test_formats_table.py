"""The formats table (``lle_cli.formats``): suffixes and names round-trip, and every reader agrees on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lle_cli import formats, imageio, video
from lle_cli.errors import UsageError
from lle_cli.formats import (
    BUILTIN_FORMATS,
    FORMATS,
    IMAGE_SUFFIXES,
    RAW_SUFFIXES,
    TABLE,
    VIDEO_SUFFIXES,
    default_output_format,
    default_suffix,
    format_from_suffix,
    is_image_path,
    is_raw_path,
    is_video_path,
    list_image_files,
    lookup,
    muxer_for,
    normalise_format,
)

WRITABLE = [f for f in TABLE if f.writable and not f.video]


def test_every_suffix_is_lower_case_dotted_and_belongs_to_one_row() -> None:
    seen: dict[str, str] = {}
    for row in TABLE:
        for s in row.suffixes:
            assert s.startswith(".") and s == s.lower(), s
            assert s not in seen, f"{s} is in {seen.get(s)} and {row.name}"
            seen[s] = row.name


@pytest.mark.parametrize("row", WRITABLE, ids=lambda r: r.name)
def test_default_suffix_maps_back_to_its_format(row: formats.Format) -> None:
    assert default_suffix(row.name) == row.suffix == row.suffixes[0]
    assert format_from_suffix(f"out{row.suffix}") == row.name
    for s in row.suffixes:  # every other spelling of the suffix too
        assert format_from_suffix(f"a/b{s}") == row.name
        assert normalise_format(s) == row.name  # "--format .tif" names the format


def test_writable_formats_in_the_documented_order() -> None:
    assert FORMATS == ("PNG", "JPEG", "TIFF", "WEBP", "BMP", "HEIC", "AVIF")
    assert BUILTIN_FORMATS == ("PNG", "JPEG", "TIFF", "WEBP", "BMP")
    assert default_suffix("jpeg") == ".jpg" and default_suffix("tiff") == ".tif" and default_suffix("heif") == ".heic"


@pytest.mark.parametrize(
    ("spelling", "name"),
    [("jpg", "JPEG"), ("JPG", "JPEG"), (".jpeg", "JPEG"), ("tif", "TIFF"), (" Tiff ", "TIFF"), ("heif", "HEIC"),
     ("HEIC", "HEIC"), ("png", "PNG"), (".WebP", "WEBP"), ("avif", "AVIF"), ("bmp", "BMP")],
)
def test_aliases_and_case(spelling: str, name: str) -> None:
    assert normalise_format(spelling) == name


def test_suffixes_are_matched_in_any_case() -> None:
    assert format_from_suffix("IMG_0001.JPG") == "JPEG"
    assert format_from_suffix(Path("x.TiFf")) == "TIFF"
    assert is_image_path("a.HEIC") and is_raw_path("b.NEF") and is_video_path("c.MOV")
    assert lookup("d.Dng").name == "RAW"


@pytest.mark.parametrize("name", ["x.gif", "notes.txt", "noext", "archive.tar.gz", ".png"])
def test_unknown_suffixes(name: str) -> None:
    assert format_from_suffix(name) is None
    assert not is_image_path(name) and not is_raw_path(name) and not is_video_path(name)
    assert lookup(name) is None and muxer_for(name) is None


@pytest.mark.parametrize("fmt", ["gif", "raw", "dng", "mp4", "", "jpegg"])
def test_unknown_or_unwritable_format_names_are_refused(fmt: str) -> None:
    with pytest.raises(UsageError, match="use one of PNG, JPEG, TIFF, WEBP, BMP, HEIC, AVIF"):
        normalise_format(fmt)


def test_raw_and_video_are_read_not_written_as_stills() -> None:
    for s in RAW_SUFFIXES:
        assert is_image_path(f"a{s}") and format_from_suffix(f"a{s}") is None
        assert default_output_format(f"a{s}") == "TIFF"  # nothing writes RAW
    for s in VIDEO_SUFFIXES:
        assert not is_image_path(f"a{s}") and format_from_suffix(f"a{s}") is None
        assert muxer_for(f"a{s}") is not None
    assert default_output_format("-") == "PNG" and default_output_format("a.jpeg") == "JPEG"
    assert muxer_for("a.m4v") == "mp4" and muxer_for("a.mkv") == "matroska"


def test_the_old_homes_hand_out_the_table() -> None:
    """``lle_cli.imageio`` and ``lle_cli.video`` re-export the table's names: one object, not a copy."""
    assert imageio.IMAGE_SUFFIXES is IMAGE_SUFFIXES and imageio.RAW_SUFFIXES is RAW_SUFFIXES
    assert imageio.FORMATS is FORMATS and imageio.normalise_format is normalise_format
    assert imageio.format_from_suffix is format_from_suffix and imageio.is_image_path is is_image_path
    assert video.VIDEO_SUFFIXES is VIDEO_SUFFIXES and video.is_video_path is is_video_path
    assert IMAGE_SUFFIXES == {s for f in TABLE if not f.video for s in f.suffixes}


def test_sample_writes_the_formats_that_need_no_extra() -> None:
    from lle_cli.sampling import normalise_format as sample_format

    assert sample_format(None) is None
    assert [sample_format(f.lower()) for f in BUILTIN_FORMATS] == list(BUILTIN_FORMATS)
    assert sample_format(".jpg") == "JPEG"
    for fmt in ("heic", "avif", "gif"):
        with pytest.raises(UsageError, match="use one of PNG, JPEG, TIFF, WEBP, BMP$"):
            sample_format(fmt)


# ---- the trainers list exactly the still images lle reads -----------------------------------------


def _every_suffix_and_some_strangers(folder: Path) -> set[str]:
    """One file per known suffix (stem = suffix without its dot), plus files that must be passed over."""
    folder.mkdir(parents=True, exist_ok=True)
    for row in TABLE:
        for s in row.suffixes:
            (folder / f"{s[1:]}{s.upper() if s == '.png' else s}").write_bytes(b"x")
    for stranger in ("a.gif", "b.txt", "c", "._resource.jpg", ".hidden.png"):
        (folder / stranger).write_bytes(b"x")
    (folder / "dir.jpg").mkdir()  # a folder with an image's suffix is not an image
    return {s for row in TABLE for s in row.suffixes}


def test_list_image_files_takes_every_still_format_lle_reads(tmp_path: Path) -> None:
    _every_suffix_and_some_strangers(tmp_path / "sub")
    found = list_image_files(tmp_path)
    assert {p.suffix.lower() for p in found} == IMAGE_SUFFIXES
    assert len(found) == len(IMAGE_SUFFIXES) and found == sorted(found)
    assert list_image_files(tmp_path, recursive=False) == []
    assert list_image_files(tmp_path / "missing") == []


def test_trainers_list_exactly_the_still_formats_lle_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lle_cli import clip
    from lle_cli.train import llflow, zero_dce

    _every_suffix_and_some_strangers(tmp_path / "data")
    # CLIP-guided trainers (rave, clip-lit-latent, scl-lle) and the synthetic-pair maker
    assert {p.suffix.lower() for p in clip.list_images(tmp_path / "data")} == IMAGE_SUFFIXES
    # the paired flow trainer (low/ and high/ matched by stem)
    assert {p.suffix.lower() for p in llflow._image_files(tmp_path / "data").values()} == IMAGE_SUFFIXES
    # the Zero-DCE trainer reads what it lists: count the reads
    read: list[Path] = []
    monkeypatch.setattr(zero_dce, "read_rgb8", lambda p: read.append(Path(p)) or np.zeros((4, 4, 3), np.uint8))
    images = zero_dce.load_training_images(tmp_path / "data", 4)
    assert {p.suffix.lower() for p in read} == IMAGE_SUFFIXES and images.shape[0] == len(IMAGE_SUFFIXES)


def test_trainers_read_photos_as_enhance_does(tmp_path: Path) -> None:
    """Upright by EXIF, 8-bit values unchanged, 16-bit scaled rather than clipped."""
    from lle_cli.train.common import read_rgb

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "turned.png", exif=exif.tobytes())
    assert np.array_equal(np.asarray(read_rgb(tmp_path / "turned.png")), np.rot90(pixels, -1))

    deep = (np.arange(2 * 3, dtype=np.uint16).reshape(2, 3) * 13000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # I;16: Pillow alone would clip it to 255
    got = imageio.read_rgb8(tmp_path / "deep.png")
    assert got.shape == (2, 3, 3) and got.dtype == np.uint8
    assert np.array_equal(got[:, :, 0], np.rint(deep / 65535 * 255).astype(np.uint8))
