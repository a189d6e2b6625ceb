"""Captum-facing attribution classes."""

from .cam import ConceptorCam, GradCam, GradCamPlusPlus, HiResCam, LayerCam, ScoreCam, XGradCam
from .fg_cam import FGCam, FGGradCam, FGScoreCam
from .lrp import CLRP, LRP, SGLRP
from .refine import RefineCam

__all__ = ["CLRP", "LRP", "SGLRP", "ConceptorCam", "FGCam", "FGGradCam", "FGScoreCam",
           "GradCam", "GradCamPlusPlus", "HiResCam", "LayerCam", "RefineCam", "ScoreCam",
           "XGradCam"]
