"""LLFlow: low-light enhancement with a conditional normalizing flow (Wang et al., AAAI 2022).

``config`` (architecture as data), ``preprocess`` (padding, histogram equalisation), ``encoder``
(the conditional encoder g), ``layers`` (generic invertible layers), ``coupling`` (conditional
couplings, selectable by name), ``flow`` (the invertible network) and ``model`` (the whole thing).
"""

from __future__ import annotations

from .config import LEVELS, LLFlowConfig
from .coupling import COUPLINGS, CondAffineCoupling, register_coupling
from .encoder import ConditionEncoder, EncoderFeatures
from .flow import ConditionalFlow, FlowStep
from .model import UNUSED_CHECKPOINT_PREFIXES, LLFlow, negative_log_likelihood
from .preprocess import Padding, auto_padding, equalize_hist, network_input, pad_symmetric

__all__ = [
    "LEVELS",
    "LLFlowConfig",
    "LLFlow",
    "ConditionEncoder",
    "EncoderFeatures",
    "ConditionalFlow",
    "FlowStep",
    "CondAffineCoupling",
    "COUPLINGS",
    "register_coupling",
    "negative_log_likelihood",
    "UNUSED_CHECKPOINT_PREFIXES",
    "Padding",
    "auto_padding",
    "equalize_hist",
    "network_input",
    "pad_symmetric",
]
