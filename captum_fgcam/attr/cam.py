r"""Plain CAM baselines as Captum layer attributions, sharing FG-CAM's weightings.

map = \sum_k E_k at ``layer`` (N x 1 x h x w), E the weighting's components; upsample it with
``LayerAttribution.interpolate`` for display. The same weighting objects feed :class:`FGCam`,
so a plain CAM and its FG version differ only in what happens after the components.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.log import log_usage
from torch import Tensor, nn

from .._state import preserved_state
from ..arguments import TargetType, forward_args_tuple, input_tuple
from ..propagation.capture import capture, refuse_non_finite, unwrap, where_non_finite
from ..propagation.layers import (
    LayerError,
    LayerRef,
    check_cam_layer,
    find_cam_layer,
    qualified_name,
)
from ..propagation.tokens import as_grid
from ..targets import Target, scores_of
from ..weightings import (
    CamRecord,
    ConceptorWeighting,
    ScoreCamWeighting,
    Weighting,
    components_at,
    grad_cam,
    grad_cam_plus_plus,
    hires_cam,
    layer_cam,
    xgrad_cam,
)
from .base import LayerGradientAttribution
from .validation import as_target, check_inputs, check_target, object_scores


class _NonFinite(Exception):
    """The model's scores hold NaN or Inf (raised inside the weighting, located outside)."""


class _PlainCam(LayerGradientAttribution):
    """A CAM from a weighting: sum of the components over channels at ``layer``'s output
    (``layer``: a module, or its dotted name when ``forward_func`` is the model)."""

    weighting: Weighting
    #: the fewest positions the layer's map may have (2 in RefineCAM's product of min-max
    #: normalised maps, where a 1 x 1 map is 0; see ``check_cam_layer``)
    min_positions = 1

    def __init__(self, forward_func: Callable[..., Any], layer: LayerRef,
                 device_ids: list[int] | None = None) -> None:
        super().__init__(forward_func, layer, device_ids)
        if isinstance(forward_func, nn.Module) and unwrap(self.layer) is unwrap(forward_func):
            check_cam_layer("")

    @log_usage()
    def attribute(self, inputs: Tensor | tuple[Tensor, ...], target: TargetType = None,
                  additional_forward_args: Any = None, attribute_to_layer_input: bool = False,
                  relu_attributions: bool = False, attr_dim_summation: bool = True) -> Tensor:
        """Captum's ``LayerGradCam`` conventions; the map is at the layer's output. Inputs and
        target are checked as FG-CAM checks them, the layer as a CAM layer
        (:func:`~captum_fgcam.propagation.layers.check_cam_layer`), the scores of every model
        call against the target and for NaN or Inf."""
        if attribute_to_layer_input:
            raise NotImplementedError(
                f"{type(self).__name__} weights a layer's output channels; pass the module "
                "whose output you want as layer instead of attribute_to_layer_input=True")
        inputs = input_tuple(inputs)
        model = unwrap(self.forward_func) if isinstance(self.forward_func, nn.Module) else None
        if model is not None:
            inputs = check_inputs(model, inputs)
        target = as_target(target, inputs[0].shape[0], model)
        extra = forward_args_tuple(additional_forward_args)
        weighting, k, bad, calls = self.weighting, len(inputs), [], []

        def forward(*args: Any) -> Any:
            output = (model or self.forward_func)(*args)
            if isinstance(target, Target):  # the real input's output: the first call
                if calls:
                    return output  # Score-CAM's masked images: the weighting scores them
                scores = object_scores(target, output, args[0].shape[0])
            else:
                scores = scores_of(output)
                check_target(target, args[0].shape[0], scores, weighting.requires_target)
            calls.append(args)
            if not bool(torch.isfinite(scores).all()):
                bad.append((args, scores))
                raise _NonFinite  # located below, once the weighting's hooks are gone
            return output if isinstance(target, Target) else scores

        def check(cam: CamRecord) -> None:
            check_cam_layer(_name(model, self.layer), cam.activation, inputs[0],
                            gradient=cam.gradient, positions=self.min_positions,
                            suggest=None if model is None
                            else lambda: find_cam_layer(model, inputs))

        def locate(args: tuple[Any, ...]) -> str:
            if model is None:
                return "pass the model as an nn.Module to locate where"
            with torch.no_grad():
                return where_non_finite(capture(model, args[:k], args[k:]), model)

        with preserved_state(model) if model is not None else torch.inference_mode(False):
            try:
                components = components_at(weighting, forward, self.layer, inputs, target,
                                           extra, check)
            except _NonFinite:
                args, scores = bad[0]
                refuse_non_finite(scores, "the model's scores", lambda: locate(args))
            refuse_non_finite(components, "the CAM components",
                              lambda: locate((*inputs, *(extra or ()))))
        components = as_grid(components, inputs[0])  # a token grid: channels first
        cam = components.sum(dim=1, keepdim=True) if attr_dim_summation else components
        return cam.clamp(min=0) if relu_attributions else cam


