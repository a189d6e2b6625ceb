"""captum-fgcam: FG-CAM (fine-grained, high-faithfulness class activation maps) for Captum."""

from .attr import (
    CLRP,
    LRP,
    SGLRP,
    ConceptorCam,
    FGCam,
    FGGradCam,
    FGScoreCam,
    GradCam,
    GradCamPlusPlus,
    HiResCam,
    LayerCam,
    MultiScaleFGCam,
    RefineCam,
    ScoreCam,
    XGradCam,
)
from .conservation import ConservationReport, ConservationStage, conservation_report
from .denoising import svd_denoise
from .propagation import (
    AlphaOneBetaZeroRule,
    ArithmeticRule,
    AttentionRule,
    CaptureError,
    EpsilonRule,
    FineGrainedUpsampler,
    GammaRule,
    LayerError,
    MissingRuleError,
    PassRule,
    ProductRule,
    RoutingRule,
    Rule,
    RuleMap,
    SignAwareZRule,
    TokenLayout,
    WinnerTakeAllRule,
    ZBoxRule,
    ZPlusRule,
    ZRule,
    find_cam_layer,
    find_input_layer,
)

__version__ = "0.1.0"

__all__ = [
    "CLRP", "LRP", "SGLRP",
    "AlphaOneBetaZeroRule", "ArithmeticRule", "AttentionRule", "CaptureError", "ConceptorCam",
    "ConservationReport", "ConservationStage", "conservation_report",
    "EpsilonRule", "FGCam", "FGGradCam", "FGScoreCam", "GradCam", "GradCamPlusPlus",
    "HiResCam", "LayerCam", "MultiScaleFGCam", "RefineCam", "ScoreCam", "XGradCam",
    "FineGrainedUpsampler", "GammaRule", "LayerError", "MissingRuleError", "PassRule",
    "ProductRule", "RoutingRule", "Rule", "RuleMap", "SignAwareZRule", "TokenLayout",
    "WinnerTakeAllRule", "ZBoxRule", "ZPlusRule", "ZRule", "find_cam_layer", "find_input_layer",
    "svd_denoise",
]
