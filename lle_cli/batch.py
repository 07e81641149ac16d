"""Batch enhancement: expand inputs, plan outputs, run each file, never stop the batch for one bad file.

The CLI only renders what this yields (progress bar, JSON lines, summary); everything that decides
what is read and written lives here so the Python API behaves the same. Photos (JPEG, PNG, TIFF,
WebP, BMP, HEIC, AVIF, camera RAW) go through read -> enhance -> encode; a video (``lle_cli.video``)
is one job that streams its frames through the same model. ``--strength`` blends every output with
its input in linear light.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError, LLEError, OutputExistsError, UsageError
from .formats import FORMATS
from .imageio import (
    IMAGE_SUFFIXES,
    RAW_MODES,
    Picture,
    check_format_available,
    check_input_available,
    encode_image,
    format_from_suffix,
    is_raw_path,
    normalise_format,
    read_image,
    write_bytes_atomic,
)
from .naming import ENHANCED_SUFFIX, STDIO, enhance_output, is_enhanced_output
from .video import (
    VIDEO_SUFFIXES,
    VideoOptions,
    check_encoder,
    enhance_video,
    is_video_path,
    require_video,
    video_output_is_complete,
)
from .digest import sha256_file

if TYPE_CHECKING:  # the model code (PyTorch) is imported by whoever loads a model, not here
    from .runner import LoadedModel

__all__ = [
    "OutputOptions", "Job", "JobResult", "expand_inputs", "plan_jobs", "run_job", "run_batch", "STDIO",
    "blend_linear", "ModelFrames", "run_video_job",
]

FrameProgress = Callable[["Job", int, "int | None"], None]


@dataclass(frozen=True)
class OutputOptions:
    suffix: str = ENHANCED_SUFFIX  # added to the stem when writing beside the input
    format: str | None = None  # None: same as the input (PNG for stdin, 16-bit TIFF for RAW); videos keep theirs
    quality: int = 95
    bit_depth: int | None = None  # None: keep the input's (8 or 16) where the format allows
    overwrite: bool = False
    in_place: bool = False  # an output that is its own input replaces it (atomically); refused otherwise
    skip_existing: bool = False  # an input whose output exists and reads back as an image is skipped
    strength: float = 1.0  # 0: the input, 1: the model's output, between: blended in linear light
    raw: str = "srgb"  # how camera RAW is rendered: "srgb" or "linear" (lle_cli.raw)
    video: VideoOptions = field(default_factory=VideoOptions)  # lle_cli.video: smoothing, codec, quality


@dataclass(frozen=True)
class Job:
    input: str  # a path, or "-" for stdin
    output: str | None  # a path, "-" for stdout, or None when planning already failed
    error: str | None = None  # set when the job cannot run at all (missing file, clash)
    skip: str | None = None  # why the job needs no work (its complete output exists, --skip-existing)


@dataclass
class JobResult:
    input: str
    output: str | None
    model: str
    seconds: float
    status: str  # "ok", "error" or "skipped"
    error: str | None = None
    input_sha256: str | None = None  # filled when run with digests=True (run records)
    output_sha256: str | None = None
    frames: int | None = None  # videos: frames written
    warnings: list[str] = field(default_factory=list)  # videos: streams not copied, codec fallback

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        for k in ("input_sha256", "output_sha256", "frames"):
            if d[k] is None:
                del d[k]
        if not d["warnings"]:
            del d["warnings"]
        return d


def _is_image(p: Path, videos: bool = False) -> bool:
    suffix = p.suffix.lower()
    return (suffix in IMAGE_SUFFIXES or (videos and suffix in VIDEO_SUFFIXES)) and not p.name.startswith(".")


def _folder_images(folder: Path, recursive: bool, videos: bool = False) -> tuple[list[Path], list[Path]]:
    """A folder's images (and videos, when asked; sorted; hidden files and folders left out) and,
    when not recursive, the sub-folders that hold some and were therefore left out."""
    if recursive:
        files = [f for f in folder.rglob("*") if f.is_file() and _is_image(f, videos)
                 and not any(part.startswith(".") for part in f.relative_to(folder).parts)]
        return sorted(files), []
    files = sorted(f for f in folder.iterdir() if f.is_file() and _is_image(f, videos))
    skipped = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and any(f.is_file() and _is_image(f, videos) for f in d.rglob("*")))
    return files, skipped


def expand_inputs(
    inputs: list[str], *, skip_suffix: str | None = None, recursive: bool = False, notes: list[str] | None = None,
    videos: bool = False,
) -> list[tuple[str, str | None]]:
    """Files, directories (their images; with ``recursive`` also their sub-folders') and globs, as
    ``(path, error)`` pairs.

    A directory's files whose stem ends with ``skip_suffix`` are our own earlier outputs
    (``naming.is_enhanced_output``) and are skipped, so running twice over a folder does not
    enhance the results again. Sub-folders holding images that were not searched (no
    ``recursive``) are reported in ``notes``, so that nothing is left out without a word. ``videos``: a directory's videos are inputs too (``lle enhance``).
    """
    out: list[tuple[str, str | None]] = []
    for item in inputs:
        if item == STDIO:
            out.append((STDIO, None))
            continue
        p = Path(item)
        if p.is_dir():
            files, left_out = _folder_images(p, recursive, videos)
            if skip_suffix:
                files = [f for f in files if not is_enhanced_output(f, skip_suffix)]
            if left_out and notes is not None:
                names = ", ".join(d.name for d in left_out[:3]) + (", ..." if len(left_out) > 3 else "")
                notes.append(f"{item}: {len(left_out)} sub-folder(s) with images not searched ({names}); pass --recursive to include them")
            if not files:
                looked = sorted(IMAGE_SUFFIXES | (VIDEO_SUFFIXES if videos else frozenset()))
                out.append((item, f"{item}: no images in this directory (looked for {', '.join(looked)})"))
            out.extend((str(f), None) for f in files)
        elif p.exists() or not glob.has_magic(item):
            out.append((item, None if p.exists() else f"{item}: no such file"))
        else:
            matches = sorted(m for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                out.append((item, f"{item}: no files match this pattern"))
            out.extend((m, None) for m in matches)
    return out


def _normalise_format(opts: OutputOptions) -> OutputOptions:
    if opts.format is None:
        return opts
    try:
        fmt = normalise_format(opts.format)
    except UsageError:
        raise UsageError(f"--format {opts.format!r}: expected one of {', '.join(f.lower() for f in FORMATS)}") from None
    return dataclasses.replace(opts, format=fmt)


def _check_enhance_options(opts: OutputOptions) -> None:
    if not 0.0 <= opts.strength <= 1.0:
        raise UsageError(f"--strength {opts.strength}: give a number from 0 (the input) to 1 (the model's output)")
    if opts.raw not in RAW_MODES:
        raise UsageError(f"--raw {opts.raw}: use one of {', '.join(RAW_MODES)}")
    if not opts.video.smoothing >= 0:
        raise UsageError(f"--smoothing {opts.video.smoothing}: give seconds >= 0 (0 turns it off)")
    if opts.video.max_batch < 1:
        raise UsageError(f"video batch size {opts.video.max_batch}: give 1 or more")


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` resolves to: equal for the same file, a hard link or a symlink."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def output_is_complete(path: str) -> bool:
    """Whether an existing output reads back as a whole image or video (a crashed writer of another
    tool may have left a truncated one; lle's own writes are atomic)."""
    if is_video_path(path):
        return video_output_is_complete(path)
    try:
        read_image(path)
    except (LLEError, OSError):
        return False
    return True


def _root_of(path: str, roots: list[Path]) -> Path | None:
    """The first input folder holding ``path``: the part of its path that ``-o DIR`` does not mirror."""
    return next((root for root in roots if Path(path).is_relative_to(root)), None)


def plan_jobs(
    inputs: list[str], output: str | None, opts: OutputOptions, *, recursive: bool = False, notes: list[str] | None = None,
) -> tuple[list[Job], OutputOptions]:
    """Decide every output path up front so clashes and existing files are reported before any work.

    An output that resolves to one of the inputs (the same file, a hard link or a symlink to it) is
    refused even with ``overwrite``: only ``in_place`` replaces an input. With ``recursive`` and an
    output directory, each image keeps its path relative to the folder it was found in.

    A file named on the command line that needs a missing optional package (HEIC, AVIF, RAW, video),
    or an output format that does, raises ``MissingExtraError`` (exit 2) before any work; such a file
    found in a folder fails alone and the batch goes on.
    """
    opts = _normalise_format(opts)
    _check_enhance_options(opts)
    if opts.format is not None:
        check_format_available(opts.format)
    if not inputs:
        raise UsageError("no input given; pass image files, directories, globs or - for stdin")
    if inputs.count(STDIO) > 1:
        raise UsageError("stdin (-) can be given only once")
    expanded = expand_inputs(inputs, skip_suffix=opts.suffix if output is None else None, recursive=recursive, notes=notes,
                             videos=True)
    expanded = [(p, e or _missing_extra(p, p in inputs)) for p, e in expanded]
    input_ids = {i: p for p, e in expanded if not e and p != STDIO for i in [_identity(p)] if i is not None}
    roots = [Path(i) for i in inputs if i != STDIO and Path(i).is_dir()] if recursive else []
    has_video = any(p != STDIO and is_video_path(p) for p, _ in expanded)
    if has_video and opts.video.codec is not None:
        check_encoder(opts.video.codec)
    to_dir: Path | None = None
    if output == STDIO or (output is None and inputs == [STDIO]):
        if len(expanded) != 1:
            raise UsageError("-o - (stdout) takes exactly one input image")
        if has_video:
            raise UsageError("-o - (stdout) is for one photo; write a video with -o FILE or -o DIR/")
    elif output is not None:
        o = Path(output)
        if o.is_dir() or output.endswith(os.sep) or len(expanded) > 1 or inputs != [e[0] for e in expanded]:
            to_dir = o
            if o.exists() and not o.is_dir():
                raise UsageError(f"-o {output}: several inputs need an output directory, but this is a file")
        elif has_video:
            if not is_video_path(output):
                raise UsageError(f"-o {output}: a video is written as a video; use {', '.join(sorted(VIDEO_SUFFIXES))}, "
                                 "or a directory ending in /")
        elif format_from_suffix(output) is None:
            raise UsageError(f"-o {output}: unknown image suffix; use .png, .jpg, .tif, .webp, .bmp, .heic or .avif, "
                             "or a directory ending in /")
        else:
            check_format_available(format_from_suffix(output) or "PNG")
    jobs: list[Job] = []
    seen: dict[str, str] = {}
    for path, err in expanded:
        if err:
            jobs.append(Job(path, None, err))
            continue
        if output == STDIO or (output is None and path == STDIO):
            target = STDIO
        elif to_dir is not None:
            target = str(enhance_output(path, out_dir=to_dir, root=_root_of(path, roots), fmt=opts.format))
        elif output is not None:
            target = output
        elif opts.in_place:
            if is_raw_path(path):
                jobs.append(Job(path, None, f"{path}: a camera RAW cannot be replaced in place (lle never writes RAW); "
                                            "leave out --in-place to write a 16-bit TIFF beside it, or use -o"))
                continue
            target = path
        else:
            target = str(enhance_output(path, suffix=opts.suffix, fmt=opts.format))
        key = os.path.abspath(target) if target != STDIO else STDIO
        if key in seen and target != STDIO:
            jobs.append(Job(path, None, f"{path}: its output {target} would also be written for {seen[key]}; use -o DIR with distinct names"))
            continue
        seen[key] = path
        victim = input_ids.get(_identity(target)) if target != STDIO else None
        if victim is not None:
            if opts.in_place and victim == path:
                jobs.append(Job(path, target))
                continue
            jobs.append(Job(path, None, f"{target}: is the input {victim} itself; lle never replaces an input, even with --overwrite; "
                                        "pass --in-place to replace it with the enhanced image, or choose another -o"))
            continue
        if target != STDIO and Path(target).exists():
            if opts.skip_existing and output_is_complete(target):
                jobs.append(Job(path, target, skip=f"{target}: exists (--skip-existing)"))
                continue
            if not opts.overwrite:
                jobs.append(Job(path, target, str(OutputExistsError(
                    f"{target}: already exists; pass --overwrite to replace it, --skip-existing to keep it, or choose another -o"))))
                continue
        jobs.append(Job(path, target))
    return jobs, opts


def _missing_extra(path: str, named: bool) -> str | None:
    """The missing-package message for an input, raised when the user named the file, returned (a
    failed job) when a folder walk found it."""
    if path == STDIO:
        return None
    try:
        if is_video_path(path):
            require_video(path)
        else:
            check_input_available(path)
    except UsageError as exc:
        if named:
            raise
        return str(exc)
    return None


def _failed(job: Job, e: Exception) -> str:
    if isinstance(e, LLEError):
        # a model's refusal (non-finite output, too large to run whole) does not know the file: name it
        where = "<stdin>" if job.input == STDIO else str(job.input)
        named = (where, Path(where).name, *((str(job.output), Path(str(job.output)).name) if job.output else ()))
        return str(e) if any(n and n in str(e) for n in named) else f"{where}: {e}"
    if isinstance(e, OSError):  # disk full, permission denied on the output directory, ...
        return f"{job.output or job.input}: {e.strerror or e}"
    raise e


# -- strength: the model's output blended with its input in linear light ---------------------------


def _srgb_to_linear(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0, dtype=np.float32)
    return np.where(v <= 0.04045, v / np.float32(12.92), ((v + np.float32(0.055)) / np.float32(1.055)) ** np.float32(2.4))


def _linear_to_srgb(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0, dtype=np.float32)
    return np.where(v <= 0.0031308, v * np.float32(12.92), np.float32(1.055) * v ** np.float32(1 / 2.4) - np.float32(0.055))


def blend_linear(before: np.ndarray, after: np.ndarray, strength: float) -> np.ndarray:
    """``strength`` of the way from ``before`` to ``after`` (sRGB-encoded float arrays in [0, 1]),
    mixed in linear light as light itself adds up (a 50% blend of black and white is mid-grey in
    light, not the darker sRGB value 0.5). 1 returns ``after`` itself, 0 a copy of ``before``."""
    if strength >= 1.0:
        return after
    if strength <= 0.0:
        return np.array(before, dtype=np.float32, copy=True)
    mixed = _srgb_to_linear(before)
    mixed *= np.float32(1.0 - strength)
    mixed += _srgb_to_linear(after) * np.float32(strength)
    return _linear_to_srgb(mixed).astype(np.float32, copy=False)


def _enhanced(model: LoadedModel, rgb: np.ndarray, strength: float) -> np.ndarray:
    """The model's output at ``strength``; at 0 the model is not run at all."""
    if strength <= 0.0:
        return rgb
    return blend_linear(rgb, model.enhance(rgb), strength)


class ModelFrames:
    """A loaded model as ``lle_cli.video.FrameEnhancer``: frames in batches as large as memory allows
    (one when the frame itself has to be tiled or a tile size was forced), ``strength`` applied."""

    def __init__(self, model: LoadedModel, strength: float = 1.0) -> None:
        self.model = model
        self.strength = strength

    def batch_size(self, height: int, width: int, most: int = 64) -> int:
        m = self.model
        if m.tile is not None or m.tile_plan(height, width) is not None:
            return 1
        # n frames need the activations of one image n times as tall: the tiling rule says what fits
        n = 1
        while n < most and m.tile_plan(height * (n + 1), width) is None:
            n += 1
        return n

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if self.strength <= 0.0:
            return frames
        out = self.model.enhance(frames[0])[None] if len(frames) == 1 else self.model.enhance_batch(frames)
        return blend_linear(frames, out, self.strength)


def _read(job: Job, stdin: bytes | None, digests: bool, raw: str = "srgb") -> tuple[Picture, str | None]:
    """Stage 1 (any thread): decode the input; its sha256 when recording."""
    if job.error:
        raise InputError(job.error)
    if job.input == STDIO:
        pic = read_image(stdin if stdin is not None else b"", name="<stdin>", raw=raw)
        return pic, hashlib.sha256(stdin or b"").hexdigest() if digests else None
    pic = read_image(job.input, raw=raw)
    return pic, sha256_file(Path(job.input)) if digests else None


def _write(job: Job, enhanced: Picture, opts: OutputOptions, stdout, digests: bool) -> str | None:
    """Stage 3 (any thread): encode and write atomically (or to stdout); the output's sha256 when recording."""
    out_fmt = opts.format or ("PNG" if job.output == STDIO else format_from_suffix(job.output) or "PNG")
    data = encode_image(enhanced, out_fmt, quality=opts.quality, bit_depth=opts.bit_depth)
    if job.output == STDIO:
        stdout.write(data)
        stdout.flush()
    else:
        target = job.output
        replace = opts.overwrite
        if opts.in_place and _identity(job.output) is not None and _identity(job.output) == _identity(job.input):
            # the enhanced image replaces the input atomically; a symlink keeps pointing at it
            target, replace = os.path.realpath(job.output), True
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, data, overwrite=replace)
    return hashlib.sha256(data).hexdigest() if digests else None


def run_job(
    model: LoadedModel, job: Job, opts: OutputOptions, *, stdin: bytes | None = None, stdout=None, digests: bool = False
) -> JobResult:
    """Read, enhance, encode and atomically write one image; errors become a failed result.

    ``digests``: also hash the input and the written bytes (sha256), for the run record.
    """
    if _is_video_job(job):
        return run_video_job(model, job, opts, digests=digests)
    start = time.perf_counter()
    try:
        pic, in_sha = _read(job, stdin, digests, opts.raw)
        out_sha = _write(job, pic.with_rgb(_enhanced(model, pic.rgb, opts.strength)), opts, stdout, digests)
    except (LLEError, OSError) as e:
        return JobResult(job.input, job.output, model.name, round(time.perf_counter() - start, 4), "error", _failed(job, e))
    return JobResult(job.input, job.output, model.name, round(time.perf_counter() - start, 4), "ok", None, in_sha, out_sha)


def _is_video_job(job: Job) -> bool:
    return job.input != STDIO and is_video_path(job.input)


def run_video_job(
    model: LoadedModel, job: Job, opts: OutputOptions, *, digests: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> JobResult:
    """Enhance one video (``lle_cli.video``); ``progress(frames_done, total_or_None)`` per frame."""
    start = time.perf_counter()

    def failed(e: Exception) -> JobResult:
        return JobResult(job.input, job.output, model.name, round(time.perf_counter() - start, 4), "error", _failed(job, e))

    try:
        if job.error:
            raise InputError(job.error)
        in_sha = sha256_file(Path(job.input)) if digests else None
        target, replace = job.output, opts.overwrite
        if opts.in_place and _identity(job.output) is not None and _identity(job.output) == _identity(job.input):
            target, replace = os.path.realpath(job.output), True
        done = enhance_video(job.input, target, ModelFrames(model, opts.strength), options=opts.video,
                             overwrite=replace, progress=progress)
        out_sha = sha256_file(Path(target)) if digests else None
    except (LLEError, OSError) as e:
        return failed(e)
    return JobResult(job.input, job.output, model.name, round(time.perf_counter() - start, 4), "ok", None, in_sha, out_sha,
                     frames=done.frames, warnings=list(done.warnings))


def run_batch(
    model: LoadedModel,
    jobs: list[Job],
    opts: OutputOptions,
    *,
    stdin: bytes | None = None,
    stdout=None,
    digests: bool = False,
    pipeline: bool = True,
    frame_progress: FrameProgress | None = None,
) -> Iterator[JobResult]:
    """Run ``jobs`` in order, yielding one result per job, in order; a failed job never stops the batch.

    With ``pipeline`` (and more than one job) the next image is decoded and the previous one encoded
    and written on two helper threads while the model runs on the current one: Pillow, numpy and zlib
    release the GIL, so the CPU stays busy between forward passes. At most one decoded image waits
    and one encoding is in flight, so memory stays at about three images. ``JobResult.seconds`` is
    then the job's own work (read + enhance + write), not the time it spent queued.

    A video is a job of its own between the photos (the pipeline drains first); it streams its
    frames and calls ``frame_progress(job, frames_done, total_or_None)`` after each.
    """
    start = 0
    while start < len(jobs):
        job = jobs[start]
        if _is_video_job(job):
            start += 1
            if job.skip is not None:
                yield JobResult(job.input, job.output, model.name, 0.0, "skipped", None)
                continue
            on_frame = (lambda done, total, job=job: frame_progress(job, done, total)) if frame_progress else None
            yield run_video_job(model, job, opts, digests=digests, progress=on_frame)
            continue
        stop = start
        while stop < len(jobs) and not _is_video_job(jobs[stop]):
            stop += 1
        yield from _run_photos(model, jobs[start:stop], opts, stdin, stdout, digests, pipeline)
        start = stop


def _run_photos(
    model: LoadedModel, jobs: list[Job], opts: OutputOptions, stdin: bytes | None, stdout, digests: bool, pipeline: bool
) -> Iterator[JobResult]:
    work = [j for j in jobs if j.skip is None]
    runs = iter(work) if (not pipeline or len(work) < 2) else None
    results = None if runs is not None else _pipelined(model, work, opts, stdin, stdout, digests)
    for job in jobs:
        if job.skip is not None:
            yield JobResult(job.input, job.output, model.name, 0.0, "skipped", None)
        elif results is None:
            yield run_job(model, next(runs), opts, stdin=stdin, stdout=stdout, digests=digests)
        else:
            yield next(results)


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _pipelined(
    model: LoadedModel, jobs: list[Job], opts: OutputOptions, stdin: bytes | None, stdout, digests: bool
) -> Iterator[JobResult]:
    def result(job: Job, seconds: float, error: str | None = None, in_sha=None, out_sha=None) -> JobResult:
        status = "ok" if error is None else "error"
        return JobResult(job.input, job.output, model.name, round(seconds, 4), status, error, in_sha, out_sha)

    def finish(job: Job, enhanced: Picture, spent: float, in_sha: str | None) -> JobResult:
        try:
            out_sha, dt = _timed(_write, job, enhanced, opts, stdout, digests)
        except (LLEError, OSError) as e:
            return result(job, spent, _failed(job, e))
        return result(job, spent + dt, None, in_sha, out_sha)

    readers = ThreadPoolExecutor(1, thread_name_prefix="lle-read")
    writers = ThreadPoolExecutor(1, thread_name_prefix="lle-write")
    writing: Future | None = None  # the previous job's final result
    try:
        reading: Future = readers.submit(_timed, _read, jobs[0], stdin, digests, opts.raw)
        for i, job in enumerate(jobs):
            current = reading
            if i + 1 < len(jobs):
                reading = readers.submit(_timed, _read, jobs[i + 1], stdin, digests, opts.raw)
            done: JobResult | None = None
            try:
                (pic, in_sha), spent = current.result()
                rgb, dt = _timed(_enhanced, model, pic.rgb, opts.strength)
                enhanced = pic.with_rgb(rgb)
                spent += dt
                del pic, rgb
            except (LLEError, OSError) as e:
                done = result(job, 0.0, _failed(job, e))
            if writing is not None:
                yield writing.result()  # in order, and at most one encoding in flight
                writing = None
            if done is not None:
                yield done
            else:
                writing = writers.submit(finish, job, enhanced, spent, in_sha)
                del enhanced
        if writing is not None:
            yield writing.result()
            writing = None
    except KeyboardInterrupt:
        # Ctrl-C while the model ran: the previous image is being written (atomically); let it
        # finish and report it, so the caller can say exactly what was written before stopping
        if writing is not None:
            finished = writing.result()
            writing = None
            yield finished
        raise
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True, cancel_futures=True)
