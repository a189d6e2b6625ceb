"""Evaluation metrics for attribution maps (the protocols of FG-CAM's paper), Captum-style.

Every function returns per-image values (tensors of length N on the inputs' device), so results of
several batches, shards or processes can be summed and then divided by the total number of images.

Conventions shared by all functions:

* ``attributions`` may have shape (N, 1, h, w), (N, h, w) or (N, C, h, w) (channels are summed),
  a tensor or a numpy array; the map is resized bilinearly (``align_corners=False``) to the
  input's (or region's) size (H, W). It must have the image's aspect ratio: (h, w) must be
  (H, W) scaled by one factor s, each side rounded either way, |H/s - h| < 1 and |W/s - w| < 1
  for some s > 0 (every CNN's or ViT's feature grid qualifies; a map of a crop does not: resize
  it yourself with ``F.interpolate`` if stretching is meant).
* Regions are masks (N, H, W), (N, 1, H, W) or (H, W), bool or 0/1 valued, or boxes (N, 4),
  (1, 4) or (4,) (x0, y0, x1, y1); tensors, numpy arrays or lists. The form is read from the
  shape; the one shape both could have, (N, 4) or (1, 4) not bool, is boxes with ``image_size``
  and refused without it (``form="mask"`` or ``form="boxes"`` says which it is).
* Inputs, maps, regions, targets and options are checked before any model call: empty batches,
  batch sizes that disagree, non-finite inputs, maps or boxes and wrong shapes or types are
  refused naming the fix.
* Pixels are ranked by the upsampled map, most important first, with a stable sort: equal values
  keep row-major order (the lower flat index ranks first), so results are deterministic.
* "Removing" a pixel replaces it, in all channels, with the same pixel of ``blur(inputs)``
  (default a Gaussian blur, kernel 51, sigma 50; ``RISE_BLUR`` is RISE's 11 / 5). Any callable
  ``Tensor -> Tensor`` of the same shape can serve as ``blur`` (e.g. ``torch.zeros_like``).
* Maps must be finite (NaN or Inf are refused, naming the images); targets are integer class
  indices (floats and booleans are refused, as in the attribution methods), or a target
  object (:mod:`captum_fgcam.targets`: a region, a detection, a similarity), which scores every
  perturbed image itself.
* A map with no positive value (e.g. all zeros) has energy proportion 0 and misses the pointing
  game; under Average Drop it keeps no pixel; its insertion/deletion order is row-major.
* The score of an image is the softmax probability of ``target`` (``use_softmax=False``: the raw
  output, e.g. the logit); a target object's own score. Perturbed images of all steps and
  all images go through ``forward_func`` in batches of ``batch_size``, under
  ``torch.no_grad()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._batching import take_all
from .arguments import target_scores
from .attr.validation import as_target, check_target
from .targets import Target

TargetLike = int | Sequence[int] | Tensor
ArrayLike = Tensor | np.ndarray | Sequence[Any]
Form = Literal["mask", "boxes"] | None

__all__ = [
    "Blur", "DEFAULT_BLUR", "RISE_BLUR", "DropIncrease", "InsertionDeletion",
    "average_drop_increase", "dead_zone", "insertion_deletion", "energy_proportion",
    "pointing_game", "unseen_mass",
]


@dataclass(frozen=True)
class Blur:
    """Gaussian blur of an (N, C, H, W) batch, channel by channel.

    Kernel k[i] = exp(-(i - r)^2 / (2 sigma^2)) / sum_j exp(-(j - r)^2 / (2 sigma^2)),
    i = 0..kernel_size-1, r = kernel_size // 2, applied separably along H and W. Borders are
    padded by replication (any image size works; no darkening at the border).
    """

    kernel_size: int = 51
    sigma: float = 50.0

    def __post_init__(self) -> None:
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {self.kernel_size}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")

    def __call__(self, inputs: Tensor) -> Tensor:
        n, c, h, w = inputs.shape
        r = self.kernel_size // 2
        offsets = torch.arange(-r, r + 1, device=inputs.device, dtype=inputs.dtype)
        kernel = torch.exp(-(offsets**2) / (2 * self.sigma**2))
        kernel = kernel / kernel.sum()
        x = inputs.reshape(n * c, 1, h, w)
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), kernel.view(1, 1, -1, 1))
        return x.reshape(n, c, h, w)


DEFAULT_BLUR = Blur(51, 50.0)
RISE_BLUR = Blur(11, 5.0)


@dataclass(frozen=True)
class DropIncrease:
    """Per-image Average Drop / Average Increase terms (all tensors of shape (N,)).

    ``original`` = Y (score on the image), ``perturbed`` = O (score on the perturbed image),
    ``drop`` = 100 * max(0, Y - O) / Y (percent), ``increase`` = 1[Y < O] (0. or 1.).
    """

    original: Tensor
    perturbed: Tensor
    drop: Tensor
    increase: Tensor

    @property
    def average_drop(self) -> float:
        """A.D. = 100/N * sum max(0, Y - O) / Y."""
        return self.drop.mean().item()

    @property
    def average_increase(self) -> float:
        """A.I. = 100/N * sum 1[Y < O] (percent)."""
        return 100.0 * self.increase.mean().item()


@dataclass(frozen=True)
class InsertionDeletion:
    """Insertion and deletion curves and their areas.

    ``fractions`` (S+1,): fraction of pixels changed after each step, 0 to 1.
    ``insertion_curve``, ``deletion_curve`` (N, S+1): score after each step, the start included.
    ``insertion``, ``deletion`` (N,): trapezoid AUC of the curves over ``fractions``.
    """

    fractions: Tensor
    insertion_curve: Tensor
    deletion_curve: Tensor
    insertion: Tensor
    deletion: Tensor

    @property
    def overall(self) -> Tensor:
        """Per-image Overall = AUC(insertion) - AUC(deletion), shape (N,)."""
        return self.insertion - self.deletion

    @property
    def average_insertion(self) -> float:
        return self.insertion.mean().item()

    @property
    def average_deletion(self) -> float:
        return self.deletion.mean().item()

    @property
    def average_overall(self) -> float:
        return self.overall.mean().item()


def _as_tensor(value: Any, name: str) -> Tensor:
    """``value`` as a tensor: a tensor as it is, a numpy array or a list of numbers converted."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            return torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be a tensor, a numpy array or a list of numbers; "
                            f"{error}") from None
    raise TypeError(f"{name} must be a tensor, a numpy array or a list of numbers; got "
                    f"{type(value).__name__}")


