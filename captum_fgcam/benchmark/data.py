"""Benchmark data: every item is (image, label, mask, localisable).

``mask`` is the target object's pixel mask (the scenes) or the union of its boxes
(ImageNet); ``localisable`` says whether the image counts for the localisation metrics
(ImageNet: exactly one box covering at most half the image, as in the paper).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from ..images import IMAGENET_MEAN, IMAGENET_STD
from ..usage import UsageError

_EXTENSIONS = {".jpeg", ".jpg", ".png"}


class ImageNetVal(Dataset):
    """ILSVRC2012 validation images with their bounding boxes, as the paper uses them.

    ``root`` holds one folder per class named by its WordNet id (``n01440764/...``), the
    layout torchvision's ``ImageFolder`` reads; the class index is the folder's position in
    sorted order (torchvision's pretrained models use that order). ``boxes`` holds the
    ILSVRC XML annotations (``ILSVRC2012_val_00000001.xml``), one per image stem. Images
    are resized to ``size`` x ``size`` directly (no crop) and normalised with ImageNet's
    mean and std; boxes are scaled with them, and the mask holds every pixel the scaled box
    [xmin, xmax] x [ymin, ymax] touches.
    """

    def __init__(self, root: str | Path, boxes: str | Path, size: int = 224,
                 max_box_fraction: float = 0.5) -> None:
        self.root, self.boxes = Path(root), Path(boxes)
        for path, what in ((self.root, "--root"), (self.boxes, "--boxes")):
            if not path.is_dir():
                raise FileNotFoundError(f"{what} {path} is not a directory")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise FileNotFoundError(
                f"{self.root} has no class folders; arrange the validation images as "
                "ROOT/<wnid>/<image> (ImageFolder layout)")
        self.items = [(path, index) for index, wnid in enumerate(self.classes)
                      for path in sorted((self.root / wnid).iterdir())
                      if path.suffix.lower() in _EXTENSIONS]
        self.size = size
        self.max_box_fraction = max_box_fraction

    def __len__(self) -> int:
        return len(self.items)

    def check(self, count: int) -> None:
        """Read the headers of the first ``count`` images and their box files (not the
        pixels), raising ValueError naming the first file that cannot be used."""
        if not self.items:
            raise ValueError(f"{self.root} holds no {', '.join(sorted(_EXTENSIONS))} images in "
                             "its class folders (ROOT/<wnid>/<image>)")
        for path, label in self.items[:count]:
            try:
                with Image.open(path):
                    pass
                self._boxes(path.stem, self.classes[label])
            except Exception as err:  # missing, unreadable or malformed files
                raise ValueError(f"cannot use {path}: {' '.join(str(err).split())}") from err

    def _boxes(self, stem: str, wnid: str) -> tuple[list[tuple[float, ...]], tuple[int, int]]:
        path = self.boxes / f"{stem}.xml"
        if not path.is_file():
            raise FileNotFoundError(f"no box annotation {path} for image {stem}")
        tree = ET.parse(path).getroot()
        try:
            width = int(tree.findtext("size/width"))
            height = int(tree.findtext("size/height"))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path} gives no <size><width>/<height>") from err
        found = []
        for obj in tree.iter("object"):
            if obj.findtext("name") != wnid:
                continue
            box = obj.find("bndbox")
            found.append(tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
        return found, (width, height)

    def __getitem__(self, index: int) -> tuple[Tensor, int, Tensor, bool]:
        path, label = self.items[index]
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except OSError as err:  # found only now: check() reads headers, not pixels
            raise UsageError(f"cannot read image {path}: {err}") from err
        boxes, (width, height) = self._boxes(path.stem, self.classes[label])
        x = TF.to_tensor(image.resize((self.size, self.size), Image.BILINEAR))
        x = TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)
        mask = torch.zeros(self.size, self.size, dtype=torch.bool)
        sx, sy = self.size / width, self.size / height
        for x0, y0, x1, y1 in boxes:
            rows = slice(math.floor(y0 * sy), math.ceil(y1 * sy))
            mask[rows, math.floor(x0 * sx):math.ceil(x1 * sx)] = True
        localisable = (len(boxes) == 1
                       and mask.float().mean().item() <= self.max_box_fraction)
        return x, label, mask, localisable


class SceneItems(Dataset):
    """A :class:`~captum_fgcam.datasets.Scenes` split as benchmark items: of a scene with
    two objects, the first; with ``boxes=True`` its mask is its box, filled (a detector's
    benchmark measures energy and pointing inside the box); ``indices``: a subset of the
    scenes (default all)."""

    def __init__(self, scenes: Dataset, boxes: bool = False,
                 indices: list[int] | None = None) -> None:
        self.scenes, self.boxes = scenes, boxes
        self.indices = list(range(len(scenes))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, int, Tensor, bool]:
        image, label, mask, box = self.scenes[self.indices[index]]
        if label.dim():  # two objects: the first
            label, mask, box = label[0], mask[0], box[0]
        if self.boxes:
            x0, y0, x1, y1 = box.tolist()
            mask = torch.zeros_like(mask)
            mask[y0:y1, x0:x1] = True
        return image, int(label), mask, True
