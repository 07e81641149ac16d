"""``lle_cli.naming``: the names of every file lle writes are pinned, and read back exactly."""

from __future__ import annotations

import fnmatch
import itertools
import math
import random
import struct
from pathlib import Path

import pytest

from lle_cli import naming
from lle_cli.batch import OutputOptions, expand_inputs, plan_jobs
from lle_cli.naming import (
    EnhancedName,
    OutputName,
    SheetName,
    enhance_output,
    format_number,
    heatmap_name,
    input_stem,
    is_enhanced_output,
    is_sample_output,
    mean_name,
    parse_enhanced_name,
    parse_output_name,
    parse_shard_record_name,
    parse_sheet_name,
    record_name,
    sample_folder,
    sample_name,
    sheet_name,
    shard_record_name,
)
from lle_cli.sampling import SampleOptions, output_names

# Stems users really have: brackets (rich markup, glob classes), spaces, unicode, dots, a name that
# already looks like an lle output, shell metacharacters, and control characters POSIX allows.
ODD_STEMS = [
    "a [red]b", "dir[x]", "[x]", "IMG 0042 (1)", "ночь", "夜景 写真", "café", "🌙 moon", "dots.in.stem", "x_sample01_tau2",
    "p_mean_tau1_off0", "q_sheet_tau1_off0", "50%_*?{a,b}", "-leading-dash", "tab\there", "new\nline", "x_enhanced",
]


def _random_floats(rng: random.Random, count: int) -> list[float]:
    """Finite doubles of every magnitude (random bit patterns), so most need 15-17 digits to round-trip."""
    out: list[float] = []
    while len(out) < count:
        (x,) = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if math.isfinite(x):
            out.append(x)
    return out


TAUS = [0.0, 1.0, 0.5, 0.1 + 0.2, 1 / 3, 2 / 3, 1e-05, 1e-300, 5e-324, 2.5e17, 1e16, 1.7976931348623157e308, 123456789.125, 7.0]
OFFSETS = [0.0, -0.0, -0.2, 0.4, -0.4, -1.5e-07, -3.0, 0.1 + 0.2, -(0.1 + 0.2), -1e-300, -5e-324, 1e22, -2.5e17]


# ---- today's names, pinned: a change here breaks users' scripts ---------------------------------


def test_enhance_names_are_pinned() -> None:
    assert enhance_output("shots/photo.jpg") == Path("shots/photo_enhanced.jpg")
    assert enhance_output("shots/photo.jpeg") == Path("shots/photo_enhanced.jpeg")  # own spelling kept
    assert enhance_output("shots/scan.TIF") == Path("shots/scan_enhanced.TIF")
    assert enhance_output("IMG_0042.HEIC") == Path("IMG_0042_enhanced.HEIC")
    assert enhance_output("DSC_0042.NEF") == Path("DSC_0042_enhanced.tif")  # RAW is never written: 16-bit TIFF
    assert enhance_output("DSC_0042.NEF", fmt="PNG") == Path("DSC_0042_enhanced.png")
    assert enhance_output("photo.jpg", fmt="TIFF") == Path("photo_enhanced.tif")
    assert enhance_output("photo.png", fmt="JPEG") == Path("photo_enhanced.jpg")
    assert enhance_output("clip.mp4", fmt="PNG") == Path("clip_enhanced.mp4")  # a video keeps its container
    assert enhance_output("photo.jpg", suffix="-bright") == Path("photo-bright.jpg")
    assert enhance_output("photo.jpg", suffix="") == Path("photo.jpg")
    # -o DIR: the folder says what the files are, so no suffix
    assert enhance_output("shots/photo.jpg", out_dir="out") == Path("out/photo.jpg")
    assert enhance_output("DSC_0042.NEF", out_dir="out") == Path("out/DSC_0042.tif")
    assert enhance_output("-", out_dir="out") == Path("out/stdin.png")
    assert enhance_output("-", out_dir="out", fmt="WEBP") == Path("out/stdin.webp")
    assert naming.ENHANCED_SUFFIX == "_enhanced" and input_stem("-") == "stdin"


