"""Video enhancement (lle_cli.video through `lle enhance`): frames, timing, rotation, copied audio and
subtitles, flicker, streaming in batches, atomic output, batch rules, and the missing-extra message.

Clips are made here with PyAV: a few 64x48 frames, so each test takes a second or two.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lle_cli import api
from lle_cli.batch import ModelFrames
from lle_cli.cli.main import main
from lle_cli.errors import NonFiniteError
from lle_cli.video import GainStabiliser, VideoOptions, enhance_video, frame_brightness

av = pytest.importorskip("av", reason="PyAV (the video extra) is not installed")

W, H, N = 64, 48, 12
# variable frame rate: frame durations in 1/600 s (24 fps, with a few frames held twice or three times as long)
DURATIONS = [25, 25, 50, 25, 25, 75, 25, 25, 50, 25, 25, 25]


def make_clip(path: Path, *, subtitles: bool = False, rotation: int = 90) -> Path:
    """A dark clip whose brightness flickers by +-5% frame to frame, with AAC audio (and SubRip text)."""
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=24)
    v.width, v.height, v.pix_fmt = W, H, "yuv420p"
    tb = Fraction(1, 600)
    v.time_base = tb
    v.codec_context.time_base = tb
    v.codec_context.options = {"crf": "10"}
    if rotation:
        v.set_display_rotation(rotation)
    a = out.add_stream("aac", rate=8000)
    a.layout = "mono"
    s = out.add_mux_stream("subrip", time_base=Fraction(1, 1000)) if subtitles else None
    yy, xx = np.mgrid[0:H, 0:W]
    base = (0.10 + 0.10 * xx / W + 0.04 * np.sin(yy / 3.0))[..., None] * np.array([1.0, 0.9, 0.8])
    pts = 0
    for i in range(N):
        rgb = np.clip(base * (1.0 + 0.05 * (-1) ** i), 0, 1)
        frame = av.VideoFrame.from_ndarray((rgb * 255).round().astype(np.uint8), format="rgb24")
        frame.pts, frame.time_base = pts, tb
        pts += DURATIONS[i]
        for p in v.encode(frame):
            out.mux(p)
    for p in v.encode():
        out.mux(p)
    t = np.arange(4000) / 8000
    tone = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], format="fltp", layout="mono")
    tone.sample_rate, tone.pts = 8000, 0
    for p in [*a.encode(tone), *a.encode()]:
        out.mux(p)
    if s is not None:
        cue = av.Packet(b"Lights, please")
        cue.stream, cue.pts, cue.dts, cue.duration, cue.time_base = s, 100, 100, 400, Fraction(1, 1000)
        out.mux(cue)
    out.close()
    return path


def probe(path: Path) -> dict:
    """What a viewer gets: frame times, rotation, mean brightness per frame, and the copied packets."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(v))
        info = {
            "codec": v.codec_context.name,
            "times": [round(float(f.pts * f.time_base), 6) for f in frames],
            "rotation": frames[0].rotation,
            "means": np.array([frame_brightness(f.to_ndarray(format="rgb24") / 255.0) for f in frames]),
        }
    with av.open(str(path)) as c:
        info["audio"] = [(p.pts, bytes(p)) for p in c.demux(c.streams.audio[0]) if p.size] if c.streams.audio else []
    with av.open(str(path)) as c:
        subs = c.streams.subtitles
        info["subtitles"] = [(p.pts, bytes(p)) for p in c.demux(subs[0]) if p.size] if subs else []
    return info


def flicker_ratio(means_in: np.ndarray, means_out: np.ndarray) -> float:
    """Mean |frame-to-frame change of mean brightness| of the output over the input's times the gain."""
    gain = means_out.mean() / means_in.mean()
    return float(np.abs(np.diff(means_out)).mean() / (np.abs(np.diff(means_in)).mean() * gain))


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def model():
    return api.load_model(None, device="cpu")


