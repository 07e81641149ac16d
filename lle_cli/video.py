"""Video in, video out: decode, enhance frames in batches, re-encode, copy everything else.

Needs PyAV (the ``lle-cli[video]`` extra). What is kept:

* the video codec where this PyAV has an encoder for it (else H.264), its pixel format where the
  encoder takes it (10-bit stays 10-bit), the colour tags (matrix, range, primaries, transfer);
* every frame's timestamp: the encoder works in the input's time base, so constant and variable
  frame rates alike come out with the same frame times;
* the rotation (display matrix) and the container's and streams' metadata (language, creation time);
* audio and subtitle streams, copied packet for packet without re-encoding.

Data streams (timecode, camera telemetry) and attachments are not copied; the result says so.

Per-frame models can answer a small brightness change of the input with a larger one, so a steady
clip would flicker. ``GainStabiliser`` measures each frame's global gain (mean output brightness
over mean input brightness) and smooths it over time with an exponential moving average whose time
constant is in seconds (frame-rate and VFR independent); a scene cut restarts the average. Each
frame is then rescaled to the brightness, between the model's own and the smoothed gain's, that is
closest to the moving average of the output's brightness: a model that amplifies flicker is held to
the input's flicker times the gain, and one that already damps it (Zero-DCE's curves do) keeps its
calm output. The price is a lag of about the time constant behind fast exposure changes.

Memory stays bounded whatever the length: frames stream through in batches, nothing holds the clip.
The output is written to a temporary file beside the target and renamed at the end
(``lle_cli.atomic``): Ctrl-C or an error leaves nothing behind.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np

from .atomic import replacing
from .errors import InputError, OutputError, OutputExistsError, UsageError
from .extras import VIDEO_EXTRA
from .formats import VIDEO_SUFFIXES, is_video_path, muxer_for

__all__ = [
    "VIDEO_SUFFIXES",
    "VideoOptions",
    "VideoResult",
    "FrameEnhancer",
    "GainStabiliser",
    "enhance_video",
    "check_encoder",
    "is_video_path",
    "require_video",
    "video_output_is_complete",
    "frame_brightness",
]

_FALLBACK_ENCODER = "libx264"
# x264/x265 rate control: constant quality; 18 is about visually lossless for 8-bit H.264
_CRF_ENCODERS = {"libx264", "libx265"}
# container keys FFmpeg writes itself; copying them would describe the input's muxer, not ours
_OWN_CONTAINER_KEYS = {"major_brand", "minor_version", "compatible_brands", "encoder"}
_LUMA = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 weights on the encoded values
# below this mean brightness a frame is (nearly) black: its gain is noise, leave it alone
_DARK = 1.0 / 255.0
# a scene cut: the input's brightness at least doubles or halves and moves by this much
_CUT_RATIO = 2.0
_CUT_STEP = 0.02


def check_encoder(name: str) -> None:
    """``UsageError`` now if this FFmpeg has no encoder called ``name`` (``--video-codec``)."""
    av = require_video()
    try:
        av.codec.Codec(name, "w")
    except (av.FFmpegError, ValueError, KeyError):
        raise UsageError(f"--video-codec {name}: this FFmpeg has no such encoder; try libx264, libx265 or mpeg4") from None


def require_video(label: str | None = None):
    """The ``av`` module, or ``MissingExtraError`` naming the ``video`` extra."""
    return VIDEO_EXTRA.load(label)


@dataclass(frozen=True)
class VideoOptions:
    smoothing: float = 0.5  # seconds: time constant of the gain's moving average; 0 turns it off
    codec: str | None = None  # an FFmpeg encoder or codec name; None: the input's, else H.264
    crf: int = 18  # x264/x265 constant quality (lower is better and larger)
    max_batch: int = 4  # frames enhanced in one forward pass at most (memory decides the rest)


@dataclass
class VideoResult:
    frames: int
    encoder: str
    copied: list[str] = field(default_factory=list)  # "audio aac", "subtitle mov_text", ...
    warnings: list[str] = field(default_factory=list)
    flicker_in: float = 0.0  # mean |frame-to-frame change of mean brightness| of the input
    flicker_out: float = 0.0  # the same for the output
    gain: float = 1.0  # mean output brightness / mean input brightness

    @property
    def flicker_ratio(self) -> float:
        """The output's flicker over the input's scaled by the gain: 1 is "no flicker added"."""
        expected = self.flicker_in * self.gain
        return self.flicker_out / expected if expected > 0 else float("nan")


class FrameEnhancer(Protocol):
    """What ``enhance_video`` needs from a model: how many frames fit in one pass, and the pass."""

    def batch_size(self, height: int, width: int) -> int: ...

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) float32 in [0, 1] -> the enhanced frames, same shape."""
        ...


