"""captum-fgcam: FG-CAM (fine-grained, high-faithfulness class activation maps) for Captum."""

from .attr import FGCam, FGGradCam, FGScoreCam
from .denoising import svd_denoise
from .propagation import (
    AlphaOneBetaZeroRule,
    EpsilonRule,
    FineGrainedUpsampler,
    GammaRule,
    LayerError,
    MissingRuleError,
    PassRule,
    Rule,
    RuleMap,
    WinnerTakeAllRule,
    ZBoxRule,
    ZPlusRule,
    ZRule,
    find_cam_layer,
)

__version__ = "0.1.0"

__all__ = [
    "AlphaOneBetaZeroRule", "EpsilonRule", "FGCam", "FGGradCam", "FGScoreCam",
    "FineGrainedUpsampler", "GammaRule", "LayerError", "MissingRuleError", "PassRule", "Rule",
    "RuleMap",
    "WinnerTakeAllRule", "ZBoxRule", "ZPlusRule", "ZRule", "find_cam_layer", "svd_denoise",
]
