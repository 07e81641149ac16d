"""Batch enhancement: expand inputs, plan outputs, run each file, never stop the batch for one bad file.

The CLI only renders what this yields (progress bar, JSON lines, summary); everything that decides
what is read and written lives here so the Python API behaves the same.
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InputError, LLEError, OutputExistsError, UsageError
from .imageio import IMAGE_SUFFIXES, Picture, encode_image, format_from_suffix, read_image, write_bytes_atomic
from .runner import LoadedModel
from .weights import sha256_file

__all__ = ["OutputOptions", "Job", "JobResult", "expand_inputs", "plan_jobs", "run_job", "run_batch", "STDIO"]

STDIO = "-"
_WRITABLE = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp"}


@dataclass(frozen=True)
class OutputOptions:
    suffix: str = "_enhanced"  # added to the stem when writing beside the input
    format: str | None = None  # None: same as the input (PNG for stdin)
    quality: int = 95
    bit_depth: int | None = None  # None: keep the input's (8 or 16) where the format allows
    overwrite: bool = False
    in_place: bool = False  # an output that is its own input replaces it (atomically); refused otherwise
    skip_existing: bool = False  # an input whose output exists and reads back as an image is skipped


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

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        for k in ("input_sha256", "output_sha256"):
            if d[k] is None:
                del d[k]
        return d


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _folder_images(folder: Path, recursive: bool) -> tuple[list[Path], list[Path]]:
    """A folder's images (sorted; hidden files and folders left out) and, when not recursive, the
    sub-folders that hold images and were therefore left out."""
    if recursive:
        files = [f for f in folder.rglob("*") if f.is_file() and _is_image(f)
                 and not any(part.startswith(".") for part in f.relative_to(folder).parts)]
        return sorted(files), []
    files = sorted(f for f in folder.iterdir() if f.is_file() and _is_image(f))
    skipped = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and any(f.is_file() and _is_image(f) for f in d.rglob("*")))
    return files, skipped


def expand_inputs(
    inputs: list[str], *, skip_suffix: str | None = None, recursive: bool = False, notes: list[str] | None = None,
) -> list[tuple[str, str | None]]:
    """Files, directories (their images; with ``recursive`` also their sub-folders') and globs, as
    ``(path, error)`` pairs.

    A directory's files that already end with ``skip_suffix`` are our own earlier outputs and are
    skipped, so running twice over a folder does not enhance the results again. Sub-folders holding
    images that were not searched (no ``recursive``) are reported in ``notes``, so that nothing is
    left out without a word.
    """
    out: list[tuple[str, str | None]] = []
    for item in inputs:
        if item == STDIO:
            out.append((STDIO, None))
            continue
        p = Path(item)
        if p.is_dir():
            files, left_out = _folder_images(p, recursive)
            if skip_suffix:
                files = [f for f in files if not f.stem.endswith(skip_suffix)]
            if left_out and notes is not None:
                names = ", ".join(d.name for d in left_out[:3]) + (", ..." if len(left_out) > 3 else "")
                notes.append(f"{item}: {len(left_out)} sub-folder(s) with images not searched ({names}); pass --recursive to include them")
            if not files:
                out.append((item, f"{item}: no images in this directory (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"))
            out.extend((str(f), None) for f in files)
        elif p.exists() or not glob.has_magic(item):
            out.append((item, None if p.exists() else f"{item}: no such file"))
        else:
            matches = sorted(m for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                out.append((item, f"{item}: no files match this pattern"))
            out.extend((m, None) for m in matches)
    return out


def _output_suffix(input_path: str, opts: OutputOptions) -> str:
    if opts.format:
        return _WRITABLE[opts.format]
    fmt = None if input_path == STDIO else format_from_suffix(input_path)
    return Path(input_path).suffix if fmt in _WRITABLE else ".png"


def _normalise_format(opts: OutputOptions) -> OutputOptions:
    if opts.format is None:
        return opts
    fmt = opts.format.upper().replace("JPG", "JPEG").replace("TIF", "TIFF").replace("TIFFF", "TIFF")
    if fmt not in _WRITABLE:
        raise UsageError(f"--format {opts.format!r}: expected one of png, jpeg, tiff, webp, bmp")
    return OutputOptions(opts.suffix, fmt, opts.quality, opts.bit_depth, opts.overwrite)


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` resolves to: equal for the same file, a hard link or a symlink."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def output_is_complete(path: str) -> bool:
    """Whether an existing output reads back as a whole image (a crashed writer of another tool may
    have left a truncated one; lle's own writes are atomic)."""
    try:
        read_image(path)
    except (LLEError, OSError):
        return False
    return True


def _relative_under(path: str, roots: list[Path]) -> Path | None:
    for root in roots:
        try:
            return Path(path).relative_to(root)
        except ValueError:
            continue
    return None


def plan_jobs(
    inputs: list[str], output: str | None, opts: OutputOptions, *, recursive: bool = False, notes: list[str] | None = None,
) -> tuple[list[Job], OutputOptions]:
    """Decide every output path up front so clashes and existing files are reported before any work.

    An output that resolves to one of the inputs (the same file, a hard link or a symlink to it) is
    refused even with ``overwrite``: only ``in_place`` replaces an input. With ``recursive`` and an
    output directory, each image keeps its path relative to the folder it was found in.
    """
    opts = _normalise_format(opts)
    if not inputs:
        raise UsageError("no input given; pass image files, directories, globs or - for stdin")
    if inputs.count(STDIO) > 1:
        raise UsageError("stdin (-) can be given only once")
    expanded = expand_inputs(inputs, skip_suffix=opts.suffix if output is None else None, recursive=recursive, notes=notes)
    input_ids = {i: p for p, e in expanded if not e and p != STDIO for i in [_identity(p)] if i is not None}
    roots = [Path(i) for i in inputs if i != STDIO and Path(i).is_dir()] if recursive else []
    to_dir: Path | None = None
    if output == STDIO or (output is None and inputs == [STDIO]):
        if len(expanded) != 1:
            raise UsageError("-o - (stdout) takes exactly one input image")
    elif output is not None:
        o = Path(output)
        if o.is_dir() or output.endswith(os.sep) or len(expanded) > 1 or inputs != [e[0] for e in expanded]:
            to_dir = o
            if o.exists() and not o.is_dir():
                raise UsageError(f"-o {output}: several inputs need an output directory, but this is a file")
        elif format_from_suffix(output) is None:
            raise UsageError(f"-o {output}: unknown image suffix; use .png, .jpg, .tif, .webp or .bmp, or a directory ending in /")
    jobs: list[Job] = []
    seen: dict[str, str] = {}
    for path, err in expanded:
        if err:
            jobs.append(Job(path, None, err))
            continue
        if output == STDIO or (output is None and path == STDIO):
            target = STDIO
        elif to_dir is not None:
            stem = "stdin" if path == STDIO else Path(path).stem
            rel = _relative_under(path, roots) if roots else None
            sub = rel.parent if rel is not None else Path()
            target = str(to_dir / sub / f"{stem}{_output_suffix(path, opts)}")
        elif output is not None:
            target = output
        elif opts.in_place:
            target = path
        else:
            p = Path(path)
            target = str(p.with_name(f"{p.stem}{opts.suffix}{_output_suffix(path, opts)}"))
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


def _failed(job: Job, e: Exception) -> str:
    if isinstance(e, LLEError):
        return str(e)
    if isinstance(e, OSError):  # disk full, permission denied on the output directory, ...
        return f"{job.output or job.input}: {e.strerror or e}"
    raise e


def _read(job: Job, stdin: bytes | None, digests: bool) -> tuple[Picture, str | None]:
    """Stage 1 (any thread): decode the input; its sha256 when recording."""
    if job.error:
        raise InputError(job.error)
    if job.input == STDIO:
        pic = read_image(stdin if stdin is not None else b"", name="<stdin>")
        return pic, hashlib.sha256(stdin or b"").hexdigest() if digests else None
    pic = read_image(job.input)
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
    start = time.perf_counter()
    try:
        pic, in_sha = _read(job, stdin, digests)
        out_sha = _write(job, pic.with_rgb(model.enhance(pic.rgb)), opts, stdout, digests)
    except (LLEError, OSError) as e:
        return JobResult(job.input, job.output, model.name, round(time.perf_counter() - start, 4), "error", _failed(job, e))
    return JobResult(job.input, job.output, model.name, round(time.perf_counter() - start, 4), "ok", None, in_sha, out_sha)


def run_batch(
    model: LoadedModel,
    jobs: list[Job],
    opts: OutputOptions,
    *,
    stdin: bytes | None = None,
    stdout=None,
    digests: bool = False,
    pipeline: bool = True,
) -> Iterator[JobResult]:
    """Run ``jobs`` in order, yielding one result per job, in order; a failed job never stops the batch.

    With ``pipeline`` (and more than one job) the next image is decoded and the previous one encoded
    and written on two helper threads while the model runs on the current one: Pillow, numpy and zlib
    release the GIL, so the CPU stays busy between forward passes. At most one decoded image waits
    and one encoding is in flight, so memory stays at about three images. ``JobResult.seconds`` is
    then the job's own work (read + enhance + write), not the time it spent queued.
    """
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
        reading: Future = readers.submit(_timed, _read, jobs[0], stdin, digests)
        for i, job in enumerate(jobs):
            current = reading
            if i + 1 < len(jobs):
                reading = readers.submit(_timed, _read, jobs[i + 1], stdin, digests)
            done: JobResult | None = None
            try:
                (pic, in_sha), spent = current.result()
                rgb, dt = _timed(model.enhance, pic.rgb)
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