def frame_brightness(rgb: np.ndarray) -> float:
    """Mean Rec. 709 luma of the encoded values (what a viewer sees as brightness), in [0, 1]."""
    return float(np.mean(rgb, axis=(0, 1), dtype=np.float64) @ _LUMA)


class GainStabiliser:
    """Keeps a per-frame model from adding flicker (see the module docstring).

    ``apply(before, after, dt)`` returns ``after`` (the model's output for input frame ``before``)
    rescaled to a brightness between the model's own and the input's times the moving average of
    the gain, the one closest to the moving average of the output's brightness; ``dt`` is the time
    since the previous frame in seconds. A time constant of 0 returns every frame unchanged.
    """

    def __init__(self, time_constant: float) -> None:
        self.time_constant = time_constant
        self._log_gain: float | None = None
        self._last_in: float | None = None
        self._level = 0.0  # moving average of the output's brightness

    def apply(self, before: np.ndarray, after: np.ndarray, dt: float) -> np.ndarray:
        m_in, m_out = frame_brightness(before), frame_brightness(after)
        last_in, self._last_in = self._last_in, m_in
        if self.time_constant <= 0 or m_in < _DARK or m_out < _DARK:
            self._log_gain = None  # (nearly) black: its gain is noise; start afresh after it
            return after
        log_gain = math.log(m_out / m_in)
        cut = last_in is not None and last_in >= _DARK and (
            abs(math.log(m_in / last_in)) > math.log(_CUT_RATIO) and abs(m_in - last_in) > _CUT_STEP
        )
        if self._log_gain is None or cut:
            self._log_gain = log_gain
            self._level = m_out
            return after
        keep = math.exp(-max(dt, 0.0) / self.time_constant)
        self._log_gain = keep * self._log_gain + (1.0 - keep) * log_gain
        smooth = m_in * math.exp(self._log_gain)
        wanted = min(max(self._level, min(smooth, m_out)), max(smooth, m_out))
        self._level = keep * self._level + (1.0 - keep) * wanted
        scale = wanted / m_out
        if abs(scale - 1.0) < 1e-6:
            return after
        return np.clip(after * np.float32(scale), 0.0, 1.0)


class _FlickerMeter:
    """Running sums for ``VideoResult``'s flicker figures: O(1) memory whatever the length."""

    def __init__(self) -> None:
        self.n = 0
        self.sum_in = self.sum_out = self.step_in = self.step_out = 0.0
        self._last: tuple[float, float] | None = None

    def add(self, before: np.ndarray, after: np.ndarray) -> None:
        m_in, m_out = frame_brightness(before), frame_brightness(after)
        if self._last is not None:
            self.step_in += abs(m_in - self._last[0])
            self.step_out += abs(m_out - self._last[1])
        self._last = (m_in, m_out)
        self.n += 1
        self.sum_in += m_in
        self.sum_out += m_out

    def fill(self, result: VideoResult) -> None:
        steps = max(self.n - 1, 1)
        result.flicker_in = self.step_in / steps
        result.flicker_out = self.step_out / steps
        result.gain = self.sum_out / self.sum_in if self.sum_in > 0 else 1.0


def video_output_is_complete(path: str | os.PathLike) -> bool:
    """Whether an existing output opens as a video whose first frame decodes (``--skip-existing``)."""
    try:
        av = require_video()
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                return False
            next(container.decode(container.streams.video[0]))
    except Exception:  # noqa: BLE001 - anything unreadable is "not complete"
        return False
    return True


