"""The zoo's dense-prediction models: a segmenter and a detector for two-object ``Scenes``.

Both use torchvision's conventions, so they exercise the paths users' models take:

- ``scenes-seg``: an FCN (``backbone`` = VGG16-bn's first four blocks at the zoo's widths,
  stride 16; ``classifier`` = torchvision's ``FCNHead``), returning ``{"out": logits}`` with
  7 classes (0 background, 1 + the scene class), upsampled to the image;
- ``scenes-det``: torchvision's ``FCOS`` on the zoo's ResNet-10 with an FPN (strides 8 to
  64), which takes images in [0, 1] and normalises and resizes them inside
  (``GeneralizedRCNNTransform``); labels are the scene classes (0 to 5).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.vgg import make_layers

from ..datasets import Scenes
from .architectures import VGG16_NARROW, SmallResNet

#: ``Scenes`` options of both models: two objects per scene, images in [0, 1] for the detector
SEGMENTATION_SCENES: dict = {"objects": 2}
DETECTION_SCENES: dict = {"objects": 2, "normalize": False}


class ScenesSegmenter(nn.Module):
    """FCN-32s at the zoo's widths: y = upsample(classifier(backbone(x))), as ``{"out": y}``."""

    def __init__(self, num_classes: int = len(Scenes.classes) + 1) -> None:
        super().__init__()
        self.backbone = make_layers(VGG16_NARROW[:-1], batch_norm=True)  # no last pool: 1/16
        self.classifier = FCNHead(VGG16_NARROW[-2], num_classes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.classifier(self.backbone(x))
        return OrderedDict(out=F.interpolate(z, size=x.shape[-2:], mode="bilinear",
                                             align_corners=False))


def scenes_segmenter() -> ScenesSegmenter:
    return ScenesSegmenter()


def scenes_detector(size: int = 96) -> FCOS:
    """torchvision's FCOS on the zoo ResNet-10 (``layer2`` to ``layer4``, strides 8-32, and
    the FPN's max-pooled level, 64), FPN width 64, at ``size`` px."""
    body = SmallResNet()
    del body.avgpool, body.fc
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"},
                               [32, 64, 128], out_channels=64)
    # FCOS assigns an object to the level whose [4 s, 8 s] range holds its size (s = the
    # anchor size): 4 px anchors put the scenes' 20-40 px objects on the two finest levels
    anchors = AnchorGenerator(((4,), (8,), (16,), (32,)), ((1.0,),) * 4)
    return FCOS(backbone, num_classes=len(Scenes.classes), min_size=size, max_size=size,
                image_mean=list(Scenes.mean), image_std=list(Scenes.std),
                anchor_generator=anchors, score_thresh=0.2, detections_per_img=10)


def label_map(labels: Tensor, masks: Tensor) -> Tensor:
    """Per-pixel classes of a two-object scene: 0 background, 1 + label on each object."""
    out = torch.zeros(masks.shape[-2:], dtype=torch.long)
    for label, mask in zip(labels.tolist(), masks, strict=True):
        out[mask] = label + 1
    return out


def detection_targets(labels: Tensor, boxes: Tensor) -> Tensor:
    """A scene's objects as rows (x0, y0, x1, y1, label) (a tensor, so batches stack)."""
    return torch.cat([boxes.float(), labels.float()[:, None]], dim=1)


def segmentation_loss(model: nn.Module):
    return lambda x, y: F.cross_entropy(model(x)["out"], y)


def detection_loss(model: nn.Module):
    def loss(x: Tensor, rows: Tensor) -> Tensor:
        targets = [{"boxes": r[:, :4], "labels": r[:, 4].long()} for r in rows]
        return sum(model(list(x), targets).values())
    return loss


@torch.no_grad()
def segmentation_accuracy(model: nn.Module, images: Tensor, maps: Tensor) -> dict[str, float]:
    """Pixel accuracy and mean IoU over the 7 classes on ``images``."""
    model.eval()
    pred = torch.cat([model(x.float())["out"].argmax(1) for x in images.split(100)])
    classes = len(Scenes.classes) + 1
    ious = [((pred == c) & (maps == c)).sum() / ((pred == c) | (maps == c)).sum().clamp(min=1)
            for c in range(classes)]
    return {"pixel accuracy": float((pred == maps).float().mean()),
            "mean IoU": float(torch.stack(ious).mean())}


@torch.no_grad()
def detection_accuracy(model: nn.Module, images: Tensor, rows: Tensor) -> dict[str, float]:
    """Recall (objects found by a detection of their class at IoU >= 0.5) and precision
    (detections with score >= 0.5 that match an object) on ``images``."""
    from ..targets import box_iou

    model.eval()
    found = matched = kept = 0
    for x, r in zip(images.split(100), rows.split(100), strict=True):
        for d, objects in zip(model(list(x.float())), r, strict=True):
            confident = d["scores"] >= 0.5
            kept += int(confident.sum())
            for box, label in zip(objects[:, :4], objects[:, 4].long(), strict=True):
                hit = (box_iou(d["boxes"], box) >= 0.5) & (d["labels"] == label)
                found += bool(hit.any())
                matched += int((hit & confident).any())
    return {"recall": found / rows[:, :, 0].numel(), "precision": matched / max(kept, 1)}
