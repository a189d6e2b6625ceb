"""The propagation engine: graph tracing, rules (how), rule maps (where), the upsampler."""

from .attention import AttentionRule, ProductRule
from .capture import CaptureError
from .graph import LayerError, find_cam_layer, find_input_layer, find_output_layer
from .presets import PRESETS, FedByInput, Kind, RuleMap, Selector, resolve_rules
from .rules import (
    AlphaOneBetaZeroRule,
    ArithmeticRule,
    Call,
    EpsilonRule,
    GammaRule,
    GateRule,
    PassRule,
    RoutingRule,
    Rule,
    SignAwareZRule,
    WinnerTakeAllRule,
    ZBoxRule,
    ZPlusRule,
    ZRule,
)
from .tokens import TokenLayout
from .upsampler import FineGrainedUpsampler, MissingRuleError

__all__ = [
    "PRESETS", "AlphaOneBetaZeroRule", "ArithmeticRule", "AttentionRule", "Call",
    "CaptureError", "EpsilonRule", "FedByInput", "FineGrainedUpsampler", "GammaRule",
    "GateRule", "Kind", "LayerError", "MissingRuleError", "PassRule", "ProductRule",
    "RoutingRule", "Rule", "RuleMap", "Selector", "SignAwareZRule", "TokenLayout",
    "WinnerTakeAllRule", "ZBoxRule", "ZPlusRule", "ZRule", "find_cam_layer", "find_input_layer",
    "find_output_layer", "resolve_rules",
]
