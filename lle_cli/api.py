"""The public Python API: load a model by name and enhance images.

>>> from lle_cli import api
>>> model = api.load_model("rave")            # or None for the embedded default
>>> out = api.enhance_array(model, rgb)        # (H, W, 3) float32 in [0, 1]
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import cache
from .errors import UsageError
from .registry import ModelEntry, get_registry

if TYPE_CHECKING:  # the model code (PyTorch) is imported by the functions that need it: `lle enhance
    # --runtime onnx` and `lle --help` never do
    from .download import ProgressFn
    from .loading import ExportResult, FetchResult, VerifyResult
    from .runner import LoadedModel

__all__ = [
    "check_options",
    "load_model",
    "enhance_array",
    "sample",
    "list_models",
    "model_info",
    "import_checkpoint",
    "import_checkpoints",
    "download_model",
    "pinned_sha256",
    "verify_models",
    "remove_model",
    "export_model",
    "evaluate",
    "residual_tokens",
    "train_rave",
    "train_clip_lit_latent",
    "train_scl_lle",
    "fit_ood",
    "score_ood",
]


def list_models() -> list[ModelEntry]:
    reg = get_registry()
    return [reg.models[n] for n in reg.names()]


def model_info(name: str) -> ModelEntry:
    return get_registry().resolve(name)


def download_model(
    name: str, *, offline: bool = False, force: bool = False, progress: ProgressFn | None = None
) -> FetchResult:
    """Put the model's verified weights in the cache (hub first, then the authors' file); no-op if there."""
    from .loading import fetch_weights

    return fetch_weights(get_registry().resolve(name), offline=offline, force=force, progress=progress)


def pinned_sha256(name: str) -> str | None:
    """For a model whose authors publish no sha256: the one pinned by this machine's first verified download."""
    pin = cache.read_pin(get_registry().resolve(name).name)
    return pin["sha256"] if pin else None


def verify_models(names: list[str] | None = None) -> list[VerifyResult]:
    """Re-hash the embedded and cached weights of ``names`` (default: every model)."""
    from .loading import verify_weights

    reg = get_registry()
    entries = [reg.resolve(n) for n in names] if names else list_models()
    return verify_weights(entries)


def remove_model(name: str) -> list[Path]:
    """Delete a model's cached weights (not the hub cache's copy); the paths removed."""
    from .loading import remove_weights

    return remove_weights(get_registry().resolve(name))


def export_model(
    name: str, directory: str | Path, *, overwrite: bool = False, offline: bool = False, progress: ProgressFn | None = None
) -> ExportResult:
    """Write the model's safetensors and its hub repo's model card (README.md) into ``directory``."""
    from .loading import export_weights

    return export_weights(get_registry().resolve(name), Path(directory), overwrite=overwrite, offline=offline, progress=progress)


def check_options(name: str | None = None, *, tile: int | None = None, device: str = "auto", precision: str = "auto") -> None:
    """Refuse bad model, tile, device and precision options before any weights are read (UsageError).

    ``tile``: 0 or None, or at least the smallest tile the family's halo allows (two overlaps),
    below which every tile would be mostly margin and a run many times slower.
    """
    from .device import select_device, select_dtype
    from .models import FAMILIES
    from .runner import min_tile_size

    entry = get_registry().resolve(name)
    select_dtype(precision, select_device(device))
    if tile is None or tile == 0:
        return
    if tile < 0:
        raise UsageError(f"--tile {tile}: expected 0 (never tile), a size in pixels, or auto")

    if not FAMILIES[entry.family].tileable:
        raise UsageError(f"--tile {tile}: {entry.name} cannot run in tiles (its output depends on the whole image; "
                         "it bounds its own memory); leave --tile out or pass --tile 0")
    smallest = min_tile_size(entry.family)
    if tile < smallest:
        raise UsageError(f"--tile {tile}: {entry.name} needs tiles of at least {smallest} px (twice the overlap its "
                         f"{FAMILIES[entry.family].tile_margin}-px halo needs); pass --tile {smallest} or more, 0 to never tile, or auto")


