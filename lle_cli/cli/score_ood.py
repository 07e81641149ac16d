"""``lle score-ood``: how far an LLFlow model's encoder features of each image are from its training
inputs' (Mahalanobis distance, Hong et al. ICCV 2023 eq. 11-12), and whether sampling explodes there."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TimeElapsedColumn,
)
from rich.table import Table
from typer.core import TyperGroup

from .. import api
from ..api import STDIO, expand_inputs
from ..errors import OutputExistsError, UsageError
from ..api import write_bytes_atomic
from ._common import (
    DeviceOpt,
    JsonOpt,
    OfflineOpt,
    PrecisionOpt,
    QuietOpt,
    WeightsOpt,
    err_console,
    error,
    label_column,
    note,
    say,
    show_progress,
)

_HELP = """Out-of-distribution scores of LLFlow encoder features (robust flows, Hong et al. ICCV 2023).

Fit: `lle score-ood fit TRAIN_DIR -o stats.safetensors` stores the mean and covariance of the model's encoder features over its training inputs.

Score: `lle score-ood TEST_DIR --stats stats.safetensors` (the `score` subcommand, which is the default) ranks images and patches by Mahalanobis distance. A high score means the flow's inverse may explode there (NaN/Inf or out-of-range pixels); --validate draws samples and measures it.

See `lle score-ood fit --help` and `lle score-ood score --help`.
"""


class _DefaultToScore(TyperGroup):
    """``lle score-ood ARGS`` means ``lle score-ood score ARGS`` unless ARGS start with a subcommand or --help."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["score", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_DefaultToScore, help=_HELP, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


def _progress(quiet: bool, json_out: bool) -> Progress:
    return Progress(
        label_column(), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, disable=not show_progress(quiet, json_out), transient=True,
    )


def _default_model(model: str | None) -> str:
    """The default LLFlow model is `lle sample`'s, so both commands agree once it changes."""
    if model:
        return model
    from .sample import DEFAULT_MODEL

    return DEFAULT_MODEL


def _inputs(items: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    found = expand_inputs(items)
    return [p for p, e in found if not e], [(p, e) for p, e in found if e]


def _blocks(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(b) for b in text.replace(" ", "").split(",") if b)
    except ValueError:
        raise UsageError(f"--blocks {text!r}: give RRDB block indices like 1,3,5,7") from None


def _shrinkage(text: str) -> float | None:
    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--shrinkage {text!r}: a number between 0 and 1, or auto (Ledoit-Wolf)") from None


@app.command("fit")
def fit(
    inputs: Annotated[list[str], typer.Argument(help="The model's training inputs (dark images): folders, files or globs.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Statistics file to write (.safetensors).")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="An LLFlow-family model; default: the one `lle sample` uses.")] = None,
    weights: WeightsOpt = None,
    patch_size: Annotated[int, typer.Option("--patch-size", min=2, help="Patch side in pixels; each patch's features are averaged.")] = api.DEFAULT_PATCH,
    blocks: Annotated[Optional[str], typer.Option("--blocks", help="RRDB blocks whose outputs are concatenated, e.g. 1,3,5,7; default: the model's stacked blocks.")] = None,
    shrinkage: Annotated[str, typer.Option("--shrinkage", help="Covariance shrinkage towards a scaled identity: auto (Ledoit-Wolf) or 0..1.")] = "auto",
    percentile: Annotated[float, typer.Option("--percentile", help="Warning threshold: this percentile of the training images' out-of-fold scores.")] = api.DEFAULT_PERCENTILE,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing statistics file.")] = False,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> int:
    """Fit the mean and covariance of an LLFlow model's encoder features on its training inputs.

    Features: the outputs of the chosen RRDB blocks, concatenated and averaged over each patch (float64; the covariance is shrunk, and the shrinkage recorded). The file also records the model and its weights' sha256 (other models are refused), the patch size and a warning threshold.
    """
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output}: already exists; pass --overwrite to replace it")
    paths, bad = _inputs(inputs)
    for _, err in bad:
        error(f"{err}")
    if not paths:
        raise UsageError("no training images found; pass a folder of the model's training inputs")
    loaded = api.load_model(_default_model(model), weights=weights, device=device, precision=precision, offline=offline)
    api.ensure_feature_model(loaded)
    failed: list[str] = [e for _, e in bad]
    with _progress(quiet, json_out) as prog:
        task = prog.add_task("features", total=len(paths))
        stats = api.fit_ood(
            loaded, paths, output=output, patch_size=patch_size, blocks=_blocks(blocks), shrinkage=_shrinkage(shrinkage),
            percentile=percentile, progress=lambda done, total: prog.update(task, completed=done),
            on_error=lambda path, msg: (failed.append(msg), error(f"{msg}")),
        )
    if json_out:
        print(json.dumps({"output": str(output), **stats.metadata()}), flush=True)
    else:
        print(output, flush=True)
    if not quiet and not json_out:
        err_console.print(
            f"{stats.n_images} images, {stats.n_patches} patches of {stats.spec.patch_size}px, {stats.dim} features "
            f"(RRDB blocks {','.join(map(str, stats.spec.blocks))} of {loaded.name}); shrinkage {stats.shrinkage:.3g} "
            f"({stats.regularisation}); threshold {stats.threshold:.4g} ({stats.percentile:g}th percentile)",
            soft_wrap=True, highlight=False,
        )
    return 1 if failed else 0


