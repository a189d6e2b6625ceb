"""Captum-facing attribution classes."""

from .fg_cam import FGCam, FGGradCam, FGScoreCam

__all__ = ["FGCam", "FGGradCam", "FGScoreCam"]
