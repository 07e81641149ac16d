"""Train a Zero-DCE curve network with the zero-reference losses (no paired data needed).

The recipe follows the official training script (Adam, lr 1e-4, weight decay 1e-4, gradient norm
clipped to 0.1, convolution weights drawn from N(0, 0.02), images resized to 256x256), with random
crops and flips so that a CPU can do useful work in minutes. The run is deterministic for a seed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..formats import list_image_files
from ..imageio import read_rgb8
from ..losses import ZeroReferenceWeights, zero_reference_loss
from ..models.zero_dce import ZeroDCE, ZeroDCEConfig
from ..weights import save_safetensors
from .common import optimise

__all__ = ["ZeroDCETrainConfig", "TrainResult", "train_zero_dce", "load_training_images"]

@dataclass(frozen=True)
class ZeroDCETrainConfig:
    """Hyper-parameters; the defaults produced the embedded ``zero-dce.lle-sice`` weights."""

    steps: int = 3000
    batch_size: int = 8
    resize: int = 256
    crop: int = 128
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    seed: int = 0
    losses: ZeroReferenceWeights = field(default_factory=ZeroReferenceWeights)
    model: ZeroDCEConfig = field(default_factory=ZeroDCEConfig)


@dataclass
class TrainResult:
    output: Path
    steps: int
    seconds: float
    final_loss: float
    images: int


def load_training_images(folder: Path, size: int) -> torch.Tensor:
    """Every image under ``folder`` as RGB float in [0, 1], resized to ``size`` x ``size``.

    Listed and read as ``lle enhance`` lists and reads photos (``lle_cli.formats``, ``read_rgb8``):
    every format it takes, upright by the EXIF orientation.
    """
    files = list_image_files(folder)
    if not files:
        raise InputError(f"{folder}: no training images found (expected .jpg/.png/... files)")
    out = torch.empty(len(files), 3, size, size)
    for i, p in enumerate(files):
        im = Image.fromarray(read_rgb8(p)).resize((size, size), Image.Resampling.LANCZOS)
        out[i] = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return out


def _init_weights(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, 0.0, 0.02)


def _batch(images: torch.Tensor, cfg: ZeroDCETrainConfig, g: torch.Generator) -> torch.Tensor:
    n, _, s, _ = images.shape
    idx = torch.randint(0, n, (cfg.batch_size,), generator=g)
    ys = torch.randint(0, s - cfg.crop + 1, (cfg.batch_size,), generator=g)
    xs = torch.randint(0, s - cfg.crop + 1, (cfg.batch_size,), generator=g)
    flips = torch.rand(cfg.batch_size, generator=g) < 0.5
    crops = []
    for i, y, x, f in zip(idx.tolist(), ys.tolist(), xs.tolist(), flips.tolist()):
        c = images[i, :, y : y + cfg.crop, x : x + cfg.crop]
        crops.append(c.flip(-1) if f else c)
    return torch.stack(crops)


def train_zero_dce(
    data: Path,
    output: Path,
    cfg: ZeroDCETrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train from scratch on the images in ``data`` and write safetensors weights to ``output``."""
    cfg = cfg or ZeroDCETrainConfig()
    if cfg.crop > cfg.resize:
        raise InputError(f"crop {cfg.crop} is larger than the resize {cfg.resize}; lower --crop")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    images = load_training_images(Path(data), cfg.resize)
    model = ZeroDCE(cfg.model)
    _init_weights(model)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = time.perf_counter()
    loss_value = math.nan
    for step in range(1, cfg.steps + 1):
        x = _batch(images, cfg, g).to(device)
        _, enhanced, curves = model.forward_all(x)
        loss, _parts = zero_reference_loss(x, enhanced, curves, cfg.losses)
        loss_value = optimise(opt, loss, step, clip=model.parameters(), max_norm=cfg.grad_clip)
        if progress is not None:
            progress(step, cfg.steps, loss_value)
    seconds = time.perf_counter() - start
    recipe = {"config": asdict(cfg), "data": str(data), "images": int(images.shape[0]), "seconds": round(seconds, 1)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(state, Path(output), metadata={"lle": json.dumps({"family": "zero_dce", "training": recipe}, sort_keys=True)})
    return TrainResult(Path(output), cfg.steps, seconds, loss_value, int(images.shape[0]))