def _name(model: nn.Module | None, layer: nn.Module) -> str:
    """``layer``'s dotted name in ``model`` for messages, else its type."""
    try:
        return qualified_name(model, layer) if model is not None else type(layer).__name__
    except LayerError:
        return type(layer).__name__


class GradCam(_PlainCam):
    """Grad-CAM (Selvaraju et al. 2017): Captum's ``LayerGradCam`` equation (equal to it on
    channels-first layers, tested), also at a transformer's token grid, reshaped to
    N x C x h x w (:mod:`~captum_fgcam.propagation.tokens`; pytorch-grad-cam's
    ``reshape_transform``), where Captum's class would average over the wrong axes."""

    weighting = grad_cam


class GradCamPlusPlus(_PlainCam):
    """Grad-CAM++ (Chattopadhay et al. 2018); equation in :mod:`captum_fgcam.weightings`."""

    weighting = grad_cam_plus_plus


class XGradCam(_PlainCam):
    """XGrad-CAM (Fu et al. 2020); equation in :mod:`captum_fgcam.weightings`."""

    weighting = xgrad_cam


class LayerCam(_PlainCam):
    """Layer-CAM (Jiang et al. 2021): pixel-wise weights relu(dy_c/dA) * A."""

    weighting = layer_cam


class HiResCam(_PlainCam):
    """HiResCAM (Draelos & Carin 2020): sum_k dy_c/dA_k * A_k, element-wise (no averaging of
    the gradient over the map), so the map is exactly the first-order contribution of each
    position of the layer to the score."""

    weighting = hires_cam


class ScoreCam(_PlainCam):
    """Score-CAM; ``variant="reference"`` (FG-CAM's, default) or ``"score-cam"`` (the paper's,
    as pytorch-grad-cam). Cost: one forward pass per channel of ``layer`` per image,
    ``batch_size`` masked images at a time; a progress bar on a terminal (``progress``)."""

    def __init__(self, forward_func: Callable[..., Any], layer: LayerRef,
                 device_ids: list[int] | None = None, *, batch_size: int = 64,
                 variant: str = "reference", progress: bool = True) -> None:
        super().__init__(forward_func, layer, device_ids)
        self.weighting = ScoreCamWeighting(batch_size, variant, progress)


class ConceptorCam(_PlainCam):
    """Conceptor-CAM, our reading of Qian et al.'s abstract (every choice stated in
    :mod:`captum_fgcam.weightings.conceptor`); ``aperture`` is the conceptor's alpha."""

    def __init__(self, forward_func: Callable[..., Any], layer: LayerRef,
                 device_ids: list[int] | None = None, *, aperture: float = 1.0) -> None:
        super().__init__(forward_func, layer, device_ids)
        self.weighting = ConceptorWeighting(aperture)