def load_model(
    name: str | None = None,
    *,
    weights: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    offline: bool = False,
    progress: ProgressFn | None = None,
    tile: int | None = None,
) -> LoadedModel:
    """Build the named model (None: the embedded default), load verified weights, move to device.

    Weights not on this machine are downloaded once and cached, unless ``offline`` (or
    ``HF_HUB_OFFLINE=1``); ``progress(label, done, total)`` is called as bytes arrive.
    ``tile``: None tiles large images automatically (budget: ``lle_cli.memory``, ``$LLE_MEMORY_MB`` or ``$LLE_TILE_MEMORY_MB``), 0 never, N px tiles.
    """
    import torch

    from .device import select_device, select_dtype
    from .loading import load_weights
    from .models import FAMILIES, build_model, load_state_strict
    from .runner import LoadedModel

    entry = get_registry().resolve(name)
    check_options(entry.name, tile=tile, device=device, precision=precision)
    dev = select_device(device)
    dtype = select_dtype(precision, dev, entry.family)
    # auto's bf16 on a CPU is autocast (weights kept in float32): what bench/precision.py measured
    autocast = dev.type == "cpu" and dtype == torch.bfloat16 and (precision or "auto").lower() == "auto"
    state, source = load_weights(entry, Path(weights) if weights else None, offline=offline, progress=progress)
    module = build_model(entry.family, entry.architecture)
    load_state_strict(module, state, source=source)
    module.eval().to(dev, torch.float32 if autocast else dtype)
    from ._cpu import prepare_for_inference  # channels-last on the CPU (bench/vs_official.py)

    prepare_for_inference(module, FAMILIES[entry.family].channels_last, dev)
    return LoadedModel(entry, module, dev, dtype, source, tile=tile, autocast=autocast)


def enhance_array(model: LoadedModel, rgb: np.ndarray) -> np.ndarray:
    """Enhance one RGB image given as (H, W, 3) float in [0, 1]."""
    return model.enhance(rgb)


def sample(
    model: LoadedModel,
    rgb: np.ndarray,
    *,
    n: int = 1,
    taus: tuple[float, ...] = (1.0,),
    offsets: tuple[float, ...] = (0.0,),
    seed: int | None = None,
    **kwargs,
):
    """Draw enhancements of one (H, W, 3) image from a flow model: z = g(x) + tau * eps + offset.

    Returns an ``lle_cli.sampling.SampleSet`` (images unclamped, with per-sample statistics, seeds
    and flags); ``kwargs`` go to ``lle_cli.sampling.sample_array`` (``batch_size``,
    ``resample_bad``, ``max_tries``, ``max_out_of_range``, ``progress``).
    """
    from .sampling import sample_array

    return sample_array(model, rgb, n=n, taus=taus, offsets=offsets, seed=seed, **kwargs)


def evaluate(
    predictions: str | Path,
    references: str | Path,
    *,
    protocol: str = "plain",
    model: LoadedModel | None = None,
    save: str | Path | None = None,
    overwrite: bool = False,
    **kwargs,
):
    """PSNR/SSIM of a folder of predictions against references (pairs by file stem) under ``protocol``.

    With ``model``, ``predictions`` holds the low-light inputs: each is enhanced first (``save``
    writes the results and a run record). Returns an ``lle_cli.evaluate.EvalReport``; see that
    module for the protocols (``plain``, ``llflow``) and ``kwargs`` (``extras``, ``progress``,
    ``predict``, ``predict_options``, ``seed``).
    """
    from .errors import UsageError
    from .evaluate import evaluate_model, evaluate_predictions

    if model is None:
        if save is not None:
            raise UsageError("--save needs --model: without a model there is nothing new to write")
        return evaluate_predictions(predictions, references, protocol, **kwargs)
    return evaluate_model(model, predictions, references, protocol, save_dir=save, overwrite=overwrite, **kwargs)


