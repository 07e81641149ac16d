"""``lle eval``: PSNR/SSIM and NIQE (and optional LPIPS, no-reference metrics) under a named protocol.

Without REF_DIR the images are measured alone (no-reference mode): NIQE, plus any ``--no-ref``.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from .. import api
from ..errors import UsageError
from ..api import METRICS, PROTOCOLS, EvalReport, Extras, get_protocol, load_lpips, load_no_reference, sort_results
from ._common import (
    DeviceOpt, OfflineOpt, PrecisionOpt, QuietOpt, WeightsOpt, download_progress, err_console, error, label_column, note, show_progress,
)

_PROTOCOL_HELP = "; ".join(f"{p.name}: {p.summary}" for p in PROTOCOLS.values())


def eval_(
    predictions: Annotated[Path, typer.Argument(metavar="PRED_DIR", help="Folder of enhanced images; with --model, the low-light inputs.", show_default=False)],
    references: Annotated[
        Optional[Path],
        typer.Argument(metavar="REF_DIR", help="Folder of ground-truth images; pairs are matched by file stem. "
                       "Without it each image is measured alone (NIQE, --no-ref).", show_default=False),
    ] = None,
    protocol: Annotated[str, typer.Option("--protocol", help=f"How to measure. {_PROTOCOL_HELP}.")] = "plain",
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Enhance the images of PRED_DIR with this model first (`default`: the embedded model).")
    ] = None,
    weights: WeightsOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",  # measured figures: reproducible, not what auto picks on this machine
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Flow models: measure the mean of this many samples per image (paper Sec. 3.2).")] = 1,
    tau: Annotated[Optional[float], typer.Option("--tau", "-t", help="Flow models: sampling temperature (default 1 when --n > 1; 0 is the latent mean, as enhance).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for sampling.")] = 0,
    save: Annotated[Optional[Path], typer.Option("--save", help="With --model: also write the predictions (8-bit PNG) and a run record here.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="With --save: replace existing files.")] = False,
    sort: Annotated[Optional[str], typer.Option("--sort", help="List the worst images first by this metric (psnr, ssim, ssim_grey, psnr_aligned, ..., niqe, lpips).")] = None,
    niqe: Annotated[bool, typer.Option("--niqe/--no-niqe", help="Measure NIQE (no reference, BasicSR's; lower is more natural) of each prediction.")] = True,
    lpips: Annotated[bool, typer.Option("--lpips", help="Also LPIPS (AlexNet) through the optional `lpips` package; its weights must be on disk.")] = False,
    no_ref: Annotated[
        Optional[list[str]], typer.Option("--no-ref", help="Also a no-reference metric from the optional `pyiqa` package (niqe, brisque, ...); repeatable.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the whole report as one JSON document on stdout.")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print one CSV row per image and a mean row on stdout.")] = False,
    quiet: QuietOpt = False,
) -> int:
    """Measure enhanced images against references, or alone (NIQE) without REF_DIR. Exit code 0: all measured, 1: some failed, 2: usage error."""
    proto = get_protocol(protocol)
    if json_out and csv_out:
        raise UsageError("--json and --csv both print to stdout; choose one")
    if model is None:
        for flag, given in (("--weights", weights), ("--save", save), ("--n", n != 1), ("--tau", tau is not None)):
            if given:
                raise UsageError(f"{flag} needs --model (without it PRED_DIR holds finished predictions)")
    if tau is not None and not (math.isfinite(tau) and tau >= 0):
        raise UsageError(f"--tau {tau:g}: must be a finite number >= 0 (the spread of the latent; 0 = its mean)")
    free = references is None
    if free and lpips:
        raise UsageError("--lpips compares with a reference: give REF_DIR, or leave out --lpips")
    if free and not niqe and not no_ref:
        raise UsageError("without REF_DIR only no-reference metrics can be measured: drop --no-niqe or add --no-ref NAME")
    extras = Extras()
    if lpips:
        extras.lpips = load_lpips()
    for name in no_ref or []:
        # pyiqa's NIQE is another implementation than the built-in one: both can be shown side by side
        extras.no_reference[f"{name}_pyiqa" if name in METRICS else name] = load_no_reference(name)
    if free:
        avail = [*(["niqe"] if niqe else []), *extras.no_reference]
    else:
        avail = [k for k in METRICS if (k != "lpips" or lpips) and (k != "niqe" or niqe)] + list(extras.no_reference)
    if sort is not None and sort not in avail:
        raise UsageError(f"--sort {sort!r}: expected one of {', '.join(avail)}")

    interactive = show_progress(quiet, json_out or csv_out)
    progress = Progress(label_column(), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, disable=not interactive, transient=True)
    if model is None:
        with progress:
            task = progress.add_task("measuring", total=None)
            report = api.evaluate(predictions, references, protocol=proto, extras=extras, niqe=niqe,
                                  progress=lambda r: progress.update(task, advance=1, description=r.name))
    else:
        sampling = n != 1 or tau is not None
        if sampling:
            from ..sampling import ensure_flow_model

            ensure_flow_model(api.model_info(None if model == "default" else model))  # before any download
        with download_progress(interactive) as on_bytes:
            loaded = api.load_model(None if model == "default" else model, weights=weights, device=device,
                                    precision=precision, offline=offline, progress=on_bytes)
        predict, options = None, {}
        if sampling:
            t = 1.0 if tau is None else tau
            predict = lambda rgb: _sample_mean(loaded, rgb, n, t, seed)  # noqa: E731
            options = {"n": n, "tau": t}
        if not quiet and not (json_out or csv_out):
            note(f"model {loaded.name} ({loaded.weights_source}) on {loaded.device}")
        with progress:
            task = progress.add_task("enhancing", total=None)
            report = api.evaluate(predictions, references, protocol=proto, model=loaded, predict=predict,
                                  predict_options=options, seed=seed if options else None, extras=extras,
                                  niqe=niqe, save=save, overwrite=overwrite,
                                  progress=lambda r: progress.update(task, advance=1, description=r.name))
    rows = sort_results(report.images, sort, extras) if sort else report.images
    if json_out:
        print(json.dumps(report.to_dict(), indent=1, allow_nan=False))
    elif csv_out:
        _print_csv(report, rows)
    else:
        _print_table(report, rows)
    sys.stdout.flush()  # the report before the notes on stderr, when both go to one terminal
    if not quiet:
        _print_provenance(report, to_stdout=False)
        for r in report.failures:
            error(f"{r.error}")
    return 1 if report.failures else 0


def _sample_mean(loaded, rgb, n: int, tau: float, seed: int):
    """The mean of ``n`` samples at ``tau`` (one at tau 0): what ``lle sample --mean`` writes."""
    drawn = api.sample(loaded, rgb, n=n, taus=(tau,), seed=seed)
    mean = drawn.mean(tau, 0.0)
    if mean is None:
        from ..errors import NonFiniteError

        raise NonFiniteError(f"every sample at tau {tau:g} was non-finite; nothing to measure")
    return mean


def _fmt(key: str, v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:.2f}" if key.startswith(("psnr", "niqe")) else f"{v:.4f}"


def _label(report: EvalReport, key: str) -> str:
    label = METRICS[key][0] if key in METRICS else key.upper()
    return label + ("*" if key in report.headline_keys else "")


def _print_table(report: EvalReport, rows: list[Any]) -> None:
    p = report.protocol
    gain = not report.reference_free  # the alignment needs a reference
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("image")
    for k in report.metrics:
        table.add_column(_label(report, k), justify="right", style="bold" if k in report.headline_keys else None)
    if gain:
        table.add_column("gain", justify="right")
    for r in rows:
        tail = [_fmt("gain", r.gain) if r.ok else "-"] if gain else []
        if r.ok:
            table.add_row(r.name, *(_fmt(k, r.metrics.get(k)) for k in report.metrics), *tail)
        else:
            table.add_row(r.name, *("-" for _ in report.metrics), *tail)
    n_ok = len(report.images) - len(report.failures)
    table.add_row(f"mean ({n_ok})", *(_fmt(k, report.mean.get(k)) for k in report.metrics), *([""] if gain else []), style="bold")
    out = Console(file=sys.stdout, soft_wrap=False, highlight=False, width=max(Console().width, 120))
    out.print(table)
    niqe_note = "  NIQE: no reference, BasicSR's implementation (lower is more natural); '-' for images under two 96x96 blocks."
    if report.reference_free:
        if "niqe" in report.metrics:
            print(f"no references: NIQE {_fmt('niqe', report.mean.get('niqe'))} (* = the headline)")
            print(niqe_note)
        else:
            print("no references: each image measured alone")
        return
    h_psnr, h_ssim = p.headline
    print(f"protocol {p.name}: PSNR {_fmt('psnr', report.mean.get(h_psnr))} dB, SSIM {_fmt('ssim', report.mean.get(h_ssim))}"
          f"  (* = the protocol's headline: {METRICS[h_psnr][0]}, {METRICS[h_ssim][0]})")
    print(f"  {p.summary}. 'al': after scaling the prediction to the reference's mean brightness by 'gain'.")
    print(f"  SSIM grey: {'1-D SSIM down each column of the grey image, as LLFlow measured' if p.grey_ssim == 'columns' else 'BT.601 grey image, 7x7 window'}.")
    if "niqe" in report.metrics:
        print(niqe_note)


def _print_csv(report: EvalReport, rows: list[Any]) -> None:
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["image", *report.metrics, "gain", "prediction", "reference", "error"])  # gain empty without references
    for r in rows:
        w.writerow([r.name, *(_csv(r.metrics.get(k)) for k in report.metrics), _csv(r.gain), r.prediction or "", r.reference or "", r.error or ""])
    w.writerow(["mean", *(_csv(report.mean.get(k)) for k in report.metrics), "", "", "", ""])


def _csv(v: float | None) -> str:
    return "" if v is None or math.isnan(v) else repr(float(v))


def _print_provenance(report: EvalReport, *, to_stdout: bool) -> None:
    say = print if to_stdout else (lambda s: err_console.print(s, markup=False, soft_wrap=True))
    if report.model is not None:
        m = report.model
        say(f"predictions made now by {m['name']} (weights {m['weights_source']}, sha256 {str(m.get('weights_sha256'))[:12]}) on {m['device']}/{m['dtype']}")
    for prod in report.producers:
        say(f"{prod['count']} prediction(s) from run {prod['run']}: {prod['description']}")
    if report.modified:
        say(f"warning: {report.modified} prediction(s) changed since their run record was written (sha256 differs)")
    if report.model is None and report.unrecorded:
        say(f"{report.unrecorded} prediction(s) have no run record (lle-run.json), so what produced them is unknown")
    for path in report.records:
        say(f"run record: {path}")
