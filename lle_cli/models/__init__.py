"""Model families: one module each, which describes itself with a ``FamilySpec`` (``family.py``) and
registers it; importing this package registers the built-in families.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError
from .family import FAMILIES, FamilySpec, register_family


def _register_families() -> None:
    """Import every module of this package: each family module registers its own descriptor, so a
    new family is one new module here (plus its manifest entries), with no list to edit."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "family":
            importlib.import_module(f"{__name__}.{info.name}")


_register_families()

__all__ = ["FamilySpec", "FAMILIES", "register_family", "build_model", "detect_family", "load_state_strict"]




def build_model(family: str, arch: Mapping[str, Any] | None = None) -> nn.Module:
    spec = FAMILIES[family]
    return spec.model_cls(spec.make_config(arch))


def detect_family(state: Mapping[str, torch.Tensor]) -> str | None:
    """Recognise a family from a state dict's key names (after ``module.`` is stripped)."""
    for spec in FAMILIES.values():
        if spec.signature_keys <= state.keys():
            return spec.name
    return None


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load weights, turning missing/unexpected keys or wrong shapes into one clear error."""
    # upstream modules a family never calls (e.g. LLFlow's unused heads) are dropped, not built
    ignored = tuple(getattr(model, "ignored_checkpoint_prefixes", ()))
    if ignored:
        state = {k: v for k, v in state.items() if not k.startswith(ignored)}
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"wrong shape for {wrong[0]}: {tuple(state[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)}")
        raise WeightsError(f"{source}: weights do not fit the architecture: {'; '.join(parts)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
