"""Small CNNs trained on ``Scenes``: ``load_model(name)`` with shipped checkpoints."""

from .registry import checkpoint_path, load_model, names, scenes, task

__all__ = ["checkpoint_path", "load_model", "names", "scenes", "task"]