def enhance_video(
    source: str | os.PathLike,
    target: str | os.PathLike,
    enhancer: FrameEnhancer,
    *,
    options: VideoOptions | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> VideoResult:
    """Enhance every frame of ``source`` into ``target`` (see the module docstring for what is kept).

    ``progress(frames_done, frames_total_or_None)`` is called after every frame. Raises
    ``InputError`` for an unreadable input, ``OutputError`` when encoding or writing fails,
    ``OutputExistsError`` if ``target`` exists and not ``overwrite``; ``target`` is then untouched.
    """
    src, dst = os.fspath(source), Path(target)
    options = options or VideoOptions()
    av = require_video(src)
    if options.smoothing < 0 or not math.isfinite(options.smoothing):
        raise UsageError(f"--smoothing {options.smoothing}: give seconds >= 0 (0 turns it off)")
    muxer = muxer_for(dst)  # named: the temporary file's ".part" suffix hides it from FFmpeg
    if muxer is None:
        raise UsageError(f"{dst}: unknown video suffix; use one of {', '.join(sorted(VIDEO_SUFFIXES))}")
    if not overwrite and os.path.lexists(dst):
        raise _exists(dst)
    try:
        inp = av.open(src)
    except FileNotFoundError:
        raise InputError(f"{src}: no such file; check the path") from None
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"{src}: not a readable video ({_reason(exc)}); check the file or re-export it") from None
    try:
        with replacing(dst) as tmp:
            result = _Transcode(av, inp, src, tmp, muxer, enhancer, options, progress).run()
            if not overwrite and os.path.lexists(dst):  # someone wrote it meanwhile: keep theirs
                raise _exists(dst)
    finally:
        inp.close()
    return result


def _exists(target: Path) -> OutputExistsError:
    return OutputExistsError(f"{target}: already exists; pass --overwrite to replace it or choose another -o")


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0]


