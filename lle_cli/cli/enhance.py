"""``lle enhance``: enhance photos (JPEG, PNG, TIFF, WebP, BMP, HEIC, AVIF, camera RAW) and videos."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import api
from ..api import STDIO, OutputOptions, VideoOptions, is_video_path, plan_jobs, run_batch
from ..errors import UsageError
from ._common import (
    BatchArgs, DeviceOpt, ModelOpt, OfflineOpt, PrecisionOpt, WeightsOpt, batch, download_progress, err_console, error,
    label_column, note, say, show_progress, warning, with_options,
)


@with_options(batch)
def enhance(
    inputs: Annotated[list[str], typer.Argument(help="Photos, videos, directories, globs, or - to read one image from stdin.", show_default=False)],
    output: Annotated[
        Optional[str],
        typer.Option("--output", "-o", help="Output file, directory (several inputs or a trailing /), or - for PNG on stdout. Default: beside each input with --suffix."),
    ] = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    runtime: Annotated[
        str, typer.Option("--runtime", help="torch (default), or onnx / openvino: run the model's ONNX export (made once, cached) in that engine, on the CPU, without loading PyTorch (float32; OpenVINO in bf16 where --precision auto would pick it, or with --precision bf16).")
    ] = "torch",
    tile: Annotated[
        str, typer.Option("--tile", help="Largest tile size in pixels for large images, 0 to never tile, auto: tile only what would not fit in memory.")
    ] = "auto",
    fmt: Annotated[
        Optional[str],
        typer.Option("--format", "-f", help="Photos: png, jpeg, tiff, webp, bmp, heic or avif; default: the input's format (16-bit TIFF for camera RAW). Videos keep their container."),
    ] = None,
    quality: Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG/WebP/HEIC/AVIF quality (90 and up: full-resolution colour).")] = 95,
    bit_depth: Annotated[Optional[int], typer.Option("--bit-depth", help="8 or 16 (PNG/TIFF; HEIC: 16 keeps 10 or 12 bits); default: the input's.")] = None,
    strength: Annotated[float, typer.Option("--strength", help="How much of the enhancement to apply: 0 the input, 1 the model's output, in between blended in linear light.")] = 1.0,
    raw: Annotated[str, typer.Option("--raw", help="Camera RAW rendering: srgb (camera white balance, sRGB curve, exposure as shot) or linear (scene-linear light, linear-sRGB profile).")] = "srgb",
    smoothing: Annotated[float, typer.Option("--smoothing", help="Videos: seconds over which the per-frame brightness gain is averaged against flicker; 0 turns it off.")] = 0.5,
    video_codec: Annotated[Optional[str], typer.Option("--video-codec", help="Videos: encoder (e.g. libx264, libx265); default: the input's codec where an encoder exists, else H.264.")] = None,
    crf: Annotated[int, typer.Option("--crf", min=0, max=51, help="Videos: x264/x265 constant quality, lower is better and larger.")] = 18,
    suffix: Annotated[str, typer.Option("--suffix", help="Added to the file name when writing beside the input.")] = api.ENHANCED_SUFFIX,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files (never an input: see --in-place).")] = False,
    in_place: Annotated[bool, typer.Option("--in-place", help="Replace each input with its enhanced image (atomically); without -o the output is the input itself.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose output already exists and reads back as an image (resume a batch).")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also enhance the images in sub-folders of input folders (-o DIR keeps their relative paths).")] = False,
    # each command says when it records by default, so --record is its own, not the group's
    record: Annotated[
        Optional[bool],
        typer.Option("--record/--no-record", help="Write a run record (lle-run.json) beside the outputs; default: on for directories and several inputs."),
    ] = None,
    *,
    batch: BatchArgs,
) -> int:
    """Enhance low-light or backlit photos and videos. Exit code 0: all written, 1: some failed, 2: usage error (or a missing optional package)."""
    quiet, json_out, part, parallel = batch.quiet, batch.json_out, batch.shard, batch.parallel
    if bit_depth not in (None, 8, 16):
        raise UsageError("--bit-depth must be 8 or 16")
    if tile != "auto" and not tile.isdigit():
        raise UsageError(f"--tile {tile}: expected auto, 0 (never tile) or a tile size in pixels")
    tile_px = None if tile == "auto" else int(tile)
    if in_place and fmt is not None:
        raise UsageError("--in-place keeps each input's format; leave out --format (or write elsewhere with -o)")
    if skip_existing and overwrite:
        raise UsageError("--skip-existing keeps existing outputs and --overwrite replaces them; pass one of them")
    runtime = runtime.strip().lower()
    if runtime == "torch":
        api.check_options(model, tile=tile_px, device=device, precision=precision)  # before any weights are read
    else:  # the engines: no PyTorch on this path once the model's export is cached (lle_cli.engines)
        from ..engines import check_runtime_options

        api.get_registry(check_architectures=False).resolve(model)  # an unknown name: the usual message, now
        check_runtime_options(runtime, device=device, precision=precision, tile=tile_px, workers=parallel is not None)
    opts = OutputOptions(suffix=suffix, format=fmt, quality=quality, bit_depth=bit_depth, overwrite=overwrite,
                         in_place=in_place, skip_existing=skip_existing, strength=strength, raw=raw,
                         video=VideoOptions(smoothing=smoothing, codec=video_codec, crf=crf))
    notes: list[str] = []
    jobs, opts = plan_jobs(inputs, output, opts, recursive=recursive, notes=notes)
    whole = jobs
    split = None
    if part is not None:
        if any(j.input == STDIO or j.output == STDIO for j in jobs):
            raise UsageError("--shard splits files and folders; stdin and stdout (-) take one image")
        # every shard plans the whole batch, then keeps its part (lle_cli.shard)
        split = api.plan_shard([(j.input, Path(j.output).parent if j.output else None) for j in jobs], inputs, part)
        jobs = split.take(jobs)
        if not quiet and not json_out:
            note(f"shard {part.index}/{part.count}: {len(jobs)} of {len(whole)} inputs")
    for line in notes:
        if not quiet:
            note(line)
    to_stdout = any(j.output == STDIO for j in jobs)
    if to_stdout and json_out:
        raise UsageError("--json and -o - both want stdout; write the image to a file with -o FILE")
    if to_stdout and sys.stdout.isatty():
        raise UsageError("refusing to write image bytes to a terminal; redirect stdout or use -o FILE")
    batch_mode = len(whole) > 1 or any(i != STDIO and Path(i).is_dir() for i in inputs)
    if record and to_stdout:
        raise UsageError("--record writes a file beside the outputs; it cannot go with -o - (stdout)")
    recording = (batch_mode if record is None else record) and not to_stdout
    stdin_bytes = sys.stdin.buffer.read() if any(j.input == STDIO for j in jobs) else None
    with download_progress(show_progress(quiet, json_out)) as on_bytes:  # first use of a model downloads it
        if runtime == "torch":
            api.keep_freed_memory()  # this process is ours: let big freed blocks be reused
            loaded = api.load_model(model, weights=weights, device=device, precision=precision, offline=offline, progress=on_bytes, tile=tile_px)
        else:
            from ..engines import load_engine_model

            loaded = load_engine_model(model, runtime, precision=precision, weights=weights, offline=offline, progress=on_bytes,
                                       say=(lambda line: None) if quiet or json_out else note)
    if not quiet and not json_out:
        engine = f" in {runtime}" + (" (bf16)" if loaded.dtype == "bfloat16" else "") if runtime != "torch" else ""
        note(f"model {loaded.name} ({loaded.weights_source}) on {loaded.device}{engine}")
    # LLFlow only (never an engine); never changes the outputs
    warn_ood = api.ood_warner(loaded, batch.ood_stats) if runtime == "torch" else None
    failures: list[str] = []
    ok = 0
    results = []
    run = api.new_run("enhance", model=loaded, options={
        "model": model, "weights": weights, "device": device, "precision": precision, "runtime": runtime, "tile": tile, "output": output, "format": opts.format,
        "quality": quality, "bit_depth": bit_depth, "suffix": suffix, "overwrite": overwrite, "in_place": in_place,
        "skip_existing": skip_existing, "recursive": recursive, "strength": strength, "raw": raw, "smoothing": smoothing,
        "video_codec": video_codec, "crf": crf,
    }) if recording else None
    if run is not None and parallel is not None:  # how it ran, beside what it did (not an option a merge compares)
        run["parallel"] = {"workers": parallel.workers, "threads_per_worker": parallel.threads, "ray": parallel.ray}
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn  # only once there is work

    progress = Progress(
        label_column(), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, disable=not show_progress(quiet, json_out), transient=True,
    )
    skipped = 0
    interrupted = False
    frame_tasks: dict[str, object] = {}

    def on_frame(job, done: int, total: Optional[int]) -> None:
        # a video gets its own bar, frame by frame, under the batch's
        if job.input not in frame_tasks:
            frame_tasks[job.input] = progress.add_task(f"{Path(job.input).name} frames", total=total)
        progress.update(frame_tasks[job.input], completed=done, total=total)

    try:
        with progress:
            task = progress.add_task("enhancing", total=len(jobs))
            if parallel is not None:  # worker processes or Ray actors; results in the order they finish
                source = api.run_batch_parallel(parallel, loaded, jobs, opts, digests=recording, tile=tile_px)
            else:
                source = run_batch(loaded, jobs, opts, stdin=stdin_bytes, stdout=sys.stdout.buffer, digests=recording,
                                   frame_progress=on_frame if show_progress(quiet, json_out) else None)
            for result in source:
                results.append(result)
                if result.input in frame_tasks:
                    progress.remove_task(frame_tasks.pop(result.input))
                if json_out:
                    print(json.dumps(result.to_dict()), flush=True)
                elif result.status == "ok" and result.output != STDIO:
                    print(result.output, flush=True)
                if not quiet and not json_out:
                    for line in result.warnings:
                        warning(line)
                if result.status == "ok":
                    ok += 1
                    if opts.in_place and result.output == result.input and not quiet and not json_out:
                        note(f"{result.input}: replaced in place")
                    # the OOD statistics describe photos; a video's frames are not scored
                    message = warn_ood(result.input, stdin_bytes) if warn_ood and not quiet and not is_video_path(result.input) else None
                    if message:
                        warning(message)
                elif result.status == "skipped":
                    skipped += 1
                    if not quiet and not json_out:
                        note(f"skipped {result.input}: {result.output} exists")
                else:
                    failures.append(result.error or result.input)
                    if not json_out:
                        error(result.error or result.input)
                progress.update(task, advance=1, description=Path(result.input).name)
    except KeyboardInterrupt:
        interrupted = True
        # what was written is on stdout already; say where the batch stopped, keep its record, and
        # let main() exit 130
        say(f"interrupted after {len(results)} of {len(jobs)} inputs ({ok} written); "
            "run again with --skip-existing to finish the rest")
        raise
    finally:
        if not interrupted and not quiet and not json_out and len(jobs) > 1:
            say(f"{ok} enhanced, {skipped} skipped, {len(failures)} failed" if skipped else f"{ok} enhanced, {len(failures)} failed")
        if parallel is not None:  # the record lists them in the batch's order, as a local run's does
            order = {j.input: i for i, j in enumerate(jobs)}
            results.sort(key=lambda r: order.get(r.input, len(order)))
        if run is not None and split is not None:
            for path in api.write_shard_records(run, [api.outcome_of_job(r) for r in results], split, interrupted=interrupted):
                if not quiet and not json_out:
                    note(f"run record: {path}")
        elif run is not None:
            for path in api.write_job_records(loaded, results, command="enhance", options={}, run=run, interrupted=interrupted):
                if not quiet and not json_out:
                    note(f"run record: {path}")
    return 1 if failures else 0