def test_enhanced_clip_keeps_frames_timing_rotation_and_audio(tmp_path, capsys) -> None:
    clip = make_clip(tmp_path / "clip.mp4")
    code, out, err = run(capsys, "enhance", clip, "-o", f"{tmp_path / 'out'}/", "--json")
    assert code == 0, err
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["status"] == "ok" and record["frames"] == N
    written = tmp_path / "out" / "clip.mp4"
    assert Path(record["output"]) == written
    assert [p.name for p in written.parent.iterdir()] == ["clip.mp4"]  # no temporary file left

    before, after = probe(clip), probe(written)
    assert after["codec"] == before["codec"] == "h264"
    assert len(after["times"]) == len(before["times"]) == N
    assert after["times"] == before["times"]  # variable frame rate: every frame at its own time
    assert len(set(np.diff(before["times"]).round(4))) > 1  # (the clip really is VFR)
    assert after["rotation"] == before["rotation"] == 90
    assert after["audio"] and after["audio"] == before["audio"]  # copied, byte for byte
    assert after["means"].mean() > 1.5 * before["means"].mean()  # it was enhanced
    assert flicker_ratio(before["means"], after["means"]) <= 1.5


def test_subtitles_and_audio_are_copied_in_matroska(tmp_path, model) -> None:
    clip = make_clip(tmp_path / "clip.mkv", subtitles=True, rotation=0)
    result = enhance_video(clip, tmp_path / "out.mkv", ModelFrames(model))
    before, after = probe(clip), probe(tmp_path / "out.mkv")
    assert result.frames == N and sorted(result.copied) == ["audio aac", "subtitle srt"]
    assert after["subtitles"] == before["subtitles"] == [(100, b"Lights, please")]
    assert after["audio"] == before["audio"]
    assert after["times"] == before["times"]


def test_ten_bit_hevc_stays_ten_bit_hevc_quietly(tmp_path, capfd) -> None:
    clip = tmp_path / "ten.mkv"
    out = av.open(str(clip), "w")
    v = out.add_stream("libx265", rate=24)
    v.width, v.height, v.pix_fmt = W, H, "yuv420p10le"
    v.codec_context.options = {"x265-params": "log-level=none"}
    for i in range(6):
        # 10-bit levels 8-bit video cannot hold: 0.2 + i/1000
        rgb = np.full((H, W, 3), 0.2 + i / 1000)
        frame = av.VideoFrame.from_ndarray((rgb * 65535).astype(np.uint16), format="rgb48le").reformat(format="yuv420p10le")
        frame.pts = i
        for p in v.encode(frame):
            out.mux(p)
    for p in v.encode():
        out.mux(p)
    out.close()
    capfd.readouterr()

    class Same:
        def batch_size(self, height: int, width: int) -> int:
            return 4

        def __call__(self, frames: np.ndarray) -> np.ndarray:
            return frames

    result = enhance_video(clip, tmp_path / "out.mkv", Same())
    assert result.encoder == "libx265" and not result.warnings
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
        levels = [float(f.to_ndarray(format="rgb48le").mean()) / 65535 for f in c.decode(video=0)]
    assert np.abs(np.array(levels) - (0.2 + np.arange(6) / 1000)).max() < 1.5 / 1000
    assert len(set(np.round(levels, 6))) >= 4  # 8-bit video would hold these six levels as two at most
    assert "x265" not in capfd.readouterr().err  # the encoder's banner does not reach the user


def test_video_codec_choice(tmp_path, capsys) -> None:
    clip = make_clip(tmp_path / "clip.mp4")
    code, _, err = run(capsys, "enhance", clip, "-o", tmp_path / "m.mp4", "--video-codec", "mpeg4", "-q")
    assert code == 0, err
    assert probe(tmp_path / "m.mp4")["codec"] == "mpeg4"
    code, _, err = run(capsys, "enhance", clip, "-o", tmp_path / "h.mkv", "--video-codec", "libx265", "-q")
    assert code == 0, err
    assert probe(tmp_path / "h.mkv")["codec"] == "hevc"  # an encoder's name works as well as a codec's
    code, _, err = run(capsys, "enhance", clip, "-o", tmp_path / "n.mp4", "--video-codec", "no-such-codec")
    assert code == 2 and "--video-codec no-such-codec" in err
    assert not (tmp_path / "n.mp4").exists()


