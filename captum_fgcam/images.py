"""Image files for the commands: discovery, loading, and preprocessing (ImageNet's statistics)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms import InterpolationMode

from .usage import UsageError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, crop the centre, scale to [0, 1], normalise."""

    resize: int = 224
    crop: int = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    interpolation: InterpolationMode = InterpolationMode.BILINEAR

    def __call__(self, image: Tensor) -> tuple[np.ndarray, Tensor]:
        """uint8 3 x H x W -> (the cropped image, H x W x 3 in [0, 1]; the model input)."""
        image = TF.resize(image, [self.resize], self.interpolation, antialias=True)
        image = TF.center_crop(image, [self.crop]).float() / 255
        shown = image.permute(1, 2, 0).numpy()
        return shown, TF.normalize(image, list(self.mean), list(self.std))

    def sized(self, size: int | None) -> Preprocessing:
        """The same normalisation at ``size`` pixels (resize and crop), if given."""
        if size is None:
            return self
        return Preprocessing(size, size, self.mean, self.std, self.interpolation)


def image_suffixes(extensions: str) -> tuple[str, ...]:
    """``"png, .JPG"`` -> ``(".png", ".jpg")``; at least one, each letters and digits."""
    suffixes = tuple(f".{e.strip().lstrip('.').lower()}" for e in extensions.split(",")
                     if e.strip())
    if not suffixes or not all(s[1:].isalnum() for s in suffixes):
        raise UsageError(f"--ext {extensions!r}: give file extensions separated by commas, "
                         "e.g. png,jpg")
    return suffixes


def image_files(paths: Sequence[Path], suffixes: Sequence[str]) -> list[Path]:
    """The image files named, folders searched recursively for ``suffixes`` (sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise UsageError(f"folder {path} holds no image files with extensions "
                                 f"{', '.join(suffixes)} (see --ext)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"image file or folder {path} not found")
    return list(dict.fromkeys(files))


def _read(path: Path, draft: bool = False) -> Image.Image:
    """``path`` decoded as RGB (``draft``: JPEGs at 1/8 scale, which still reads every byte),
    or a :class:`UsageError` naming it."""
    try:
        with Image.open(path) as opened:
            if draft:
                opened.draft("RGB", (1, 1))
            return opened.convert("RGB")
    except UnidentifiedImageError as err:
        raise UsageError(f"cannot read image {path}: not an image file Pillow knows; "
                         "pass a PNG, JPEG, WebP, ... file") from err
    except (OSError, ValueError, SyntaxError) as err:  # truncated or damaged files
        raise UsageError(f"cannot read image {path}: {err}") from err


def check_images(paths: Sequence[Path]) -> None:
    """Decode every image once (JPEGs in draft mode) so that a damaged file is named before
    any work rather than after the images before it."""
    for path in paths:
        _read(path, draft=True)


def load_images(paths: Sequence[Path], preprocessing: Preprocessing
                ) -> tuple[list[np.ndarray], Tensor]:
    """The images as shown (H x W x 3 in [0, 1]) and as a normalised batch."""
    shown, batch = [], []
    for path in paths:
        image, x = preprocessing(TF.pil_to_tensor(_read(path)))
        shown.append(image)
        batch.append(x)
    return shown, torch.stack(batch)