def residual_tokens(
    *,
    welllit: str | Path | None = None,
    backlit: str | Path | None = None,
    load: str | Path | None = None,
    top: int = 7,
    shift_tokens: int = 0,
    save: str | Path | None = None,
    clip=None,
    device: str = "auto",
    offline: bool = False,
    progress=None,
) -> dict:
    """RAVE's residual vector (from two image folders, or ``load``-ed) and the CLIP vocabulary tokens with
    the ``top`` lowest/highest cosine similarity to it (RAVE Eq. 10, 14, Table 2); ``shift_tokens``
    applies Eq. 15-16 first, ``save`` writes the vector. ``clip`` is an ``lle_cli.clip.ClipSpec``;
    ``progress(stage, done, total)`` reports the embedding of images and of the vocabulary."""
    from .clip import load_clip
    from .device import select_device
    from .residual import load_residual, residual_from_folders, save_residual, shifted, token_report

    model = load_clip(clip, device=select_device(device), offline=offline)
    stage = (lambda name: (lambda d, t: progress(name, d, t))) if progress else (lambda name: None)
    if load is not None:
        rv = load_residual(Path(load), clip_key=model.key)
    else:
        rv = residual_from_folders(model, Path(backlit), Path(welllit), progress=stage("images"))
    if shift_tokens:
        rv = shifted(model, rv, shift_tokens, progress=stage("vocabulary"))
    report = token_report(model, rv, top=top, progress=stage("vocabulary"))
    if save is not None:
        save_residual(rv, Path(save), clip_key=model.key)
    return report


def train_rave(backlit: str | Path, welllit: str | Path, output: str | Path, config=None, **kwargs):
    """Train RAVE; see ``lle_cli.train.rave.train_rave`` (config: ``RaveTrainConfig``)."""
    from .train.rave import train_rave as _train

    return _train(Path(backlit), Path(welllit), Path(output), config, **kwargs)


def train_clip_lit_latent(backlit: str | Path, welllit: str | Path, output: str | Path, config=None, **kwargs):
    """Train CLIP-LIT-Latent; see ``lle_cli.train.clip_lit_latent`` (config: ``ClipLitLatentTrainConfig``)."""
    from .train.clip_lit_latent import train_clip_lit_latent as _train

    return _train(Path(backlit), Path(welllit), Path(output), config, **kwargs)


def train_scl_lle(images: str | Path, positives: str | Path, negatives: str | Path, output: str | Path, config=None, **kwargs):
    """Train SCL-LLE; see ``lle_cli.train.scl_lle.train_scl_lle`` (config: ``SclTrainConfig``, ``labels=DIR``)."""
    from .train.scl_lle import train_scl_lle as _train

    return _train(Path(images), Path(positives), Path(negatives), Path(output), config, **kwargs)


def fit_ood(model: LoadedModel, inputs, *, output: str | Path | None = None, **kwargs):
    """Fit the OOD statistics of an LLFlow model's encoder features on its training inputs (image paths).

    Returns an ``lle_cli.ood.OODStats`` (written to ``output`` when given); ``kwargs`` go to
    ``lle_cli.ood.fit_ood`` (``patch_size``, ``blocks``, ``shrinkage``, ``percentile``, ``progress``, ``on_error``).
    """
    from .ood import fit_ood as _fit

    stats = _fit(model, [str(p) for p in inputs], **kwargs)
    if output is not None:
        stats.save(output)
    return stats


def score_ood(model: LoadedModel, inputs, *, stats=None, **kwargs):
    """Mahalanobis OOD scores (per image and patch) of image paths under an LLFlow model (Hong et al. eq. 12).

    ``stats``: an ``OODStats``, a statistics file, or None for the model's shipped statistics; refused
    when fitted for other weights. Yields ``lle_cli.ood.ImageScore`` in input order; ``kwargs`` go to
    ``lle_cli.ood.score_ood`` (``validate``, ``n``, ``tau``, ``seed``, ``batch_size``, ``stdin``, ``each``).
    """
    from .ood import score_ood as _score, stats_for

    stats, _ = stats_for(model, stats)
    return _score(model, stats, [str(p) for p in inputs], **kwargs)