def _maps(attributions: Any) -> Tensor:
    """``attributions`` as a non-empty (N, 1, h, w), (N, h, w) or (N, C, h, w) tensor."""
    attributions = _as_tensor(attributions, "attributions")
    if attributions.dim() not in (3, 4):
        raise ValueError(
            "attributions must have shape (N, 1, h, w), (N, h, w) or (N, C, h, w), got "
            f"{tuple(attributions.shape)} (one map: add the batch axis, maps[None])")
    if attributions.shape[0] == 0:
        raise ValueError("the batch is empty (0 maps): there is nothing to evaluate")
    if attributions.is_complex():
        raise TypeError(f"attributions must be real numbers, got {attributions.dtype}")
    return attributions


def _check_aspect(grid: tuple[int, int], size: tuple[int, int]) -> None:
    """Refuse a map of grid (h, w) unless some s > 0 gives |H/s - h| < 1 and |W/s - w| < 1
    for the image size (H, W): s in (H/(h+1), H/(h-1)) on each side (h = 1: no upper end)."""
    low = max(side / (cells + 1) for side, cells in zip(size, grid, strict=True))
    high = min(side / (cells - 1) if cells > 1 else math.inf
               for side, cells in zip(size, grid, strict=True))
    if low >= high:
        raise ValueError(
            f"a {grid[0]} x {grid[1]} map does not have the aspect ratio of the {size[0]} x "
            f"{size[1]} image it is measured on, so it would be stretched: give a map of that "
            "image (or of its feature grid), or resize it yourself if stretching is meant, "
            f"F.interpolate(maps, size={tuple(size)}, mode='bilinear', align_corners=False)")