@app.command("calibrate")
def calibrate(
    inputs: Annotated[list[str], typer.Argument(help="Real photos of the kind users bring (folders, files or globs); their samples are drawn and checked.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibrated statistics file to write (.safetensors).")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="An LLFlow-family model; default: the one `lle sample` uses.")] = None,
    weights: WeightsOpt = None,
    stats_path: Annotated[Optional[Path], typer.Option("--stats", help="Statistics to calibrate; default: those shipped with the model.")] = None,
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Samples drawn per image.")] = 10,
    tau: Annotated[float, typer.Option("--tau", "-t", help="Sampling temperature of the check.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    error_max: Annotated[float, typer.Option("--error-max", help="An image fails when a sample is non-finite or more than this fraction of its values are error pixels.")] = 0.01,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing statistics file.")] = False,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> int:
    """Set the warning threshold where samples start to fail, from validated real photos.

    Every photo is scored and its samples drawn and checked (as `--validate`); the threshold becomes the score that best separates photos whose samples fail from those whose samples are fine (lle_cli.ood_calibration). Mean, covariance and features are unchanged.
    """
    import dataclasses

    from ..api import calibrate_threshold

    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output}: already exists; pass --overwrite to replace it")
    if not 0 <= error_max <= 1:
        raise UsageError(f"--error-max {error_max}: must be a fraction between 0 and 1")
    paths, bad = _inputs(inputs)
    for _, err in bad:
        error(err)
    if not paths:
        raise UsageError("no images found to calibrate on; pass folders of real photos")
    stats0 = api.load_stats(stats_path) if stats_path is not None else None
    loaded = api.load_model(_default_model(model or (stats0.model.get("name") if stats0 else None)), weights=weights,
                            device=device, precision=precision, offline=offline)
    api.ensure_feature_model(loaded)
    stats, _ = api.stats_for(loaded, stats_path)
    results: list[api.ImageScore] = []
    failures = [e for _, e in bad]
    with _progress(quiet, json_out) as prog:
        task = prog.add_task("validating", total=len(paths))
        for res in api.score_ood(loaded, paths, stats=stats, validate=True, n=n, tau=tau, seed=seed):
            if res.status == "ok":
                results.append(res)
            else:
                failures.append(res.error or res.input)
                error(res.error or res.input)
            prog.update(task, advance=1, description=Path(res.input).name)
    if not results:
        raise UsageError("no image could be scored; nothing to calibrate on")
    cal = calibrate_threshold([r.score for r in results], [r.error_probability for r in results],
                              [r.nonfinite_samples or 0 for r in results], error_max=error_max)
    method = (f"calibrated on {cal.images} validated photos ({cal.failures} with failing samples: non-finite, or error "
              f"pixels > {error_max:g}; n {n}, tau {tau:g}, seed {seed}); balanced accuracy "
              f"{'-' if cal.balanced_accuracy is None else format(cal.balanced_accuracy, '.3f')}; was {stats.threshold:.4g} "
              f"({stats.percentile:g}th percentile of the training images)")
    dataclasses.replace(stats, threshold=cal.threshold, threshold_method=method).save(output)
    if json_out:
        print(json.dumps({"output": str(output), "model": loaded.name, **cal.to_dict(), "previous_threshold": stats.threshold}), flush=True)
    else:
        print(output, flush=True)
    if not quiet and not json_out:
        rho = "-" if cal.spearman is None else f"{cal.spearman:.3f}"
        say(f"threshold {stats.threshold:.4g} -> {cal.threshold:.4g}: {cal.flagged} of {cal.images} photos flagged "
            f"({cal.true_positives} of the {cal.failures} whose samples fail); Spearman score vs error probability {rho}")
    return 1 if failures else 0


