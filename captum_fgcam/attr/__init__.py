"""Captum-facing attribution classes, all built as ``Method(forward_func, layer,
device_ids=None, *, options...)`` with ``layer`` a module or its dotted name."""

from .cam import ConceptorCam, GradCam, GradCamPlusPlus, HiResCam, LayerCam, ScoreCam, XGradCam
from .fg_cam import FGCam, FGGradCam, FGScoreCam
from .lrp import CLRP, LRP, SGLRP
from .multiscale import MultiScaleFGCam
from .refine import RefineCam

__all__ = ["CLRP", "LRP", "SGLRP", "ConceptorCam", "FGCam", "FGGradCam", "FGScoreCam",
           "GradCam", "GradCamPlusPlus", "HiResCam", "LayerCam", "MultiScaleFGCam",
           "RefineCam", "ScoreCam", "XGradCam"]