def test_sample_names_are_pinned() -> None:
    assert sample_name("dark", 3, 0.5, -0.2, ".png") == "dark_sample03_tau0.5_off-0.2.png"
    assert sample_name("dark", 0, 1.0, 0.0, ".jpg") == "dark_sample00_tau1_off0.jpg"
    assert sample_name("dark", 7, 0.0, 0.4, ".tif", n=101) == "dark_sample007_tau0_off0.4.tif"  # digits for 0..100
    assert mean_name("dark", 0.5, -0.2, ".png") == "dark_mean_tau0.5_off-0.2.png"
    assert sheet_name("dark", (0.5, 1.0), (-0.2, 0.0)) == "dark_sheet_tau0.5,1_off-0.2,0.png"
    long = tuple(i / 100 - 0.5 for i in range(101))
    assert sheet_name("dark", (1.0,), long) == "dark_sheet_tau1_off-0.5..0.5.png"  # a long sweep: its range
    # the composition lle sample uses: every sample, every mean, one sheet
    names, means, sheet = output_names("dark", ".png", SampleOptions(n=2, taus=(0.5,), offsets=(-0.2,), mean=True))
    assert names == ["dark_sample00_tau0.5_off-0.2.png", "dark_sample01_tau0.5_off-0.2.png"]
    assert means == {(0.5, -0.2): "dark_mean_tau0.5_off-0.2.png"} and sheet == "dark_sheet_tau0.5_off-0.2.png"
    assert [format_number(v) for v in (1.0, 0.5, -0.2, -0.0, 1e-05, 2.5e17, 1e16)] == ["1", "0.5", "-0.2", "0", "1e-05", "2.5e17", "1e16"]


def test_heatmap_and_record_names_are_pinned() -> None:
    assert heatmap_name("scans/odd.png") == "odd_ood.png" and heatmap_name("-") == "stdin_ood.png"
    taken: set[str] = set()
    for _ in range(3):  # x.png from three folders in one run
        taken.add(heatmap_name("a/x.png", taken))
    assert taken == {"x_ood.png", "x_2_ood.png", "x_3_ood.png"}
    assert heatmap_name("x_2.png", taken) == "x_2_2_ood.png"  # a stem that looks like a counter does not collide
    assert naming.RECORD_NAME == record_name() == "lle-run.json"
    assert record_name("0a1b2c") == "lle-run.0a1b2c.json"
    assert shard_record_name(2, 3) == "lle-run.2-of-3.json" and parse_shard_record_name("lle-run.2-of-3.json") == (2, 3)
    for name in ("lle-run.json", "lle-run.0a1b2c.json", "lle-run.2-of-3.json.tmp", "x-lle-run.1-of-2.json"):
        assert parse_shard_record_name(name) is None, name
    # every record file beside lle-run.json is found by the folder's glob; shard records by theirs
    assert fnmatch.fnmatch(shard_record_name(12, 40), naming.RECORD_GLOB)
    assert fnmatch.fnmatch(shard_record_name(12, 40), naming.SHARD_RECORD_GLOB)
    assert fnmatch.fnmatch(record_name("0a1b2c"), naming.RECORD_GLOB)
    assert not fnmatch.fnmatch(record_name("0a1b2c"), naming.SHARD_RECORD_GLOB)


# ---- round trips -----------------------------------------------------------------------------


def test_format_number_round_trips_every_double_in_file_name_safe_characters() -> None:
    for v in [*TAUS, *OFFSETS, *_random_floats(random.Random(22), 2000)]:
        text = format_number(v)
        assert float(text) == v and all(c in "0123456789.-e" for c in text), (v, text)
        assert ".." not in text and "e+" not in text  # ".." marks a sheet's range
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError):
            format_number(bad)


