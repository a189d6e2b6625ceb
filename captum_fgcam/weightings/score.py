r"""Score-CAM weighting, in two variants.

``variant="reference"`` (FG-CAM's reference, the default): for each channel k,
M_k = minmax(upsample(A_k)) (bilinear, align_corners=False, to the input size; range + 1e-9
only where the channel's max is 0; a constant channel gives M_k = 0 instead of NaN or noise),
w_k = softmax(f(x * M_k))_c (no baseline, no softmax across channels).

``variant="score-cam"`` (the Score-CAM paper as pytorch-grad-cam implements it):
M_k = (up(A_k) - min) / (max - min + 1e-8) with bilinear align_corners=True, s_k = f(x * M_k)_c
(the logit), w = softmax over channels of s.

Both: E_k = w_k A_k with the raw A. With a target object t (:mod:`captum_fgcam.targets`) the
score is the target's own, w_k = t(f(x * M_k)), without softmax (``ClassProbability`` gives
the reference variant's probability). The N x C masked forward passes run in chunks of
``batch_size`` images, across channels and images alike.

Cost: one forward pass of the model per channel of the CAM layer per image (512 for VGG16's
features.43, 2048 for ResNet-50's layer4), whatever ``batch_size``; a larger ``batch_size``
needs memory for that many images' activations at once and runs faster only until the
device is busy (README "Speed" has measured figures). A progress bar (tqdm, on a terminal
only; ``progress=False`` hides it) counts the masked images.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._batching import take, take_all
from ..arguments import TargetType, forward_args_tuple, target_scores
from ..propagation.core import safe_divide
from ..propagation.tokens import on_grid
from ..targets import Target
from .protocol import CamRecord


def channel_masks_score_cam(acts: Tensor, size: tuple[int, ...]) -> Tensor:
    """pytorch-grad-cam's masks: align_corners=True, range + 1e-8."""
    up = F.interpolate(acts.unsqueeze(1), size=size, mode="bilinear", align_corners=True)[:, 0]
    low = up.amin(dim=(1, 2), keepdim=True)
    return (up - low) / (up.amax(dim=(1, 2), keepdim=True) - low + 1e-8)


def channel_masks(acts: Tensor, size: tuple[int, ...]) -> Tensor:
    """Upsampled, per-channel min-max normalised activations: (B, h, w) -> (B, H, W).

    A channel that is constant before upsampling gets a zero mask (bilinear upsampling of a
    constant differs from it by round-off, which min-max scaling would blow up to 0/1 noise).
    """
    up = F.interpolate(acts.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
    low = up.amin(dim=(1, 2), keepdim=True)
    high = up.amax(dim=(1, 2), keepdim=True)
    span = torch.where(high == 0, high - low + 1e-9, high - low)
    constant = (acts.amax(dim=(1, 2)) == acts.amin(dim=(1, 2))).reshape(-1, 1, 1)
    return torch.where(constant, 0.0, safe_divide(up - low, span))


class ScoreCamWeighting:
    """Score-CAM channel weights; ``batch_size`` masked images per forward pass."""

    VARIANTS = ("reference", "score-cam")
    requires_target = True
    requires_gradient = False

    def __init__(self, batch_size: int = 64, variant: str = "reference",
                 progress: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if variant not in self.VARIANTS:
            raise ValueError(f"variant must be one of {self.VARIANTS}; got {variant!r}")
        self.batch_size = batch_size
        self.variant = variant
        self.progress = progress

    def weigh(self, forward_func: Callable[..., Tensor], cam: CamRecord,
              inputs: tuple[Tensor, ...], target: TargetType,
              additional_forward_args: tuple[Any, ...] | None) -> Tensor:
        """The components for the CAM layer's activation A of ``inputs``: N x C masked
        forward passes. A transformer's token grid is masked as the grid it is
        (:mod:`..propagation.tokens`)."""
        return on_grid(lambda grid: self._components(forward_func, grid, inputs, target,
                                                     additional_forward_args),
                       inputs[0], cam.activation)

    def _components(self, forward_func: Callable[..., Any], acts: Tensor,
                    inputs: tuple[Tensor, ...], target: TargetType,
                    additional_forward_args: Any) -> Tensor:
        if len(inputs) != 1:
            raise ValueError("Score-CAM masks a single image input; got "
                             f"{len(inputs)} input tensors")
        x = inputs[0]
        n, c = acts.shape[:2]
        extra = forward_args_tuple(additional_forward_args) or ()
        flat_acts = acts.reshape(n * c, *acts.shape[2:])
        weights = torch.empty(n * c, dtype=x.dtype, device=x.device)
        make_masks = channel_masks if self.variant == "reference" else channel_masks_score_cam
        from tqdm.auto import tqdm

        bar = tqdm(total=n * c, desc="Score-CAM masked images", unit="image", leave=False,
                   file=sys.stderr, disable=not self.progress or None)
        with torch.no_grad(), bar:
            for start in range(0, n * c, self.batch_size):
                rows = torch.arange(start, min(start + self.batch_size, n * c), device=x.device)
                image = rows // c
                masks = make_masks(flat_acts[rows], tuple(x.shape[2:]))
                masked = x[image] * masks.unsqueeze(1)
                if masked.dim() == 4:  # convolutions run fastest channels-last on CPU
                    masked = masked.contiguous(memory_format=torch.channels_last)
                out = forward_func(masked, *take_all(extra, image, n))
                if self.variant == "reference" and not isinstance(target, Target):
                    out = out.softmax(dim=1)  # a target object gives its own score
                weights[rows] = target_scores(out, take(target, image, n)).reshape(-1)
                bar.update(len(rows))
        if self.variant == "score-cam":
            weights = weights.reshape(n, c).softmax(dim=1)
        return weights.reshape(n, c, *([1] * (acts.dim() - 2))) * acts