# ---- the rest of the public surface, imported on first use ------------------------------------
# The command line reaches the library only through this module. These names live in their own
# modules (batch processing, run records, evaluation, OOD scoring, training, ...); they are loaded
# when first used, so that `import lle_cli.api` stays cheap for a command that needs none of them.
_LAZY: dict[str, str] = {
    # batch enhancement and files
    "STDIO": "batch", "OutputOptions": "batch", "plan_jobs": "batch", "run_batch": "batch", "expand_inputs": "batch",
    "write_bytes_atomic": "atomic", "sha256_file": "digest", "keep_freed_memory": "_cpu",
    "VideoOptions": "video", "is_video_path": "video",
    # output names (lle_cli.naming): how each command names what it writes, and recognises it
    "ENHANCED_SUFFIX": "naming", "is_sample_output": "naming", "sample_folder": "naming", "heatmap_name": "naming",
    "OWN_OUTPUT_STEM": "naming", "SHARD_RECORD": "naming", "SHARD_RECORD_GLOB": "naming",
    # run records
    "new_run": "record", "write_job_records": "record", "write_run": "record", "add_output": "record",
    "finish_run": "record",
    # past one process: shards (job arrays), a local process pool, a Ray cluster
    "parse_shard": "shard", "plan_shard": "runs", "write_shard_records": "runs",
    "outcome_of_job": "runs", "InputOutcome": "runs", "outcome_of_sample": "runs", "merge_shards": "runs",
    "ParallelSpec": "workers", "run_parallel": "workers", "check_parallel": "workers",
    "run_batch_parallel": "workers", "run_samples_parallel": "workers",
    # sampling a flow
    "SampleOptions": "sampling", "check_sample_options": "sampling:check_options",
    "ensure_flow_model": "sampling", "normalise_format": "sampling", "run_sample_job": "sampling",
    # evaluation and metrics
    "METRICS": "evaluate", "PROTOCOLS": "evaluate", "EvalReport": "evaluate", "Extras": "evaluate",
    "get_protocol": "evaluate", "sort_results": "evaluate", "load_lpips": "metrics", "load_no_reference": "metrics",
    # weights and the cache
    "hub_cached_file": "download", "embedded_path": "loading", "weights_location": "loading",
    "cached_weights_path": "cache", "import_checkpoint": "loading", "import_checkpoints": "loading",
    "fetch_weights": "loading", "load_weights": "loading", "ExportResult": "loading", "FetchResult": "loading",
    "VerifyResult": "loading", "LoadedModel": "runner", "min_tile_size": "runner", "FAMILIES": "models",
    # OOD scoring
    "ood_warner": "ood", "ensure_feature_model": "ood", "load_stats": "ood", "stats_for": "ood", "ImageScore": "ood",
    "heatmap": "ood", "summarise_scores": "ood:summarise", "correlations": "ood", "DEFAULT_PATCH": "ood",
    "DEFAULT_PERCENTILE": "ood", "calibrate_threshold": "ood_calibration",
    # CLIP and training
    "ClipSpec": "clip", "select_device": "device", "ZeroReferenceWeights": "losses",
    "ZeroDCETrainConfig": "train.zero_dce", "train_zero_dce": "train.zero_dce",
    "IATTrainConfig": "train.iat", "train_iat": "train.iat",
    "LLFlowTrainConfig": "train.llflow", "train_llflow": "train.llflow",
    "DegradeSpec": "degrade", "write_synthetic_pairs": "degrade",
    "RaveLossWeights": "train.rave", "RaveTrainConfig": "train.rave",
    "ClipLitLatentLossWeights": "train.clip_lit_latent", "ClipLitLatentTrainConfig": "train.clip_lit_latent",
    "SEGMENTERS": "train.scl_lle", "SclTrainConfig": "train.scl_lle", "SegSpec": "train.scl_lle", "VggSpec": "train.scl_lle",
}


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(f"{__package__}.{module}"), attr or name)
    globals()[name] = value  # the next lookup is a plain global
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
