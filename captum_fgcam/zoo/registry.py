"""The zoo's registry: model names, their architectures, their data and their checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..datasets import Scenes
from ..training import InterpretableGradientLoss
from .architectures import scenes_resnet, scenes_vgg16bn, scenes_vgg16bn_fc_wall, scenes_wall
from .swin import scenes_swin
from .tasks import (
    DETECTION_SCENES,
    SEGMENTATION_SCENES,
    detection_accuracy,
    detection_loss,
    detection_targets,
    label_map,
    scenes_detector,
    scenes_segmenter,
    segmentation_accuracy,
    segmentation_loss,
)
from .vit import scenes_vit

WEIGHTS = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class Entry:
    """A zoo model: how to build it and the ``Scenes`` options it is trained and tested on."""

    build: Callable[[], nn.Module]
    scenes: dict = field(default_factory=dict)
    #: the training loss for a model: (model) -> ((logits' input, labels) -> loss); None: CE
    loss: Callable[[nn.Module], Callable[[Tensor, Tensor], Tensor]] | None = None
    #: AdamW's peak learning rate (one-cycle schedule)
    lr: float = 3e-3
    #: what the model predicts: "classification", "segmentation" or "detection"
    task: str = "classification"
    #: a scene's training target from its (labels, masks, boxes); None: the label
    label: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None
    #: held-out scores from (model, images, targets); None: top-1 accuracy
    accuracy: Callable[[nn.Module, Tensor, Tensor], dict[str, float]] | None = None


_ZOO: dict[str, Entry] = {
    "scenes-vgg16bn": Entry(scenes_vgg16bn),
    "scenes-resnet": Entry(scenes_resnet),
    "scenes-wall": Entry(scenes_wall, {"wall": True}),
    "scenes-fc-wall": Entry(scenes_vgg16bn_fc_wall, {"wall": True}),
    # the regulariser on 8 of every 64 images: the whole batch would cost 4x the plain training
    "scenes-vgg16bn-ig": Entry(scenes_vgg16bn,
                               loss=lambda model: InterpretableGradientLoss(model, subset=8)),
    # the harder benchmark: 128 px, small objects, heavy clutter (Scenes.HARD)
    "scenes-hard": Entry(scenes_vgg16bn, Scenes.HARD),
    # a hierarchical vision transformer (Swin's layout) on the default scenes
    "scenes-swin": Entry(scenes_swin, lr=1.5e-3),
    # a plain vision transformer with a class token (torchvision's layout) on the default scenes
    "scenes-vit": Entry(scenes_vit, lr=1e-3),
    # dense predictions on two-object scenes: an FCN and torchvision's FCOS
    "scenes-seg": Entry(scenes_segmenter, SEGMENTATION_SCENES, segmentation_loss,
                        task="segmentation", label=lambda labels, masks, boxes:
                        label_map(labels, masks), accuracy=segmentation_accuracy),
    "scenes-det": Entry(scenes_detector, DETECTION_SCENES, detection_loss, lr=1e-3,
                        task="detection", label=lambda labels, masks, boxes:
                        detection_targets(labels, boxes), accuracy=detection_accuracy),
}


def names() -> list[str]:
    """The names ``load_model`` knows."""
    return list(_ZOO)


def task(name: str) -> str:
    """What zoo model ``name`` predicts: classification, segmentation or detection."""
    return _entry(name).task


def _entry(name: str) -> Entry:
    if name not in _ZOO:
        raise KeyError(f"unknown zoo model {name!r}; known models: {', '.join(_ZOO)}")
    return _ZOO[name]


def checkpoint_path(name: str) -> Path:
    """Where the shipped state dict of ``name`` lives."""
    _entry(name)
    return WEIGHTS / f"{name}.pt"


def load_model(name: str, pretrained: bool = True) -> nn.Module:
    """Zoo model ``name`` in eval mode, with its shipped weights unless ``pretrained=False``."""
    model = _entry(name).build()
    if pretrained:
        state = torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in state.items()})
    return model.eval()


def scenes(name: str, split: str = "test", **options) -> Scenes:
    """The ``Scenes`` split that zoo model ``name`` is trained / evaluated on; ``options``
    override its own (e.g. ``style="held-out"``: the generator no model is trained on)."""
    return Scenes(split, **{**_entry(name).scenes, **options})