def test_strength_zero_gives_the_input_frames_back(tmp_path, capsys) -> None:
    clip = make_clip(tmp_path / "clip.mp4")
    code, _, err = run(capsys, "enhance", clip, "-o", tmp_path / "same.mp4", "--strength", "0", "-q")
    assert code == 0, err
    before, after = probe(clip), probe(tmp_path / "same.mp4")
    assert np.abs(after["means"] - before["means"]).max() < 1.5 / 255  # re-encoding only


def _cubic_model(x: np.ndarray) -> np.ndarray:
    """A per-frame "auto exposure" that overshoots: output brightness ~ input brightness cubed, so a
    +-5% flicker of the input comes out as +-15%."""
    m = frame_brightness(x)
    return np.clip(x * 40.0 * m * m, 0.0, 1.0)


def _stabilised(model, tau: float, frames: list[np.ndarray], fps: float = 24.0) -> tuple[np.ndarray, np.ndarray]:
    st = GainStabiliser(tau)
    means_in, means_out = [], []
    for x in frames:
        y = st.apply(x, model(x), 1.0 / fps)
        means_in.append(frame_brightness(x))
        means_out.append(frame_brightness(y))
    return np.array(means_in), np.array(means_out)


def test_stabiliser_holds_an_amplifying_model_to_the_inputs_flicker(rng) -> None:
    base = rng.uniform(0.05, 0.25, (24, 32, 3)).astype(np.float32)
    # +-5% flicker on top of a slow brightening (5% a second at 24 fps) that the output must follow
    trend = [1 + 0.002 * i for i in range(72)]
    frames = [base * np.float32((1 + 0.05 * (-1) ** i) * t) for i, t in enumerate(trend)]
    m_in, raw_out = _stabilised(_cubic_model, 0.0, frames)
    assert flicker_ratio(m_in, raw_out) > 2.5  # the problem: the model triples the flicker
    m_in, out = _stabilised(_cubic_model, 0.5, frames)
    assert flicker_ratio(m_in, out) <= 1.25
    # and the last second is as bright as the model makes the same scene without flicker
    steady = np.array([frame_brightness(_cubic_model(base * np.float32(t))) for t in trend])
    assert abs(out[-24:].mean() / steady[-24:].mean() - 1) < 0.06


def test_stabiliser_leaves_a_calm_model_calm(rng) -> None:
    base = rng.uniform(0.05, 0.25, (24, 32, 3)).astype(np.float32)
    frames = [base * np.float32(1 + 0.05 * (-1) ** i) for i in range(24)]
    calm = np.sqrt  # compresses brightness changes, as Zero-DCE's curves do
    m_in, raw_out = _stabilised(calm, 0.0, frames)
    _, out = _stabilised(calm, 0.5, frames)
    assert flicker_ratio(m_in, out) <= flicker_ratio(m_in, raw_out) + 1e-6 < 1.0


def test_stabiliser_restarts_at_a_scene_cut(rng) -> None:
    dark = rng.uniform(0.02, 0.08, (24, 32, 3)).astype(np.float32)
    bright = rng.uniform(0.3, 0.6, (24, 32, 3)).astype(np.float32)
    frames = [dark] * 10 + [bright] * 3
    _, raw_out = _stabilised(_cubic_model, 0.5, frames)
    _, plain = _stabilised(_cubic_model, 0.0, frames)
    assert raw_out[10] == pytest.approx(plain[10])  # the first frame after the cut is the model's own