@pytest.mark.parametrize("extension", [".png", ".jpg", ".tif", ".webp", ".bmp", ".heic", ".JPG", ""])
def test_sample_and_mean_names_round_trip(extension: str) -> None:
    rng = random.Random(extension)
    taus = [*TAUS, *(abs(x) for x in _random_floats(rng, 40))]
    offsets = [*OFFSETS, *_random_floats(rng, 40)]
    for stem, tau, offset in zip(itertools.cycle(["dark", *ODD_STEMS]), taus * 2, offsets + offsets[::-1]):
        for index, n in ((0, 1), (3, 4), (9, 10), (42, 100), (999, 1000), (12345, 3)):
            name = sample_name(stem, index, tau, offset, extension, n=n)
            parsed = parse_output_name(name)
            assert parsed == OutputName(stem, index, tau, offset, extension) and parsed.kind == "sample", name
            assert is_sample_output(name) and parse_sheet_name(name) is None
        name = mean_name(stem, tau, offset, extension)
        parsed = parse_output_name(name)
        assert parsed == OutputName(stem, None, tau, offset, extension) and parsed.kind == "mean", name
        assert is_sample_output(name)


def test_sheet_names_round_trip() -> None:
    rng = random.Random(7)
    for stem in ["dark", *ODD_STEMS]:
        for taus, offsets in [((0.0,), (0.0,)), ((0.5, 1.0), (-0.2, 0.0, 0.2)), ((1e-300,), (-5e-324, 1e22)),
                              (tuple(abs(x) for x in _random_floats(rng, 3)), tuple(_random_floats(rng, 2)))]:
            name = sheet_name(stem, taus, offsets)
            assert parse_sheet_name(name) == SheetName(stem, taus, offsets) and is_sample_output(name), name
            assert parse_output_name(name) is None  # a sheet is no single sample
        # a sweep too long for a file name keeps its range, and says that it is a range
        long = tuple(i / 100 - 0.5 for i in range(101))
        parsed = parse_sheet_name(sheet_name(stem, long, (0.25,)))
        assert parsed == SheetName(stem, (-0.5, 0.5), (0.25,), taus_span=True) and parsed.kind == "sheet"
        assert len(sheet_name(stem, long, long).encode()) < 255  # file systems stop at 255 bytes


def test_enhanced_names_round_trip() -> None:
    for stem in ["photo", *ODD_STEMS]:
        for ext, fmt in ((".png", None), (".jpeg", None), (".NEF", None), (".jpg", "PNG"), (".mov", "JPEG")):
            for suffix in ("_enhanced", "-bright", ".lle", " (enhanced)"):
                out = enhance_output(f"in/{stem}{ext}", suffix=suffix, fmt=fmt)
                assert out.parent == Path("in") and out.name.startswith(stem + suffix), out
                assert parse_enhanced_name(out, suffix) == EnhancedName(stem, out.suffix)
                assert is_enhanced_output(out, suffix)
                # the rule is the name's tail: a photo already named like an output is taken for one
                assert is_enhanced_output(f"in/{stem}{ext}", suffix) == stem.endswith(suffix)


# ---- no collisions ---------------------------------------------------------------------------


