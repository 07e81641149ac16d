"""The public Python API: load a model by name and enhance images.

>>> from lle_cli import api
>>> model = api.load_model("rave")            # or None for the embedded default
>>> out = api.enhance_array(model, rgb)        # (H, W, 3) float32 in [0, 1]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .device import select_device, select_dtype
from .loading import import_checkpoint, load_weights
from .models import build_model, load_state_strict
from .registry import ModelEntry, get_registry
from .runner import LoadedModel

__all__ = ["load_model", "enhance_array", "list_models", "model_info", "import_checkpoint"]


def list_models() -> list[ModelEntry]:
    reg = get_registry()
    return [reg.models[n] for n in reg.names()]


def model_info(name: str) -> ModelEntry:
    return get_registry().resolve(name)


def load_model(
    name: str | None = None, *, weights: str | Path | None = None, device: str = "auto", precision: str = "auto"
) -> LoadedModel:
    """Build the named model (None: the embedded default), load verified weights, move to device."""
    entry = get_registry().resolve(name)
    dev = select_device(device)
    dtype = select_dtype(precision, dev)
    state, source = load_weights(entry, Path(weights) if weights else None)
    module = build_model(entry.family, entry.architecture)
    load_state_strict(module, state, source=source)
    module.eval().to(dev, dtype)
    return LoadedModel(entry, module, dev, dtype, source)


def enhance_array(model: LoadedModel, rgb: np.ndarray) -> np.ndarray:
    """Enhance one RGB image given as (H, W, 3) float in [0, 1]."""
    return model.enhance(rgb)