def test_frames_stream_through_in_bounded_batches_with_progress(tmp_path) -> None:
    clip = make_clip(tmp_path / "clip.mp4")
    batches: list[int] = []
    progress: list[tuple[int, int | None]] = []

    class Doubler:
        def batch_size(self, height: int, width: int) -> int:
            assert (height, width) == (H, W)
            return 100  # "memory would allow 100": VideoOptions.max_batch still caps it

        def __call__(self, frames: np.ndarray) -> np.ndarray:
            batches.append(len(frames))
            return np.clip(frames * 2, 0, 1)

    result = enhance_video(clip, tmp_path / "out.mp4", Doubler(), options=VideoOptions(max_batch=5),
                           progress=lambda done, total: progress.append((done, total)))
    assert batches == [5, 5, 2] and result.frames == N
    assert progress == [(i, N) for i in range(1, N + 1)]


def test_batched_frames_equal_one_at_a_time(model, rng) -> None:
    frames = (rng.random((3, 24, 32, 3)) * 0.3).astype(np.float32)
    together = ModelFrames(model)(frames)
    apart = np.stack([model.enhance(f) for f in frames])
    np.testing.assert_allclose(together, apart, atol=1e-5)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, NonFiniteError])
def test_interrupt_or_error_midway_leaves_no_file(tmp_path, failure) -> None:
    clip = make_clip(tmp_path / "clip.mp4")
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    class Failing:
        calls = 0

        def batch_size(self, height: int, width: int) -> int:
            return 4

        def __call__(self, frames: np.ndarray) -> np.ndarray:
            self.calls += 1
            if self.calls == 2:  # Ctrl-C, or a model that gives NaN, after the first frames were encoded
                raise failure("stop")
            return frames

    with pytest.raises(failure):
        enhance_video(clip, out_dir / "clip.mp4", Failing())
    assert list(out_dir.iterdir()) == []  # neither the output nor its temporary file


def test_bad_video_in_a_folder_is_reported_and_the_batch_goes_on(tmp_path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder / "a.mp4")
    (folder / "b.mp4").write_bytes(make_clip(tmp_path / "whole.mp4").read_bytes()[:400])  # cut short
    Image.fromarray(np.full((12, 16, 3), 40, np.uint8)).save(folder / "c.png")
    code, out, _ = run(capsys, "enhance", folder, "-o", f"{tmp_path / 'out'}/", "--json")
    assert code == 1
    records = {Path(r["input"]).name: r for r in map(json.loads, out.splitlines())}
    assert [records[n]["status"] for n in ("a.mp4", "b.mp4", "c.png")] == ["ok", "error", "ok"]
    assert "b.mp4" in records["b.mp4"]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mp4", "c.png", "lle-run.json"]


def test_existing_output_is_kept_without_overwrite(tmp_path, capsys) -> None:
    clip = make_clip(tmp_path / "clip.mp4")
    target = tmp_path / "out.mp4"
    target.write_bytes(b"someone else's file")
    code, _, err = run(capsys, "enhance", clip, "-o", target)
    assert code == 1 and "already exists" in err
    assert target.read_bytes() == b"someone else's file"
    code, _, err = run(capsys, "enhance", clip, "-o", target, "--overwrite", "-q")
    assert code == 0, err
    assert len(probe(target)["times"]) == N


def test_missing_pyav_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch) -> None:
    clip = make_clip(tmp_path / "clip.mp4")
    monkeypatch.setitem(sys.modules, "av", None)  # what `import av` does when PyAV is not installed
    code, out, err = run(capsys, "enhance", clip, "-o", f"{tmp_path / 'out'}/")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0
    assert 'pip install "lle-cli[video]"' in err and "clip.mp4" in err
    assert not (tmp_path / "out").exists()


def test_sample_refuses_a_video(tmp_path, capsys) -> None:
    clip = make_clip(tmp_path / "clip.mp4")
    code, _, err = run(capsys, "sample", clip)
    assert code == 2
    assert "is a video" in err and "lle enhance" in err
