"""The propagation engine: graph tracing, rules (how), rule maps (where), the upsampler."""

from .graph import LayerError, find_cam_layer, find_input_layer
from .presets import PRESETS, FedByInput, RuleMap, Selector, resolve_rules
from .rules import (
    AlphaOneBetaZeroRule,
    EpsilonRule,
    GammaRule,
    PassRule,
    Rule,
    WinnerTakeAllRule,
    ZBoxRule,
    ZPlusRule,
    ZRule,
)
from .upsampler import FineGrainedUpsampler, MissingRuleError

__all__ = [
    "PRESETS", "AlphaOneBetaZeroRule", "EpsilonRule", "FedByInput", "FineGrainedUpsampler",
    "GammaRule", "LayerError", "MissingRuleError", "PassRule", "Rule", "RuleMap", "Selector",
    "WinnerTakeAllRule", "ZBoxRule", "ZPlusRule", "ZRule", "find_cam_layer", "find_input_layer",
    "resolve_rules",
]
