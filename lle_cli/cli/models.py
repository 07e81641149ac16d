"""``lle models``: list, describe, download, verify, remove, import and export models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .. import api
from ..api import embedded_path, hub_cached_file, weights_location
from ..errors import LLEError, UsageError
from ._common import (
    JsonOpt, OfflineOpt, QuietOpt, WeightsOpt, download_progress, err_console, error, note, show_progress, warning,
)

app = typer.Typer(help="List, download, verify, remove, import and export models.", no_args_is_help=True)

NamesArg = Annotated[Optional[list[str]], typer.Argument(help="Model names or aliases.", show_default=False)]


def _where(entry) -> str:
    return weights_location(entry) or "import by hand"


def _path(entry) -> str | None:
    """The file ``load_weights`` would read now, if any."""
    emb = embedded_path(entry)
    if emb is not None:
        return str(emb)
    p = api.cached_weights_path(entry.name)
    return str(p) if p.is_file() else None


# measured by bench/zoo.py and packaged beside the manifest; never typed by hand
FIGURES_FILE = Path(__file__).resolve().parents[1] / "model_figures.json"
_FIGURE_KEYS = ("lol_psnr", "lol_ssim", "niqe_real", "seconds_600x400")


def _figures() -> tuple[dict, dict]:
    """(per-model figures, what they mean) from the packaged model_figures.json; empty when it is absent.

    A damaged file costs the figures, not the listing: a one-line warning says how to regenerate it.
    """
    try:
        data = json.loads(FIGURES_FILE.read_text())
        return dict(data["models"]), data
    except FileNotFoundError:
        return {}, {}
    except (OSError, ValueError, KeyError, TypeError) as e:
        warning(f"{FIGURES_FILE}: unreadable ({e}); regenerate it with `python bench/zoo.py`")
        return {}, {}


def _num(v, fmt: str) -> str:
    return "-" if not isinstance(v, (int, float)) or not math.isfinite(v) else format(v, fmt)


@app.command("list")
def list_models(json_out: JsonOpt = False) -> int:
    """Every registered model, where its weights are (embedded, cached, or downloadable on first use), and how
    it measured here: LOL eval15 PSNR/SSIM, NIQE on real photos (lower is more natural), licence and size."""
    entries = api.list_models()
    figures, about = _figures()
    if json_out:
        for e in entries:
            fig = figures.get(e.name, {})
            print(json.dumps({"name": e.name, "family": e.family, "task": e.task, "parameters": e.parameters,
                              "license": e.license, **{k: fig.get(k) for k in _FIGURE_KEYS},
                              "weights": weights_location(e), "path": _path(e)}))
        return 0
    table = Table(title=None, box=None, header_style="bold")
    for col in ("name", "family", "task", "params", "LOL PSNR", "SSIM", "NIQE real", "licence", "weights"):
        table.add_column(col, overflow="fold", justify="right" if col in ("params", "LOL PSNR", "SSIM", "NIQE real") else "left")
    for e in entries:
        lic = e.license if len(e.license) < 28 else e.license[:25] + "..."
        fig = figures.get(e.name, {})
        table.add_row(e.name, e.family, e.task, f"{e.parameters:,}", _num(fig.get("lol_psnr"), ".2f"),
                      _num(fig.get("lol_ssim"), ".3f"), _num(fig.get("niqe_real"), ".2f"), lic, _where(e))
    Console(soft_wrap=False, width=max(Console().width, 140)).print(table)
    if figures:
        print(f"LOL PSNR/SSIM: {about.get('lol', 'LOL eval15')}. NIQE real: {about.get('niqe_real', 'NIQE on real photos')}.")
        print(f"Measured by bench/zoo.py on {about.get('date', '?')[:10]}; '-': not measured (weights not on that machine).")
    return 0


def _upstream_info(up, name: str | None = None) -> dict | None:
    """The authors' file: what it is (name, size, the one sha256 every download is checked against) and every
    public location it is fetched from, in the order they are tried."""
    if up is None:
        return None
    out = {"filename": up.filename, "sha256": up.sha256, "size": up.size, "url": up.url,
           "sources": [{"kind": loc.kind, "url": loc.url} for loc in up.locations]}
    if up.pins_on_download and name:  # the authors publish no checksum: the first verified download's
        out["pinned"] = api.pinned_sha256(name)
    return out


@app.command("info")
def info(name: Annotated[str, typer.Argument(help="Model name or alias.")], json_out: JsonOpt = False) -> int:
    """Everything the manifest knows about one model."""
    e = api.model_info(name)
    data = {
        "name": e.name, "family": e.family, "task": e.task, "title": e.title, "paper": e.paper, "license": e.license,
        "training_data": e.training_data, "parameters": e.parameters, "architecture": e.architecture,
        "weights": weights_location(e), "cache_path": str(api.cached_weights_path(e.name)),
        "hub": e.hub.__dict__ if e.hub else None, "upstream": _upstream_info(e.upstream, e.name),
        # a model made of several authors' files: each, as "upstream" describes one
        "components": [{"name": c.component, **_upstream_info(c)} for c in e.components] or None,
        "embedded": e.embedded, "training": e.training, "notes": e.notes,
    }
    if json_out:
        print(json.dumps(data, indent=2))
        return 0
    for k, v in data.items():
        if v in (None, "", {}):
            continue
        if k in ("upstream", "components"):
            for part in v if k == "components" else [v]:
                sha = part["sha256"] or "unknown (imported by hand only)"
                if "pinned" in part:
                    sha = (f"not published; pinned on this machine's first verified download: {part['pinned']}" if part["pinned"]
                           else "not published; lle pins the sha256 of the first download that fits the architecture")
                size = f", {part['size']:,} bytes" if part["size"] else ""
                name = f"{part['name']}: " if k == "components" else ""
                print(f"{k:14} {name}{part['filename']}{size}, sha256={sha}")
                for i, src in enumerate(part["sources"]):
                    print(f"{'sources' if i == 0 else '':14} {src['kind']:10} {src['url']}")
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items() if b is not None)
        print(f"{k:14} {v}")
    return 0


@app.command("download")
def download(
    names: NamesArg = None,
    all_: Annotated[bool, typer.Option("--all", help="Every model that is not embedded.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Fetch again even if cached (replaces a damaged file).")] = False,
    offline: OfflineOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> int:
    """Fetch weights into the cache now (the hub first, then the authors' file), verified by sha256.

    Prints each cached file's path. Exit code 0: all there, 1: some failed (the others are kept).
    """
    if bool(names) == all_:
        raise UsageError("name the models to download, or pass --all (not both)")
    if all_:  # files lle cannot verify (no sha256 in the manifest) are never fetched
        entries = [e for e in api.list_models() if e.downloadable and not embedded_path(e)]
    else:
        entries = [api.model_info(n) for n in names or []]
    failures = 0
    with download_progress(show_progress(quiet, json_out)) as on_bytes:
        for e in {e.name: e for e in entries}.values():  # an alias and its target name the same model once
            if emb := embedded_path(e):
                if json_out:
                    print(json.dumps({"model": e.name, "status": "ok", "via": "embedded", "path": str(emb), "sha256": e.embedded_sha256}))
                else:
                    if not quiet:
                        err_console.print(f"{e.name}: embedded in lle, nothing to download")
                    print(emb, flush=True)
                continue
            try:
                r = api.download_model(e.name, offline=offline, force=force, progress=on_bytes)
            except LLEError as err:
                failures += 1
                if json_out:
                    print(json.dumps({"model": e.name, "status": "error", "error": str(err)}), flush=True)
                else:
                    error(f"{err}")
                continue
            if json_out:
                print(json.dumps({"model": e.name, "status": "ok", "via": r.via, "path": str(r.path), "sha256": r.sha256}), flush=True)
                continue
            if not quiet:
                how = "already cached" if r.via == "cache" else f"downloaded from {r.source}"
                err_console.print(f"{e.name}: {how}", soft_wrap=True, highlight=False)
            print(r.path, flush=True)
    return 1 if failures else 0


@app.command("verify")
def verify(names: NamesArg = None, json_out: JsonOpt = False) -> int:
    """Re-hash embedded and cached weights against the manifest. Exit code 1 if any file is damaged."""
    results = api.verify_models(names)
    for r in results:
        if json_out:
            print(json.dumps({"model": r.model, "location": r.location, "path": str(r.path), "ok": r.ok, "error": r.detail or None}))
        elif r.ok:
            print(f"ok       {r.model:28} {r.location:9} {r.path}")
        else:
            print(f"DAMAGED  {r.model:28} {r.location:9} {r.path}")
    bad = [r for r in results if not r.ok]
    if not results and not json_out:
        err_console.print("no embedded or cached weights to verify")
    for r in bad:
        fix = f"`lle models download {r.model} --force`" if r.location == "cached" else "reinstall lle"
        error(f"{r.detail}; replace it with {fix}")
    return 1 if bad else 0


@app.command("rm")
def rm(names: Annotated[list[str], typer.Argument(help="Model names or aliases.", show_default=False)], quiet: QuietOpt = False) -> int:
    """Delete models' cached weights (lle's cache; the next use downloads them again)."""
    entries = [api.model_info(n) for n in names]  # all names valid before anything is deleted
    for e in {e.name: e for e in entries}.values():
        gone = api.remove_model(e.name)
        if quiet:
            continue
        if gone:
            err_console.print(f"removed {e.name}: " + ", ".join(str(p) for p in gone), soft_wrap=True, highlight=False)
        elif embedded_path(e):
            err_console.print(f"{e.name} is embedded in lle; there is nothing to remove")
        else:
            err_console.print(f"{e.name}: nothing cached")
        if e.hub and (copy := hub_cached_file(e.hub)):
            err_console.print(f"  the hub cache still holds {copy} (`hf cache rm` deletes it)", soft_wrap=True, highlight=False)
    return 0


@app.command("import")
def import_(
    files: Annotated[list[Path], typer.Argument(help="Authors' checkpoints (.pth) or safetensors files, or folders of them (a model made of several files: all of them, or their folder).")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Which model these files are; default: recognised by their sha256.")] = None,
    trust_unknown: Annotated[bool, typer.Option("--trust-unknown", help="Import even if the sha256 is not the manifest's.")] = False,
) -> int:
    """Verify checkpoints' sha256, load them safely and store them as safetensors in the cache."""
    # every file is identified before any is imported, so one unknown file imports nothing
    results = api.import_checkpoints(files, model, trust_unknown=trust_unknown)
    done: dict[str, Path] = {}
    for r in results:
        if not r.verified:
            warning(f"{r.model}: sha256 {r.source_sha256[:12]}... not in the manifest; imported because of --trust-unknown")
        if r.missing:
            note(f"imported {r.model}'s {r.component} (sha256 {r.source_sha256[:12]}...); still needed: {', '.join(r.missing)}")
            done.pop(r.model, None)
        else:
            what = f"{r.model}'s {r.component}, the last of its files" if r.component else r.model
            err_console.print(f"imported {what} (sha256 {r.source_sha256[:12]}...)", soft_wrap=True, highlight=False)
            done[r.model] = r.path
    for path in done.values():  # stdout: the usable models' files, one per line
        print(path)
    return 0


