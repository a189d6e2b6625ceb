"""The propagation engine: graph capture and facts, rules (how), rule maps (where), the
upsampler (the engine itself)."""

from .attention import AttentionRule, ProductRule
from .capture import CaptureError
from .core import Call, Rule
from .layers import LayerError, find_cam_layer, find_input_layer, find_output_layer
from .presets import PRESETS, RuleMap, resolve_rules
from .rules import (
    AlphaOneBetaZeroRule,
    ArithmeticRule,
    EpsilonRule,
    GammaRule,
    GateRule,
    PassRule,
    RoutingRule,
    SignAwareZRule,
    WinnerTakeAllRule,
    ZBoxRule,
    ZPlusRule,
    ZRule,
)
from .selectors import FedByInput, Function, Kind, Module, Node, Selector
from .tokens import TokenLayout
from .upsampler import FineGrainedUpsampler, MissingRuleError

__all__ = [
    "PRESETS", "AlphaOneBetaZeroRule", "ArithmeticRule", "AttentionRule", "Call",
    "CaptureError", "EpsilonRule", "FedByInput", "FineGrainedUpsampler", "Function",
    "GammaRule", "GateRule", "Kind", "LayerError", "MissingRuleError", "Module", "Node",
    "PassRule", "ProductRule", "RoutingRule", "Rule", "RuleMap", "Selector", "SignAwareZRule",
    "TokenLayout", "WinnerTakeAllRule", "ZBoxRule", "ZPlusRule", "ZRule", "find_cam_layer",
    "find_input_layer", "find_output_layer", "resolve_rules",
]