def test_different_tau_or_offset_never_share_a_name() -> None:
    close = [0.1, math.nextafter(0.1, 1), math.nextafter(0.1, 0), 0.0, 1e-300, 5e-324, 1.0, 1.0000000000000002]
    names: dict[str, tuple] = {}
    for tau, offset in itertools.product(close, [*close, *(-x for x in close if x)]):
        for key, name in [(("sample", 0, tau, offset), sample_name("p", 0, tau, offset, ".png")),
                          (("sample", 1, tau, offset), sample_name("p", 1, tau, offset, ".png")),
                          (("mean", tau, offset), mean_name("p", tau, offset, ".png")),
                          (("sheet", tau, offset), sheet_name("p", (tau,), (offset,)))]:
            assert names.setdefault(name, key) == key, (name, names[name], key)
    # -0.0 is the same latent as 0.0: one name, not two files of the same picture
    assert sample_name("p", 0, 1.0, -0.0) == sample_name("p", 0, 1.0, 0.0)
    # runs with other sweeps into one folder write disjoint files
    runs = [SampleOptions(n=3, taus=(1.0,), mean=True), SampleOptions(n=3, taus=(0.0,), mean=True),
            SampleOptions(n=3, taus=(1.0,), offsets=(-0.2,), mean=True), SampleOptions(n=3, taus=(0.5, 2.0), mean=True)]
    files = [[*s, *m.values(), sh] for s, m, sh in (output_names("p", ".png", o) for o in runs)]
    assert len({f for fs in files for f in fs}) == sum(len(fs) for fs in files)


def test_photos_are_not_taken_for_outputs() -> None:
    for photo in ("dark.png", "beach_sampler.jpg", "meanwhile.png", "dark_sheets.png", "holiday_mean_2.png", "a_ood.png"):
        assert not is_sample_output(photo) and parse_output_name(photo) is None and parse_sheet_name(photo) is None
        assert not is_enhanced_output(photo)
    # older lle sample names (tau/offset tags optional) are still recognised as outputs
    for old in ("dark_sample00.png", "dark_sample00_tau0.5.png", "dark_sample01_off+0.2.png", "dark_mean.png", "dark_sheet.png"):
        assert is_sample_output(old), old
    assert parse_enhanced_name("photo.png") is None and parse_enhanced_name("x_enhanced.png", "") is None
    assert not is_enhanced_output("x_enhanced.png", "")  # --suffix "": nothing in a folder is an output


# ---- folders ---------------------------------------------------------------------------------


def test_recursive_layout_is_mirrored_under_the_output_folder() -> None:
    cases = {
        "in/x.png": "out/x.png",
        "in/a/x.png": "out/a/x.png",
        "in/b/x.png": "out/b/x.png",
        "in/a/deep/er/y.NEF": "out/a/deep/er/y.tif",
        "in/[sp ace]/ночь.jpeg": "out/[sp ace]/ночь.jpeg",
    }
    for source, target in cases.items():
        assert enhance_output(source, out_dir="out", root="in") == Path(target)
    assert len({enhance_output(s, out_dir="out", root="in") for s in cases}) == len(cases)
    assert enhance_output("in/a/x.png", out_dir="out") == Path("out/x.png")  # no root: flat, as without --recursive
    assert sample_folder("in/a/x.png", None) == Path("in/a") and sample_folder("in/a/x.png", "out") == Path("out")
    assert sample_folder("-", None) == Path.cwd()


def test_plan_jobs_uses_these_names(tmp_path: Path) -> None:
    """lle enhance's planner names its outputs through naming, for a recursive folder and beside inputs."""
    root = tmp_path / "in [1]"
    files = [root / "x.png", root / "a" / "x.png", root / "a" / "ночь 2.jpeg", root / "b" / "c" / "y.tif"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"not read while planning")
    out = tmp_path / "out"
    jobs, _ = plan_jobs([str(root)], str(out) + "/", OutputOptions(), recursive=True)
    assert {Path(j.input): Path(j.output) for j in jobs} == {f: out / f.relative_to(root) for f in files}
    # beside the inputs: <stem>_enhanced<ext>, and those outputs are not inputs the next time
    (root / "x_enhanced.png").write_bytes(b"an earlier output")
    jobs, _ = plan_jobs([str(root)], None, OutputOptions(), recursive=True)
    assert {Path(j.input): Path(j.output) for j in jobs} == {f: enhance_output(f) for f in files}
    assert [p for p, _ in expand_inputs([str(root)], skip_suffix="_enhanced")] == [str(root / "x.png")]
