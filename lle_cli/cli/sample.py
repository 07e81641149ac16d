"""``lle sample``: draw several enhancements of each photo from a flow model (LLFlow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TimeElapsedColumn,
)

from .. import api
from .. import record as run_record
from ..batch import STDIO, expand_inputs
from ..errors import UsageError
from ..ood import ood_warner
from ..sampling import (
    SampleOptions,
    check_options,
    ensure_flow_model,
    normalise_format,
    run_sample_job,
)
from ..video import is_video_path
from ..weights import sha256_file
from ._common import (
    BatchArgs,
    DeviceOpt,
    PrecisionOpt,
    WeightsOpt,
    batch,
    err_console,
    error,
    label_column,
    note,
    say,
    warning,
    show_progress,
    with_options,
)

# the RQ-spline LLFlow embedded in the wheel: `lle sample` works offline with no download
DEFAULT_MODEL = "llflow.lle-synth-rqs"


def _numbers(values: list[str], flag: str) -> tuple[float, ...]:
    """Repeated and/or comma-separated numbers: ``--tau 0.5 --tau 1`` or ``--tau 0.5,1``."""
    out = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(float(part))
            except ValueError:
                accepted = "finite numbers >= 0" if flag == "--tau" else "finite numbers"
                raise UsageError(f"{flag} {part!r}: not a number; give {accepted}") from None
    return tuple(dict.fromkeys(out))  # repeated values would only overwrite each other's files


@with_options(batch)
def sample(
    inputs: Annotated[list[str], typer.Argument(help="Image files, directories, globs, or - for one image on stdin.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output directory (created if missing). Default: beside each input.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="A flow model (see `lle models list`).")] = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    # no min=1 here: click's range error comes with a usage block; check_options says it in one line
    n: Annotated[int, typer.Option("--n", "-n", help="Samples per (tau, offset) pair, >= 1; tau 0 is deterministic and drawn once.")] = 4,
    tau: Annotated[list[str], typer.Option("--tau", "-t", help="Spread of the latent (temperature); repeat or comma-separate for several.")] = ["1.0"],  # noqa: B006
    z_offset: Annotated[list[str], typer.Option("--z-offset", help="Constant added to the latent: brightness (paper Fig. 6 sweeps -0.4..0.4); repeat or comma-separate.")] = ["0"],  # noqa: B006
    seed: Annotated[Optional[int], typer.Option("--seed", "-s", help="Base seed: sample j uses seed + j. Default: random, and reported.")] = None,
    mean: Annotated[bool, typer.Option("--mean", help="Also write the mean of the samples of each (tau, offset).")] = False,
    sheet: Annotated[bool, typer.Option("--sheet/--no-sheet", help="Write a contact sheet <stem>_sheet_tau<t,..>_off<o,..>.png with every sample and its tau/offset/seed.")] = True,
    resample_bad: Annotated[bool, typer.Option("--resample-bad", help="Redraw samples that are non-finite or out of range (new seeds are recorded); a tiled image runs its encoder tiles again per round.")] = False,
    max_tries: Annotated[int, typer.Option("--max-tries", min=1, help="Draws per sample with --resample-bad, the first included.")] = 5,
    max_out_of_range: Annotated[float, typer.Option("--max-out-of-range", help="A sample with more than this fraction of values outside [-0.5, 1.5] is flagged.")] = 0.01,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Latents decoded at once. Default: as many as fit in memory.")] = None,
    tile: Annotated[
        str, typer.Option("--tile", help="Largest tile size in pixels for large images, 0 to never tile, auto: tile only what would not fit in memory (as lle enhance).")
    ] = "auto",
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="png, jpeg, tiff, webp or bmp; default: the input's format.")] = None,
    quality: Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality.")] = 95,
    bit_depth: Annotated[Optional[int], typer.Option("--bit-depth", help="8 or 16 (PNG/TIFF); default: the input's.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Skip inputs whose outputs all exist and are readable images (resume an interrupted batch).")
    ] = False,
    # each command says when it records by default, so --record is its own, not the group's
    record: Annotated[
        Optional[bool],
        typer.Option("--record/--no-record", help="Write a run record (lle-run.json) beside the outputs; default: on with -o DIR or several inputs."),
    ] = None,
    *,
    batch: BatchArgs,
) -> int:
    """Draw diverse enhancements: z = g(x) + tau * eps + offset, decoded by the flow (LLFlow).

    Writes <stem>_sample<j>_tau<t>_off<o> per sample (e.g. dark_sample03_tau0.5_off-0.2.png), <stem>_mean_tau<t>_off<o> with --mean and a contact sheet <stem>_sheet_tau<t,..>_off<o,..>.png. The encoder runs once per image (per tile on a large image, tiled under the same memory budget as lle enhance) however many samples are drawn.

    Exit code 0: all written or skipped, 1: an input failed or a sample was non-finite (never written), 2: usage error, 130: interrupted (a run record covers the inputs finished; --skip-existing resumes).
    """
    quiet, json_out, part, parallel = batch.quiet, batch.json_out, batch.shard, batch.parallel
    opts = SampleOptions(
        n=n, taus=_numbers(tau, "--tau"), offsets=_numbers(z_offset, "--z-offset"), seed=seed, mean=mean,
        sheet=sheet, resample_bad=resample_bad, max_tries=max_tries, max_out_of_range=max_out_of_range,
        batch_size=batch_size, format=normalise_format(fmt), quality=quality, bit_depth=bit_depth, overwrite=overwrite,
        skip_existing=skip_existing,
    )
    check_options(opts)  # every value, before an input is read or a model loaded
    if tile != "auto" and not tile.isdigit():
        raise UsageError(f"--tile {tile}: expected auto, 0 (never tile) or a tile size in pixels")
    tile_px = None if tile == "auto" else int(tile)
    if output is not None and output.exists() and not output.is_dir():
        raise UsageError(f"-o {output}: must be a directory (lle sample writes several files per image)")
    if not inputs:
        raise UsageError("no input given; pass image files, directories, globs or - for stdin")
    jobs = []
    for item in inputs:
        found = expand_inputs([item])
        if Path(item).is_dir():  # our own earlier outputs in that folder are not inputs
            found = [(p, e) for p, e in found if e or not api.is_sample_output(p)]
            found = found or [(item, f"{item}: no images to sample there, only earlier `lle sample` outputs")]
        jobs += found
    for path, _ in jobs:
        if path != STDIO and is_video_path(path):
            raise UsageError(f"{path}: is a video; lle sample draws samples of photos only. "
                             f"Enhance a video with: lle enhance {path}")
    whole = jobs
    split = None
    if part is not None:
        if any(p == STDIO for p, _ in jobs):
            raise UsageError("--shard splits files and folders; stdin (-) is one image")
        # every shard lists the whole batch, then keeps its part (lle_cli.shard)
        split = api.plan_shard([(p, api.sample_folder(p, output)) for p, _ in jobs], inputs, part)
        jobs = split.take(jobs)
        if not quiet and not json_out:
            note(f"shard {part.index}/{part.count}: {len(jobs)} of {len(whole)} inputs")
    stdin_bytes = sys.stdin.buffer.read() if any(p == STDIO for p, _ in jobs) else None
    ensure_flow_model(api.model_info(model))  # before any weights are loaded or fetched
    api.check_options(model, tile=tile_px, device=device, precision=precision)
    loaded = api.load_model(model, weights=weights, device=device, precision=precision, tile=tile_px)
    if not quiet and not json_out:
        note(f"model {loaded.name} ({loaded.weights_source}) on {loaded.device}")
    warn_ood = ood_warner(loaded, batch.ood_stats)  # never changes the samples
    progress = Progress(
        label_column(), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, disable=not show_progress(quiet, json_out), transient=True,
    )
    recording = record if record is not None else (output is not None or len(whole) > 1)
    results = []
    failed = 0
    finished = 0  # inputs fully handled (written, skipped or failed): what an interrupt reports
    interrupted = False
    outcomes = []  # a shard's record accounts for every input it was given

    def failed_input(path: str, problem: str) -> None:
        nonlocal failed
        failed += 1
        outcomes.append(api.InputOutcome(path, api.sample_folder(path, output), "error", problem))
        if json_out:
            print(json.dumps({"input": path, "model": loaded.name, "status": "error", "error": problem}), flush=True)
        else:
            error(problem)

    def done(path: str, result) -> None:
        nonlocal failed
        if result.status == "skipped":
            outcomes.append(api.InputOutcome(path, api.sample_folder(path, output), "skipped"))
            if json_out:
                print(json.dumps(result.to_dict()), flush=True)
            elif not quiet:
                note(f"{path}: skipped, its outputs all exist (--skip-existing)")
            return
        results.append((path, result))
        if result.status != "ok":
            failed += 1
        _report(result, path, quiet=quiet, json_out=json_out, seeded=seed is not None)

    try:
        with progress:
            if parallel is not None:  # worker processes or Ray actors; inputs reported as they finish
                for problem_path, problem in jobs:
                    if problem:
                        failed_input(problem_path, problem)
                work = [p for p, problem in jobs if not problem]
                task = progress.add_task("sampling", total=len(work))
                for finished, (path, result) in enumerate(api.run_samples_parallel(
                        parallel, loaded, work, str(output) if output is not None else None, opts, tile=tile_px)):
                    message = warn_ood(path, None) if warn_ood and not quiet else None
                    if message:
                        warning(f"{message}")
                    done(path, result)
                    progress.update(task, advance=1, description=Path(path).name)
            for finished, (path, problem) in enumerate(jobs if parallel is None else []):
                if problem:
                    failed_input(path, problem)
                    continue
                message = warn_ood(path, stdin_bytes) if warn_ood and not quiet else None
                if message:
                    warning(f"{message}")
                task = progress.add_task(Path(path).name if path != STDIO else "stdin", total=None)
                result = run_sample_job(
                    loaded, path, output, opts, stdin=stdin_bytes,
                    progress=lambda done, total, task=task: progress.update(task, completed=done, total=total),
                )
                progress.remove_task(task)
                done(path, result)
            finished = len(jobs)
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:
        error(f"interrupted after {finished} of {len(jobs)} inputs; run the same command with --skip-existing to finish the rest")
    record_options = {
        "n": n, "tau": list(opts.taus), "z_offset": list(opts.offsets), "mean": mean, "resample_bad": resample_bad,
        "max_out_of_range": max_out_of_range, "precision": precision, "weights": str(weights) if weights else None,
        "skip_existing": skip_existing, "tile": tile,
    }
    if recording and split is not None:
        base = api.new_run("sample", model=loaded, options=record_options)
        outcomes += [api.outcome_of_sample(p, r, api.sample_folder(p, output)) for p, r in results]
        api.write_shard_records(base, outcomes, split, interrupted=interrupted)
    elif recording:
        _write_records(loaded, results, stdin_bytes, options=record_options, **({"interrupted": True, "inputs_finished": finished, "inputs_total": len(jobs)} if interrupted else {}))
    if interrupted:
        raise typer.Exit(130)  # main() maps KeyboardInterrupt to 130 too, but would print a second line
    return 1 if failed else 0


def _report(result, path: str, *, quiet: bool, json_out: bool, seeded: bool) -> None:
    """A finished input: its written files on stdout (or its JSON), redraws, flags and errors on stderr."""
    if json_out:
        print(json.dumps(result.to_dict()), flush=True)
        return
    for s in result.samples:
        if s["output"]:
            print(s["output"], flush=True)
    for m in result.means:
        if m["output"]:
            print(m["output"], flush=True)
    if result.sheet:
        print(result.sheet, flush=True)
    if quiet:
        if result.error:
            error(f"{result.error}")
        return
    for s in result.samples:
        if s["rejected_seeds"]:
            say(f"redrew sample {s['index']} (tau {s['tau']:g}, offset {s['offset']:g}): "
                f"seeds {s['rejected_seeds']} were bad, now seed {s['seed']}", "yellow")
        if s["status"] == "out_of_range":
            warning(f"{path}: sample {s['index']} (tau {s['tau']:g}, offset {s['offset']:g}) "
                    f"has {s['out_of_range_fraction']:.1%} of its values outside [-0.5, 1.5] (clipped when written)")
    if result.error:
        error(f"{result.error}")
    elif result.seed is not None and not seeded:
        note(f"{path}: seed {result.seed} (pass --seed {result.seed} to reproduce)")


def _write_records(loaded, results, stdin_bytes: bytes | None, *, options: dict, **run_fields) -> None:
    """One run record per output folder: every written sample with its input's sha256, seed, tau and offset."""
    base = run_record.new_run("sample", model=loaded, options=options)
    run_record.finish_run(base, **run_fields)
    by_dir: dict[Path, dict] = {}
    for path, result in results:  # partly failed inputs too: what was written is recorded
        in_sha = run_record.sha256_bytes(stdin_bytes) if path == STDIO and stdin_bytes is not None else sha256_file(Path(path))
        files = [(s["output"], {"seed": s["seed"], "tau": s["tau"], "offset": s["offset"]}) for s in result.samples]
        files += [(m["output"], {"mean_of": m.get("n")}) for m in result.means]
        for out, extra in files:
            if not out or out == STDIO or not Path(out).is_file():
                continue
            run = by_dir.setdefault(Path(out).parent, {**{k: v for k, v in base.items() if k != "outputs"}, "outputs": []})
            run_record.add_output(run, out, sha256=sha256_file(Path(out)), input=path, input_sha256=in_sha, **extra)
    for directory, run in by_dir.items():
        run_record.write_run(directory, run)