def _saliency(attributions: Tensor, size: tuple[int, int]) -> Tensor:
    """The (N, H, W) map: channels summed, upsampled bilinearly to ``size`` = (H, W)."""
    _check_aspect(tuple(attributions.shape[-2:]), size)
    if attributions.dim() == 4:
        attributions = attributions.sum(dim=1)
    sal = attributions.detach().float()
    bad = (~torch.isfinite(sal.flatten(1))).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"the maps of images {bad} contain NaN or Inf; a metric of such a map "
                         "means nothing: fix the attribution (or drop those images)")
    if tuple(sal.shape[1:]) != tuple(size):
        sal = F.interpolate(sal.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        sal = sal.squeeze(1)
    return sal


def _pixel_ranks(sal: Tensor) -> Tensor:
    """rank[n, p] of flat pixel p in image n (0 = most important); stable descending sort."""
    order = torch.sort(sal.flatten(1), dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def _targets(target: TargetLike, n: int, device: torch.device, use_softmax: bool | None
             ) -> Tensor | Target:
    """One class index per image, normalised as in the attributions (:func:`as_target`), or
    a target object (its own score, on every perturbed image)."""
    target = as_target(target, n)
    if isinstance(target, Target):
        if use_softmax:  # None: the target's own score
            raise ValueError(f"use_softmax applies to class indices; the target {target!r} "
                             "gives its own score: leave use_softmax out (ClassProbability "
                             "for a probability)")
        return target
    if target is None:
        raise TypeError("target must be class indices (an int, a list, a numpy array or a "
                        "tensor of integers, one per image); got None")
    if isinstance(target, tuple) and len(target) == 1:
        target = target[0]
    if isinstance(target, (tuple, list)):
        raise ValueError(f"target {target!r} indexes several output dimensions; the metrics "
                         "score one class of (N, classes) scores per image: pass class "
                         "indices")
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long, device=device)
    return target.to(device)


def _check(forward_func: Any, inputs: Any, attributions: Any) -> tuple[Tensor, Tensor]:
    """``inputs``, detached, and the maps as a tensor, after checking them."""
    if not callable(forward_func):
        raise TypeError(f"forward_func must be the model (a callable), got "
                        f"{type(forward_func).__name__}")
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be the model's input tensor (N, C, H, W), got "
                        f"{type(inputs).__name__}: convert it with torch.as_tensor")
    if inputs.dim() != 4:
        raise ValueError(f"inputs must have shape (N, C, H, W), got {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be floating point, got {inputs.dtype}: convert them as "
                        "the model expects (e.g. x.float() / 255, then normalise)")
    if inputs.shape[0] == 0:
        raise ValueError("the batch is empty (0 images): there is nothing to evaluate")
    if not bool(torch.isfinite(inputs).all()):
        bad = (~torch.isfinite(inputs.flatten(1))).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"inputs of images {bad} contain NaN or Inf; drop or repair them")
    attributions = _maps(attributions)
    if attributions.shape[0] != inputs.shape[0]:
        raise ValueError(f"attributions have {attributions.shape[0]} images, inputs "
                         f"{inputs.shape[0]}: pass one map per image")
    return inputs.detach(), attributions