EXPORT_FORMATS = ("safetensors", "onnx")


@app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="Model name or alias.")],
    directory: Annotated[Path, typer.Argument(help="Output folder (safetensors: one folder per hub repo).")],
    format_: Annotated[str, typer.Option("--format", "-f", help="safetensors (the weights and the hub repo's model card) or onnx (the network as DIR/NAME.onnx with a DIR/NAME.onnx.json sidecar; the onnx extra).")] = "safetensors",
    weights: WeightsOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files in the folder that differ.")] = False,
    offline: OfflineOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Write a model's safetensors and its hub repo's model card (README.md), ready to upload; or, with
    --format onnx, its network as ONNX (opset 18, dynamic size, weights inside), checked against lle."""
    fmt = format_.strip().lower()
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--format {format_}: expected one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "onnx":
        return _export_onnx(name, directory, weights, overwrite=overwrite, offline=offline, quiet=quiet)
    if weights is not None:
        raise UsageError("--weights applies to --format onnx only; a safetensors export publishes the manifest's own file")
    with download_progress(show_progress(quiet, False)) as on_bytes:
        r = api.export_model(name, directory, overwrite=overwrite, offline=offline, progress=on_bytes)
    hub = api.model_info(name).hub
    print(r.weights)
    print(r.card)
    if not quiet and hub is not None:
        tag = f" && hf repos tag create {hub.repo_id} {hub.revision}" if hub.revision else ""
        err_console.print(f"upload with: hf upload {hub.repo_id} {directory} .{tag}", soft_wrap=True, highlight=False)
    return 0


def _export_onnx(name: str, directory: Path, weights: Path | None, *, overwrite: bool, offline: bool, quiet: bool) -> int:
    from ..export import check_targets, export_onnx, require_onnx

    require_onnx()  # before any weights are read or downloaded
    entry = api.model_info(name)
    check_targets(directory, entry.name, overwrite=overwrite)
    with download_progress(show_progress(quiet, False)) as on_bytes:
        model = api.load_model(entry.name, weights=weights, device="cpu", precision="fp32", offline=offline, progress=on_bytes, tile=0)
    if not quiet:
        err_console.print(f"exporting {entry.name} to ONNX and checking it in ONNX Runtime...", soft_wrap=True, highlight=False)
    r = export_onnx(model, directory, overwrite=overwrite)
    print(r.path)
    print(r.sidecar)
    if not quiet:
        sample = f", a sample {r.sample_max_abs_diff:.2g}" if r.sample_max_abs_diff is not None else ""
        err_console.print(f"max |diff| to lle's output: {r.max_abs_diff:.2g}{sample} ({r.seconds:.0f} s)", soft_wrap=True, highlight=False)
    return 0