class _Transcode:
    """One run: the input is open, the output is a temporary path; ``run`` does the rest."""

    def __init__(self, av, inp, src: str, tmp: Path, muxer: str, enhancer: FrameEnhancer, options: VideoOptions,
                 progress: Callable[[int, int | None], None] | None) -> None:
        self.av, self.inp, self.src, self.tmp, self.muxer = av, inp, src, tmp, muxer
        self.enhancer, self.options, self.progress = enhancer, options, progress
        videos = [s for s in inp.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not videos:
            raise InputError(f"{src}: has no video stream; pass a video or a photo")
        self.vin = videos[0]
        self.vin.codec_context.thread_type = "AUTO"  # decoder threads: never the bottleneck next to the model
        self.total = self.vin.frames or _estimated_frames(inp, self.vin)
        self.stabiliser = GainStabiliser(options.smoothing)
        self.meter = _FlickerMeter()
        self.result = VideoResult(frames=0, encoder="")
        self.out = None
        self.vout = None
        self.copies: dict[int, object] = {}
        self.held: list = []  # packets of copied streams that arrive before the video is set up
        self.high = False
        self.last_pts: int | None = None
        self.last_time: float | None = None
        self.step = 1  # pts increment for frames without a timestamp

    # -- setup -------------------------------------------------------------------------------

    def _open_output(self, first) -> None:
        """Create the output once the first frame is decoded: its size, format and rotation decide."""
        av, vin, opts = self.av, self.vin, self.options
        try:
            self.out = av.open(str(self.tmp), "w", format=self.muxer)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise OutputError(f"{self.tmp.parent}: cannot create the output ({_reason(exc)})") from None
        out = self.out
        out.metadata.update({k: v for k, v in self.inp.metadata.items() if k not in _OWN_CONTAINER_KEYS})
        encoder = self._encoder(opts.codec or vin.codec_context.name)
        rate = vin.average_rate or vin.guessed_rate or Fraction(30)
        vout = out.add_stream(encoder, rate=rate)
        vout.width, vout.height = first.width, first.height
        vout.pix_fmt = self._pix_fmt(encoder, first.format.name)
        self.high = max(c.bits for c in first.format.components) > 8 and self._deep(vout.pix_fmt)
        cc, icc = vout.codec_context, vin.codec_context
        # the encoder counts in the input's time base, so every frame keeps its own timestamp (VFR too)
        vout.time_base = vin.time_base
        cc.time_base = vin.time_base
        self.step = max(1, round(1 / (rate * vin.time_base))) if vin.time_base else 1
        for attr in ("color_range", "colorspace", "color_primaries", "color_trc"):
            value = getattr(first, attr, None) or getattr(icc, attr, None)
            if value:
                setattr(cc, attr, value)
        if icc.sample_aspect_ratio:
            cc.sample_aspect_ratio = icc.sample_aspect_ratio
        if encoder in _CRF_ENCODERS:
            cc.options = {"crf": str(opts.crf), "preset": "medium"}
            if encoder == "libx265":  # x265 prints its banner and statistics straight to stderr otherwise
                cc.options = {**cc.options, "x265-params": "log-level=error"}
        elif vin.bit_rate:
            cc.bit_rate = vin.bit_rate
        matrix = _display_matrix(first)
        if matrix is not None:
            if hasattr(vout, "set_display_matrix"):
                vout.set_display_matrix(matrix)
            else:
                self.result.warnings.append(f"{self.src}: rotation not kept (needs PyAV 18 or newer)")
        vout.metadata.update(vin.metadata)
        self.vout = vout
        self.result.encoder = encoder
        for s in self.inp.streams:
            if s.index == vin.index:
                continue
            label = f"{s.type} stream #{s.index} ({s.codec_context.name if s.codec_context else 'unknown'})"
            if s.type not in ("audio", "subtitle"):
                self.result.warnings.append(f"{self.src}: {label} not copied (only audio and subtitles are)")
                continue
            try:
                copy = out.add_stream_from_template(s)
            except (av.FFmpegError, ValueError) as exc:
                self.result.warnings.append(f"{self.src}: {label} not copied ({_reason(exc)})")
                continue
            copy.metadata.update(s.metadata)
            self.copies[s.index] = copy
            self.result.copied.append(f"{s.type} {s.codec_context.name}")

    def _encoder(self, wanted: str) -> str:
        """An encoder for the input's codec that this FFmpeg has and the container takes, else H.264."""
        av = self.av
        try:
            codec = av.codec.Codec(wanted, "w")
        except (av.FFmpegError, ValueError, KeyError):
            codec = None
        supported = self._supported()
        # the muxer lists codecs (h264), the user may name an encoder (libx264): compare the codecs
        if codec is not None and (supported is None or getattr(codec, "canonical_name", codec.name) in supported):
            return codec.name
        if self.options.codec is not None:
            raise UsageError(f"--video-codec {wanted}: no such encoder here, or {self.muxer} cannot hold it")
        self.result.warnings.append(f"{self.src}: no {wanted} encoder here (or the container cannot hold it); wrote H.264")
        return _FALLBACK_ENCODER

    def _supported(self) -> set[str] | None:
        try:
            return set(self.out.supported_codecs)
        except AttributeError:  # older PyAV: let the muxer decide
            return None

    def _pix_fmt(self, encoder: str, source_fmt: str) -> str:
        formats = [f.name for f in (self.av.codec.Codec(encoder, "w").video_formats or [])]
        if not formats or source_fmt in formats:
            return source_fmt
        return "yuv420p" if "yuv420p" in formats else formats[0]

    def _deep(self, pix_fmt: str) -> bool:
        fmt = self.av.video.format.VideoFormat(pix_fmt)
        return max(c.bits for c in fmt.components) > 8

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> VideoResult:
        av = self.av
        pending: list = []
        batch = 1
        try:
            streams = [self.vin] + [s for s in self.inp.streams if s.type in ("audio", "subtitle")]
            for packet in self._demux(streams):
                if packet.stream.index != self.vin.index:
                    self._copy(packet)
                    continue
                for frame in self._decode(packet):
                    if self.out is None:
                        self._open_output(frame)
                        batch = max(1, min(self.options.max_batch, self.enhancer.batch_size(frame.height, frame.width)))
                        for held in self.held:
                            self._copy(held)
                        self.held = []
                    pending.append(frame)
                    if len(pending) >= batch:
                        self._enhance(pending)
                        pending = []
            if pending:
                self._enhance(pending)
            if self.out is None:
                raise InputError(f"{self.src}: no video frame could be decoded; the file is empty or corrupt")
            if self.vin.frames and self.result.frames < self.vin.frames:
                # FFmpeg stops quietly at the end of the data: say so rather than pass a cut clip off as whole
                self.result.warnings.append(
                    f"{self.src}: only {self.result.frames} of {self.vin.frames} frames could be decoded; the file may be truncated")
            self._mux(self.vout.encode(None))
            self.out.close()
        except av.FFmpegError as exc:  # a muxer or encoder failure not caught closer to its source
            raise OutputError(f"{self.src}: encoding failed ({_reason(exc)}); nothing was written") from None
        finally:
            if self.out is not None:
                try:
                    self.out.close()
                except Exception:  # noqa: BLE001 - already failing; the temporary file is removed anyway
                    pass
        self.meter.fill(self.result)
        return self.result

    def _demux(self, streams):
        try:
            yield from self.inp.demux(streams)
        except self.av.FFmpegError as exc:
            raise InputError(f"{self.src}: the video is truncated or corrupt ({_reason(exc)})") from None

    def _decode(self, packet) -> list:
        try:
            return packet.decode()
        except self.av.FFmpegError as exc:
            raise InputError(f"{self.src}: the video is truncated or corrupt ({_reason(exc)})") from None

    def _copy(self, packet) -> None:
        if packet.dts is None and packet.size == 0:  # the demuxer's end-of-stream marker
            return
        if self.out is None:
            self.held.append(packet)
            return
        target = self.copies.get(packet.stream.index)
        if target is None:
            return
        packet.stream = target
        self._mux([packet])

    def _mux(self, packets) -> None:
        try:
            for p in packets:
                self.out.mux(p)
        except self.av.FFmpegError as exc:
            raise OutputError(f"{self.tmp.parent}: writing the video failed ({_reason(exc)})") from None

    def _to_rgb(self, frame) -> np.ndarray:
        kwargs = {"src_color_range": frame.color_range} if frame.color_range else {}
        if self.high:
            arr = frame.to_ndarray(format="rgb48le", **kwargs)
            return arr.astype(np.float32) / np.float32(65535)
        return frame.to_ndarray(format="rgb24", **kwargs).astype(np.float32) / np.float32(255)

    def _from_rgb(self, rgb: np.ndarray):
        av = self.av
        top = 65535 if self.high else 255
        scaled = np.rint(np.clip(rgb, 0.0, 1.0) * np.float32(top)).astype(np.uint16 if self.high else np.uint8)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(scaled), format="rgb48le" if self.high else "rgb24")
        cc = self.vout.codec_context
        kwargs = {}
        if cc.colorspace:
            kwargs["dst_colorspace"] = cc.colorspace
        if cc.color_range:
            kwargs["dst_color_range"] = cc.color_range
        return frame.reformat(format=self.vout.pix_fmt, **kwargs)

    def _timestamp(self, frame) -> int:
        """The input frame's pts, made strictly increasing (encoders refuse anything else)."""
        pts = frame.pts
        if pts is None:
            pts = 0 if self.last_pts is None else self.last_pts + self.step
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1
        self.last_pts = pts
        return pts

    def _enhance(self, frames: list) -> None:
        before = np.stack([self._to_rgb(f) for f in frames])
        after = self.enhancer(before)
        tb = self.vin.time_base or Fraction(1, 30)
        for i, frame in enumerate(frames):
            pts = self._timestamp(frame)
            now = float(pts * tb)
            dt = now - self.last_time if self.last_time is not None else 0.0
            self.last_time = now
            out_rgb = self.stabiliser.apply(before[i], after[i], dt)
            self.meter.add(before[i], out_rgb)
            out = self._from_rgb(out_rgb)
            out.pts = pts
            out.time_base = tb
            try:
                packets = self.vout.encode(out)
            except self.av.FFmpegError as exc:
                raise OutputError(f"{self.src}: the {self.result.encoder} encoder failed ({_reason(exc)})") from None
            self._mux(packets)
            self.result.frames += 1
            if self.progress is not None:
                self.progress(self.result.frames, self.total)


def _estimated_frames(inp, vin) -> int | None:
    """Frames from duration x rate where the container keeps no count (Matroska, WebM): for the
    progress bar only."""
    rate = vin.average_rate or vin.guessed_rate
    if vin.duration and vin.time_base:
        seconds = float(vin.duration * vin.time_base)
    elif inp.duration:
        seconds = inp.duration / 1_000_000  # AV_TIME_BASE
    else:
        return None
    return max(1, round(seconds * float(rate))) if rate else None


def _display_matrix(frame) -> list[int] | None:
    """The frame's rotation/flip as FFmpeg's 3x3 display matrix, or None when it has none."""
    for sd in frame.side_data:
        if getattr(sd.type, "name", "") == "DISPLAYMATRIX":
            raw = bytes(sd)
            if len(raw) == 36:
                return list(struct.unpack("=9i", raw))
    return None
