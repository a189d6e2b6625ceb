"""Procedural datasets with pixel-exact object masks, for training and evaluating explanations."""

from .scenes import Scenes

__all__ = ["Scenes"]
