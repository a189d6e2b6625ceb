"""Quantus interop: every method of :mod:`captum_fgcam.methods` as a Quantus ``explain_func``.

Quantus metrics call ``explain_func(model=..., inputs=..., targets=..., **explain_func_kwargs)``
with numpy batches and expect numpy attributions of the inputs' spatial size; they may call it
on a randomised copy of the model (randomisation checks), so the explainer is built afresh for
the model it is given. Quantus itself is optional: this module does not import it.

    >>> import quantus
    >>> from captum_fgcam.quantus import explain_func
    >>> metric = quantus.FaithfulnessCorrelation(nr_runs=50, subset_size=64)
    >>> scores = metric(model=model, x_batch=x, y_batch=y, explain_func=explain_func,
    ...                 explain_func_kwargs={"method": "FG-Grad-CAM", "layer": "input"})

Our localisation metrics (:func:`~captum_fgcam.metrics.energy_proportion`,
:func:`~captum_fgcam.metrics.pointing_game`) accept Quantus' (N, 1, H, W) 0/1 ``s_batch``.
Quantus' own metrics score a classifier (``model(x)[:, y]``), so they cannot score a
segmentation region or a detection; ``explain_func`` takes target objects
(:mod:`captum_fgcam.targets`) when called directly, and :mod:`captum_fgcam.metrics` scores them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .attr.validation import as_target
from .methods import INPUT, explainers, get_method
from .propagation import find_cam_layer


def explain_func(model: nn.Module, inputs: Any, targets: Any, method: str = "FG-Grad-CAM",
                 layer: str | None = None, rules: str = "conserving",
                 **_: Any) -> np.ndarray:
    """(N, 1, H, W) float32 maps of ``method`` at ``layer`` for ``inputs`` (N, C, H, W) and
    integer ``targets`` (N,) (any target form the attributions take, target objects
    included; floats and booleans are refused, not cast), upsampled bilinearly to H x W when
    the layer is coarser.

    ``layer``: a module name or ``"input"``; default: the input for methods that reach it,
    else the model's CAM layer. Other keyword arguments (Quantus passes some) are ignored.
    """
    first = next(model.parameters())
    x = torch.as_tensor(np.asarray(inputs), dtype=first.dtype, device=first.device)
    target = as_target(targets, x.shape[0])  # checked as everywhere, never cast
    chosen = get_method(method)
    if layer is None:
        layer = INPUT if chosen.at_input else find_cam_layer(model, x[:1])
    explain = explainers(model, [chosen.name], [layer], x[:1], rules)[chosen.name, layer]
    maps = explain(x, target).sum(dim=1, keepdim=True)
    if maps.shape[-2:] != x.shape[-2:]:
        maps = F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return maps.detach().cpu().float().numpy()
