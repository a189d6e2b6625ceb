"""Captum-facing attribution classes."""

from .cam import GradCamPlusPlus, LayerCam, ScoreCam, XGradCam
from .fg_cam import FGCam, FGGradCam, FGScoreCam
from .lrp import CLRP, LRP, SGLRP

__all__ = ["CLRP", "LRP", "SGLRP", "FGCam", "FGGradCam", "FGScoreCam", "GradCamPlusPlus",
           "LayerCam", "ScoreCam", "XGradCam"]