def _blurred(blur: Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
    """``blur(inputs)``, checked to be a tensor of the inputs' shape."""
    if not callable(blur):
        raise TypeError(f"blur must be a callable Tensor -> Tensor, got {type(blur).__name__}")
    blurred = blur(inputs)
    if not isinstance(blurred, Tensor) or blurred.shape != inputs.shape:
        raise ValueError(f"blur must return a tensor of the inputs' shape "
                         f"{tuple(inputs.shape)}, got {type(blurred).__name__} "
                         f"{tuple(getattr(blurred, 'shape', ()))}")
    return blurred


@torch.no_grad()
def _scores(
    forward_func: Callable[..., Tensor],
    make: Callable[[Tensor], Tensor],
    samples: Tensor,
    targets: Tensor | Target,
    n: int,
    additional_forward_args: Any,
    use_softmax: bool | None,
    batch_size: int,
) -> Tensor:
    """Score of each job j: ``make(jobs)`` builds the images of a chunk of job indices; job j
    belongs to image ``samples[j]`` (of ``n``) and is scored on ``targets[samples[j]]`` (a
    target object: on its own data for that image)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out = []
    for start in range(0, samples.shape[0], batch_size):
        jobs = torch.arange(start, min(start + batch_size, samples.shape[0]),
                            device=samples.device)
        idx = samples[jobs]
        output = forward_func(make(jobs), *take_all(additional_forward_args, idx, n))
        if isinstance(targets, Target):
            out.append(target_scores(output, targets.take(idx)).detach())
            continue
        if not out:
            check_scores(output, targets)
        if use_softmax is not False:  # None: softmax for class indices
            output = torch.softmax(output, dim=1)
        out.append(output.gather(1, targets[idx].unsqueeze(1)).squeeze(1))
    return torch.cat(out)


def check_scores(output: Any, targets: Tensor, source: str = "forward_func") -> None:
    """Refuse an ``output`` of ``source`` that is not (N, classes) scores, or ``targets``
    outside its classes."""
    if not isinstance(output, Tensor) or output.dim() != 2:
        raise ValueError(f"{source} must return scores of shape (N, classes), got "
                         f"{type(output).__name__} {tuple(getattr(output, 'shape', ()))}")
    check_target(as_target(targets), None, output)


def _composite(inputs: Tensor, blurred: Tensor, ranks: Tensor, samples: Tensor, counts: Tensor,
               keep_top: Tensor) -> Callable[[Tensor], Tensor]:
    """Images of jobs: image ``samples[j]`` with the original pixels where
    (rank < counts[j]) == keep_top[j], the blurred pixels elsewhere."""
    h, w = inputs.shape[2:]

    def make(jobs: Tensor) -> Tensor:
        idx = samples[jobs]
        original = (ranks[idx] < counts[jobs, None]) == keep_top[jobs, None]
        original = original.view(-1, 1, h, w)
        return torch.where(original, inputs[idx], blurred[idx])

    return make


def _as_additional(args: Any) -> tuple[Any, ...] | None:
    if args is None:
        return None
    return args if isinstance(args, tuple) else (args,)


def average_drop_increase(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: ArrayLike,
    target: TargetLike,
    keep: float = 0.5,
    blur: Callable[[Tensor], Tensor] = DEFAULT_BLUR,
    use_softmax: bool | None = None,
    batch_size: int = 64,
    additional_forward_args: Any = None,
    positive_only: bool = True,
    mode: Literal["blur", "multiply"] = "blur",
) -> DropIncrease:
    """Average Drop / Average Increase (Grad-CAM++; FG-CAM's protocol).

    ``mode="blur"`` (the protocol): keep the k = round(keep * H * W) top-ranked pixels and replace
    the others with ``blur(inputs)``; with ``positive_only`` (default) k = min(k, number of
    pixels with a positive map value), so a signed map with few positive pixels keeps only those.
    ``mode="multiply"`` (TorchCAM's ``ClassificationMetric``): the perturbed image is
    map * inputs, with the upsampled map used as given (TorchCAM min-max normalises it first);
    ``keep``, ``blur`` and ``positive_only`` apply to ``mode="blur"`` only.

    Y = score on ``inputs``, O = score on the perturbed image; per image
    drop = 100 * max(0, Y - O) / Y, increase = 1[Y < O]. Returns a :class:`DropIncrease` whose
    tensors have shape (N,). Scores should be positive (softmax, the default) for drop to mean a
    relative drop.
    """
    inputs, attributions = _check(forward_func, inputs, attributions)
    if not 0 <= keep <= 1:
        raise ValueError(f"keep must be a fraction in [0, 1], got {keep}")
    n, _, h, w = inputs.shape
    sal = _saliency(attributions, (h, w)).to(inputs.device)
    targets = _targets(target, n, inputs.device, use_softmax)
    args = _as_additional(additional_forward_args)
    images = torch.arange(n, device=inputs.device)
    samples = torch.cat([images, images])
    if mode == "blur":
        k = torch.full((n,), round(keep * h * w), device=inputs.device)
        if positive_only:
            k = torch.minimum(k, (sal.flatten(1) > 0).sum(dim=1))
        counts = torch.cat([torch.full((n,), h * w, device=inputs.device), k])
        make = _composite(inputs, _blurred(blur, inputs), _pixel_ranks(sal), samples, counts,
                          torch.ones_like(samples, dtype=torch.bool))
    elif mode == "multiply":
        scaled = torch.cat([inputs, sal.unsqueeze(1).to(inputs.dtype) * inputs])

        def make(jobs: Tensor) -> Tensor:
            return scaled[jobs]
    else:
        raise ValueError(f"mode must be 'blur' or 'multiply', got {mode!r}")
    scores = _scores(forward_func, make, samples, targets, n, args, use_softmax, batch_size)
    y, o = scores[:n], scores[n:]
    return DropIncrease(original=y, perturbed=o, drop=100.0 * torch.relu(y - o) / y,
                        increase=(y < o).to(scores.dtype))


def insertion_deletion(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: ArrayLike,
    target: TargetLike,
    pixels_per_step: int | None = 448,
    steps: int | None = None,
    blur: Callable[[Tensor], Tensor] = DEFAULT_BLUR,
    use_softmax: bool | None = None,
    batch_size: int = 64,
    additional_forward_args: Any = None,
) -> InsertionDeletion:
    """Insertion / deletion curves and AUCs (RISE; FG-CAM's protocol).

    P = H * W pixels, q = ``pixels_per_step`` (or ceil(P / ``steps``) when ``steps`` is given);
    after step s, t_s = min(s * q, P) pixels have changed, s = 0..S, S = ceil(P / q).
    Deletion: the image with its t_s top-ranked pixels replaced by ``blur(inputs)``; insertion:
    the blurred image with its t_s top-ranked pixels put back. Curves (N, S+1) record the score
    after every step, the start included; AUC = trapezoid rule over fractions t_s / P in [0, 1];
    Overall = AUC(insertion) - AUC(deletion). Deletion's first point is insertion's last (the
    image) and vice versa (the blurred image), so each image costs 2S forward passes, in batches
    of ``batch_size`` images drawn from all steps and all images.
    """
    inputs, attributions = _check(forward_func, inputs, attributions)
    n, _, h, w = inputs.shape
    total = h * w
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be positive, got {steps}")
        pixels_per_step = math.ceil(total / steps)
    if pixels_per_step is None or pixels_per_step < 1:
        raise ValueError(f"pixels_per_step must be positive, got {pixels_per_step}")
    device = inputs.device
    counts = torch.arange(0, total + pixels_per_step, pixels_per_step, device=device).clamp(
        max=total).unique_consecutive()
    s = counts.shape[0] - 1
    # jobs per image: insertion at t_0..t_S (t_0 is the blurred image, t_S the image),
    # then deletion at t_1..t_{S-1}
    job_counts = torch.cat([counts, counts[1:-1]])
    job_insert = torch.arange(job_counts.shape[0], device=device) <= s
    samples = torch.arange(n, device=device).repeat_interleave(job_counts.shape[0])
    ranks = _pixel_ranks(_saliency(attributions, (h, w)).to(device))
    make = _composite(inputs, _blurred(blur, inputs), ranks, samples, job_counts.repeat(n),
                      job_insert.repeat(n))
    scores = _scores(forward_func, make, samples, _targets(target, n, device, use_softmax), n,
                     _as_additional(additional_forward_args), use_softmax, batch_size)
    scores = scores.view(n, -1)
    insertion = scores[:, : s + 1]
    deletion = torch.cat([insertion[:, -1:], scores[:, s + 1:], insertion[:, :1]], dim=1)
    fractions = counts.to(scores.dtype) / total
    return InsertionDeletion(
        fractions=fractions, insertion_curve=insertion, deletion_curve=deletion,
        insertion=torch.trapezoid(insertion, fractions, dim=1),
        deletion=torch.trapezoid(deletion, fractions, dim=1))


def _image_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = tuple(image_size) if isinstance(image_size, (tuple, list, torch.Size)) else ()
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 and v > 0 for v in size):
        raise ValueError(f"image_size must be (H, W), two positive integers, got {image_size!r}")
    return int(size[0]), int(size[1])


def _form(region: Tensor, n: int, image_size: tuple[int, int] | None, form: Form) -> str:
    """"mask" or "boxes": ``form`` if given, else read from the shape; a non-bool (N, 4) or
    (1, 4), which an N x 4 mask has too, is boxes only with an ``image_size`` other than that."""
    if form is not None:
        if form not in ("mask", "boxes"):
            raise ValueError(f"form must be 'mask', 'boxes' or None, got {form!r}")
        return form
    if region.dtype == torch.bool or region.dim() != 2 and region.shape != (4,):
        return "mask"
    if region.dim() == 1:
        return "boxes"
    if region.shape[1] != 4 or region.shape[0] not in (1, n):
        return "mask"
    if image_size is None:
        raise ValueError(
            f"a region of shape {tuple(region.shape)} is boxes (x0, y0, x1, y1) or a "
            f"{region.shape[0]} x 4 mask: boxes are pixel coordinates of an image, so pass "
            "image_size=(H, W) of that image; for a mask pass form='mask'")
    if image_size == tuple(region.shape):
        raise ValueError(f"a region of shape {tuple(region.shape)} with image_size "
                         f"{image_size} is boxes or a mask: pass form='boxes' or form='mask'")
    return "boxes"


def _boxes_mask(boxes: Tensor, n: int, size: tuple[int, int]) -> Tensor:
    """(N, H, W) bool mask of boxes (N, 4), (1, 4) or (4,) given as (x0, y0, x1, y1) pixel
    coordinates with exclusive ends, in an image of ``size`` = (H, W)."""
    h, w = size
    if boxes.dtype == torch.bool or boxes.is_complex() or boxes.shape[-1:] != (4,) \
            or boxes.dim() > 2 or boxes.dim() == 2 and boxes.shape[0] not in (1, n):
        raise ValueError(f"boxes must be numbers of shape ({n}, 4), (1, 4) or (4,) "
                         f"(x0, y0, x1, y1), got {boxes.dtype} {tuple(boxes.shape)}")
    boxes = boxes.reshape(-1, 4).double().expand(n, 4)
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError("boxes contain NaN or Inf")
    x0, y0, x1, y1 = boxes.round().long().unbind(dim=1)
    inverted = ((x1 < x0) | (y1 < y0)).nonzero().flatten().tolist()
    if inverted:
        raise ValueError(f"boxes of images {inverted} are inverted; give (x0, y0, x1, y1) "
                         "with x0 <= x1 and y0 <= y1 (exclusive ends)")
    ys = torch.arange(h, device=boxes.device).view(1, h, 1)
    xs = torch.arange(w, device=boxes.device).view(1, 1, w)
    return ((ys >= y0.view(-1, 1, 1)) & (ys < y1.view(-1, 1, 1))
            & (xs >= x0.view(-1, 1, 1)) & (xs < x1.view(-1, 1, 1)))


def _mask(region: Tensor, n: int, image_size: tuple[int, int] | None) -> Tensor:
    """(N or 1, H, W) bool mask from a mask (N, H, W), (N, 1, H, W) or (H, W): bool, or any
    dtype holding only 0 and 1 (Quantus' s_batch)."""
    if region.dim() == 4 and region.shape[1] == 1:
        region = region[:, 0]
    if region.dim() not in (2, 3) or (region.dim() == 3 and region.shape[0] not in (1, n)):
        raise ValueError(f"region must be a mask (N, H, W), (N, 1, H, W) or (H, W), or boxes "
                         f"(N, 4), for {n} images; got shape {tuple(region.shape)}")
    if region.dtype != torch.bool:
        if region.is_complex() or not bool(((region == 0) | (region == 1)).all()):
            raise ValueError(f"a {region.dtype} mask must hold only 0 and 1; threshold it "
                             "(mask > 0.5) or pass a bool mask")
        region = region.bool()
    if image_size is not None and tuple(region.shape[-2:]) != image_size:
        raise ValueError(f"the mask is {tuple(region.shape[-2:])} but image_size is "
                         f"{image_size}: a mask is the image's size (drop image_size, which is "
                         "for boxes, or resize the mask)")
    return region


def _map_and_mask(attributions: Any, region: Any, image_size: Any, form: Form
                  ) -> tuple[Tensor, Tensor]:
    """The (N, H, W) map at the region's image size and the (N, H, W) bool region."""
    attributions = _maps(attributions)
    region = _as_tensor(region, "region")
    size = _image_size(image_size)
    n = attributions.shape[0]
    if _form(region, n, size, form) == "boxes":
        if size is None:
            raise ValueError(
                "boxes are pixel coordinates of an image: pass image_size=(H, W) of that "
                f"image (the {tuple(attributions.shape[-2:])} map is upsampled to it)")
        sal = _saliency(attributions, size)
        return sal, _boxes_mask(region.to(sal.device), n, size)
    mask = _mask(region, n, size)
    size = tuple(mask.shape[-2:])
    sal = _saliency(attributions, size)
    return sal, mask.to(sal.device).expand(n, *size)


def energy_proportion(attributions: ArrayLike, region: ArrayLike,
                      image_size: tuple[int, int] | None = None, form: Form = None) -> Tensor:
    """Energy-based pointing game ("Proportion"), shape (N,):
    sum_{p in region} max(0, m_p) / sum_p max(0, m_p), 0 where the map has no positive mass.

    ``region``: a mask (N, H, W), (N, 1, H, W) or (H, W), bool or 0/1 valued (the map is
    upsampled to its size; ``image_size``, if given, must equal it), or boxes (N, 4), (1, 4) or
    (4,) (x0, y0, x1, y1, exclusive ends) in pixels of an image of ``image_size`` = (H, W),
    required with boxes; a tensor, numpy array or list. ``form`` ("mask" or "boxes") says which
    where the shape cannot (module docstring). Inverted or non-finite boxes are refused.
    """
    sal, mask = _map_and_mask(attributions, region, image_size, form)
    positive = sal.clamp(min=0)
    inside = (positive * mask).sum(dim=(1, 2))
    total = positive.sum(dim=(1, 2))
    return torch.where(total > 0, inside / total, torch.zeros_like(total))


def pointing_game(attributions: ArrayLike, region: ArrayLike, tolerance: float = 0,
                  image_size: tuple[int, int] | None = None, form: Form = None) -> Tensor:
    """Pointing game (Zhang et al.), shape (N,) of 0./1.: 1 where the map's maximum lies within
    Euclidean distance ``tolerance`` (pixels) of the region. Ties for the maximum (the plateau
    a coarse map gets when upsampled to the image): the tied pixel nearest to the tied pixels'
    centroid, then the first in row-major order. A constant map (e.g. all zeros) points nowhere:
    0. ``region``, ``image_size`` and ``form`` as in :func:`energy_proportion`.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.number)) \
            or not 0 <= tolerance < math.inf:
        raise ValueError(f"tolerance must be a distance in pixels >= 0, got {tolerance!r}")
    sal, mask = _map_and_mask(attributions, region, image_size, form)
    n, h, w = sal.shape
    ys = torch.arange(h, device=sal.device, dtype=sal.dtype).view(1, h, 1)
    xs = torch.arange(w, device=sal.device, dtype=sal.dtype).view(1, 1, w)
    tied = sal == sal.flatten(1).amax(dim=1).view(n, 1, 1)
    count = tied.flatten(1).sum(dim=1).view(n, 1, 1)
    cy = (tied * ys).flatten(1).sum(dim=1).view(n, 1, 1) / count
    cx = (tied * xs).flatten(1).sum(dim=1).view(n, 1, 1) / count
    spread = torch.where(tied, (ys - cy) ** 2 + (xs - cx) ** 2, torch.inf)
    best = spread.flatten(1).argmin(dim=1)
    py, px = (best // w).view(n, 1, 1), (best % w).view(n, 1, 1)
    near = (ys - py) ** 2 + (xs - px) ** 2 <= tolerance**2
    constant = tied.flatten(1).all(dim=1)
    return ((near & mask).flatten(1).any(dim=1) & ~constant).to(sal.dtype)


def unseen_mass(attributions: ArrayLike, unseen: ArrayLike,
                image_size: tuple[int, int] | None = None, form: Form = None) -> Tensor:
    """Share of positive attribution mass inside a region the model cannot see (Taimeskhanov et
    al., "CAM-based methods can see through walls"), shape (N,):
    sum_{p in unseen} max(0, m_p) / sum_p max(0, m_p); a method following the model's real
    connections gives ~0. ``unseen`` as ``region`` in :func:`energy_proportion`.
    """
    return energy_proportion(attributions, unseen, image_size, form)


def dead_zone(attributions: ArrayLike, region: ArrayLike,
              image_size: tuple[int, int] | None = None, form: Form = None) -> Tensor:
    """Taimeskhanov et al.'s measure for a wall, shape (N,): with m the positive part of the
    map (their CAMs are ReLU'd; a signed map's zeros would otherwise be lifted above its
    minimum), upsampled to the image and min-max normalised per image (m - min) / (max - min),
    ||m restricted to the region||_2 / ||m||_2 (0 for a constant map). ``region`` as in
    :func:`energy_proportion` (their region: the bottom rows the classifier never reads)."""
    sal, mask = _map_and_mask(attributions, region, image_size, form)
    flat = sal.flatten(1).clamp(min=0)
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    scaled = torch.where(high > low, (flat - low) / (high - low), torch.zeros_like(flat))
    inside = (scaled * mask.flatten(1)).norm(dim=1)
    total = scaled.norm(dim=1)
    return torch.where(total > 0, inside / total, torch.zeros_like(total))
