"""The paper's comparison (methods x layers x metrics) as a library and a command."""

from .data import ImageNetVal, SceneItems
from .methods import INPUT, METHODS, Method, explainers
from .runner import Settings, default_layers, run, write_tables

__all__ = ["INPUT", "METHODS", "ImageNetVal", "Method", "SceneItems", "Settings",
           "default_layers", "explainers", "run", "write_tables"]