def _fmt(v: float | None, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def _rows(results: list[api.ImageScore], patches: bool, threshold: float, model: str = "") -> list[dict]:
    """Ranked rows (highest score first): one per image, or one per patch."""
    ok = [r for r in results if r.status == "ok"]
    if not patches:
        rows = [{"input": r.input, "model": model, "status": "ok", "error": None, "score": r.score, "mean_patch_score": r.mean_patch_score,
                 "above_threshold": r.above_threshold, "width": r.width, "height": r.height,
                 "patches": len(r.patches), "error_probability": r.error_probability,
                 "nonfinite_samples": r.nonfinite_samples, "samples": r.samples, "seed": r.seed, "heatmap": r.heatmap,
                 "_patches": [{"box": list(p.box), "score": p.score, "error_probability": p.error_probability} for p in r.patches]}
                for r in ok]
    else:
        rows = [{"input": r.input, "model": model, "status": "ok", "error": None, "y0": p.box[0], "x0": p.box[1], "y1": p.box[2], "x1": p.box[3], "score": p.score,
                 "above_threshold": p.score > threshold, "error_probability": p.error_probability}
                for r in ok for p in r.patches]
    rows.sort(key=lambda d: -d["score"])
    for i, d in enumerate(rows, 1):
        d["rank"] = i
    return rows


def _summary_line(s: dict, threshold: float, percentile: float, method: str = "") -> str:
    how = "calibrated on photos whose samples were checked" if method.startswith("calibrated") else \
        f"{percentile:g}th percentile of the training images"
    line = f"{s['images']} images scored ({s['failed']} failed); {s['above_threshold']} above the threshold {threshold:.4g} ({how})"
    if "samples" in s:
        line += (f"; %Inf {s['percent_inf']:.2f}% ({s['nonfinite_samples']} of {s['samples']} samples non-finite), "
                 f"mean error probability {s['mean_error_probability']:.4g}; score vs error probability over images: "
                 f"Pearson {_fmt(s['pearson'], '.3f')}, Spearman {_fmt(s['spearman'], '.3f')}")
        if "patch_pearson" in s:
            line += f"; over {s['patches']} patches: Pearson {_fmt(s['patch_pearson'], '.3f')}, Spearman {_fmt(s['patch_spearman'], '.3f')}"
    return line


@app.command("score")
def score(
    inputs: Annotated[list[str], typer.Argument(help="Images to score: folders, files, globs, or - for stdin.", show_default=False)],
    stats_path: Annotated[Optional[Path], typer.Option("--stats", help="Statistics from `lle score-ood fit`; default: those shipped with the model.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="LLFlow-family model; default: the statistics' model, else `lle sample`'s.")] = None,
    weights: WeightsOpt = None,
    top: Annotated[Optional[int], typer.Option("--top", "-k", min=1, help="Show only the K highest-scoring rows.")] = None,
    patches: Annotated[bool, typer.Option("--patches", help="Rank patches instead of images (the paper's Fig. 4).")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="CSV on stdout (one row per image, or per patch).")] = False,
    json_out: JsonOpt = False,
    heatmap: Annotated[Optional[Path], typer.Option("--heatmap", help="Write <stem>_ood.png per image into this folder: the patch scores over the image.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing heat maps.")] = False,
    validate: Annotated[bool, typer.Option("--validate", help="Draw --n samples per image and report the observed error probability and non-finite samples.")] = False,
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Samples per image with --validate.")] = 10,
    tau: Annotated[float, typer.Option("--tau", "-t", min=0.0, help="Latent temperature of the --validate samples.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Base seed of the --validate samples (sample j: seed + j).")] = 0,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Latents decoded at once with --validate.")] = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    quiet: QuietOpt = False,
) -> int:
    """Score images: the Mahalanobis distance of their encoder features per patch; an image scores as its worst patch.

    Output is ranked (highest first) as a table, --csv or --json (one object per image, then a summary). With --validate each image gets --n samples at --tau; its error probability is the fraction of values outside [-0.5, 1.5] or non-finite before clamping, and the summary gives %Inf (samples with any non-finite value), the mean error probability and the Pearson/Spearman correlation of score and error.

    Exit code 0: all scored, 1: some inputs failed, 2: usage error (e.g. statistics of another model).
    """
    if csv_out and json_out:
        raise UsageError("--csv and --json both write to stdout; choose one")
    if heatmap is not None and heatmap.exists() and not heatmap.is_dir():
        raise UsageError(f"--heatmap {heatmap}: must be a directory")
    paths, bad = _inputs(inputs)
    stdin_bytes = sys.stdin.buffer.read() if STDIO in paths else None
    stats = api.load_stats(stats_path) if stats_path is not None else None
    name = model or (stats.model.get("name") if stats else None)
    loaded = api.load_model(_default_model(name), weights=weights, device=device, precision=precision, offline=offline)
    api.ensure_feature_model(loaded)
    stats, _ = api.stats_for(loaded, stats_path)  # refuses statistics of other models or weights
    machine = json_out or csv_out
    if not quiet and not machine:
        note(f"model {loaded.name} ({loaded.weights_source}) on {loaded.device}")
    written: set[str] = set()

    def save_heatmap(res: api.ImageScore, rgb) -> None:
        name = api.heatmap_name(res.input, written)  # a second x.png of another folder gets x_2_ood.png
        written.add(name)
        heatmap.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(api.heatmap(rgb, res, stats.threshold)).save(buf, format="PNG")
        write_bytes_atomic(heatmap / name, buf.getvalue(), overwrite=overwrite)
        res.heatmap = str(heatmap / name)

    results: list[api.ImageScore] = []
    failures = [e for _, e in bad]
    for err in failures:
        error(f"{err}")
    with _progress(quiet, machine) as prog:
        task = prog.add_task("scoring", total=len(paths))
        for res in api.score_ood(loaded, paths, stats=stats, stdin=stdin_bytes, validate=validate, n=n, tau=tau, seed=seed,
                                 batch_size=batch_size, each=save_heatmap if heatmap is not None else None):
            results.append(res)
            if res.status != "ok":
                failures.append(res.error or res.input)
                error(f"{res.error}")
            prog.update(task, advance=1, description=Path(res.input).name)
    rows = _rows(results, patches, stats.threshold, loaded.name)[: top or None]
    summary = api.summarise_scores(results, patches=patches)
    summary.update(threshold=stats.threshold, threshold_percentile=stats.percentile, model=loaded.name)
    if json_out:
        for row in rows:
            row = dict(row)
            if not patches:
                row["patches"] = row.pop("_patches")
            print(json.dumps(row), flush=True)
        # failed inputs too: every input has a record, as in enhance and sample
        failed_rows = [(p, e) for p, e in bad] + [(r.input, r.error) for r in results if r.status != "ok"]
        for path, err in failed_rows:
            print(json.dumps({"input": path, "model": loaded.name, "status": "error", "error": err}), flush=True)
        print(json.dumps({"summary": summary}), flush=True)
    elif csv_out:
        cols = ["rank", "input", "score"] + (["y0", "x0", "y1", "x1"] if patches else ["mean_patch_score", "patches", "width", "height"])
        cols += ["above_threshold"] + (["error_probability"] + ([] if patches else ["nonfinite_samples", "samples"]) if validate else [])
        w = csv.DictWriter(sys.stdout, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        sys.stdout.flush()
        if not quiet:
            err_console.print(_summary_line(summary, stats.threshold, stats.percentile, stats.threshold_method), soft_wrap=True, highlight=False)
    else:
        table = Table(title=f"OOD scores, {loaded.name} (threshold {stats.threshold:.4g})", title_justify="left")
        table.add_column("rank", justify="right")
        table.add_column("score", justify="right")
        if patches:
            table.add_column("patch (x0,y0)-(x1,y1)")
        else:
            table.add_column("mean patch", justify="right")
        table.add_column("OOD")
        if validate:
            table.add_column("error prob.", justify="right")
            if not patches:
                table.add_column("non-finite", justify="right")
        table.add_column("image", overflow="fold")
        for r in rows:
            cells = [str(r["rank"]), f"{r['score']:.4g}"]
            cells.append(f"({r['x0']},{r['y0']})-({r['x1']},{r['y1']})" if patches else f"{r['mean_patch_score']:.4g}")
            cells.append("yes" if r["above_threshold"] else "")
            if validate:
                cells.append(_fmt(r["error_probability"]))
                if not patches:
                    cells.append(f"{r['nonfinite_samples']}/{r['samples']}")
            cells.append(r["input"])
            table.add_row(*cells)
        out = Console(file=sys.stdout, highlight=False, soft_wrap=False, width=max(100, Console().width))
        out.print(table)
        out.print(_summary_line(summary, stats.threshold, stats.percentile, stats.threshold_method), soft_wrap=True)
    return 1 if failures else 0
