"""The paper's comparison (methods x layers x metrics) as a library and a command."""

from ..methods import INPUT, METHODS, PAPER_METHODS, Method, explainers
from .data import ImageNetVal, SceneItems
from .runner import Settings, default_layers, run, write_tables

__all__ = ["INPUT", "METHODS", "PAPER_METHODS", "ImageNetVal", "Method", "SceneItems", "Settings",
           "default_layers", "explainers", "run", "write_tables"]
