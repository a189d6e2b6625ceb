r"""FG-CAM attributions for Captum: ``FGCam`` (any weighting), ``FGGradCam``, ``FGScoreCam``.

FG-CAM keeps a CAM method's per-channel components E_k = w_k A_k at the CAM layer (instead of
summing them into a coarse map) and propagates them to ``layer`` with relevance rules:

    map = \sum_c R_c^{(layer)},   R^{(layer)} = \rho_{layer+1} \circ ... \circ \rho_L (E)

optionally after SVD denoising of E (``denoise=True``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from captum._utils.common import _format_additional_forward_args, _format_tensor_into_tuples
from captum._utils.typing import TargetType
from captum.attr._utils.attribution import GradientAttribution, LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from .._batching import take, take_all
from .._state import preserved_state
from ..denoising import svd_denoise
from ..propagation.graph import LayerRef, find_cam_layer, require_module, resolve_module
from ..propagation.presets import RuleMap
from ..propagation.upsampler import FineGrainedUpsampler
from ..weightings import ScoreCamWeighting, get_weighting
from .validation import check_inputs, check_target


class FGCam(LayerAttribution, GradientAttribution):
    r"""Fine-grained CAM for any CAM weighting, at any layer before the CAM layer.

    Args:
        forward_func: the model (an ``nn.Module``; FG-CAM traces its graph).
        layer: where the map is returned (module or dotted name), Captum's meaning of
            ``layer``: its output, or its input with ``attribute_to_layer_input=True``.
        weighting: "grad_cam" (default), "score_cam", "grad_cam++", "xgrad_cam",
            "layer_cam", or a callable ``(forward_func, cam_layer, inputs, target,
            additional_forward_args) -> components`` (N x C x h x w at the CAM layer) that
            runs the model through ``forward_func`` and reads the CAM layer's output from the
            ``layer`` it is given (a stand-in module that sees that output; hook it as usual).
        cam_layer: where channel weights are computed; default: the last module with a
            spatial output before global pooling / flatten (VGG: ``features[43]``).
        rules: relevance rules (see :class:`FineGrainedUpsampler`); default: the paper's.
        device_ids: as in Captum (for ``DataParallel`` models).
        fold_batchnorm: see :class:`FineGrainedUpsampler` (default False, as the reference).
    """

    def __init__(self, forward_func: nn.Module, layer: LayerRef,
                 weighting: str | Callable[..., Tensor] = "grad_cam",
                 cam_layer: LayerRef | None = None,
                 rules: None | str | RuleMap | Mapping[Any, Any] = None,
                 device_ids: list[int] | None = None, fold_batchnorm: bool = False) -> None:
        require_module(forward_func)
        model = forward_func
        LayerAttribution.__init__(self, model, resolve_module(model, layer), device_ids)
        GradientAttribution.__init__(self, model)
        cam = find_cam_layer(model) if cam_layer is None else cam_layer
        self.cam_layer = resolve_module(model, cam)
        self.weighting = get_weighting(weighting)
        self._builtin_weighting = isinstance(weighting, (str, ScoreCamWeighting))
        self.upsampler = FineGrainedUpsampler(model, cam, layer, rules, fold_batchnorm)

    @log_usage()
    def attribute(self, inputs: Tensor | tuple[Tensor, ...], target: TargetType = None,
                  additional_forward_args: Any = None, attribute_to_layer_input: bool = False,
                  relu_attributions: bool = False, attr_dim_summation: bool = True,
                  denoise: bool = False, denoise_rank: float | int = 0.1,
                  internal_batch_size: int | None = None) -> Tensor:
        r"""
        Args:
            inputs: the (normalised) image batch, N x C x H x W, or a tuple whose first
                tensor is it.
            target: the class(es) explained, in Captum's forms (int, tuple, tensor, list).
            additional_forward_args: further arguments of the model's forward.
            attribute_to_layer_input: return relevance at ``layer``'s input (use
                ``layer=features[0]`` for the image).
            relu_attributions: apply ReLU to the result (after channel summation).
            attr_dim_summation: sum over channels (N x 1 x h x w); False returns the
                per-channel relevance at the layer.
            denoise, denoise_rank: FG-CAM with denoising: keep the top ``denoise_rank``
                (fraction of min(C, hw), or a count) singular triplets of the components.
            internal_batch_size: process at most this many examples at a time (for batches
                larger than memory allows); the result is the same.

        Returns:
            Signed relevance on the input's device.

        Examples::

            >>> fg = FGGradCam(model, layer=model.features[13])
            >>> attr = fg.attribute(x, target=labels)   # N x 1 x 56 x 56 at 224 px
        """
        inputs = _format_tensor_into_tuples(inputs)
        check_inputs(self.forward_func, inputs, self.upsampler.image_rank)
        extra = _format_additional_forward_args(additional_forward_args)
        n = inputs[0].shape[0]
        step = n if internal_batch_size is None else internal_batch_size
        if step < 1:
            raise ValueError(f"internal_batch_size must be >= 1; got {internal_batch_size}")
        chunks = []
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            chunks.append(self._attribute_chunk(
                tuple(x[rows] for x in inputs), take(target, rows, n),
                take_all(extra, rows, n) or None, attribute_to_layer_input, denoise,
                denoise_rank))
        relevance = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        if attr_dim_summation:
            relevance = relevance.sum(dim=1, keepdim=True)
        return relevance.clamp(min=0) if relu_attributions else relevance

    def _attribute_chunk(self, inputs: tuple[Tensor, ...], target: TargetType,
                         additional_forward_args: tuple[Any, ...] | None, to_input: bool,
                         denoise: bool, denoise_rank: float | int) -> Tensor:
        """One forward pass and one propagation for a batch of examples."""
        up = self.upsampler
        n = inputs[0].shape[0]
        with preserved_state(self.forward_func):
            try:
                def check(output: Any) -> None:
                    check_target(target, n, output, required=self._builtin_weighting)

                with up.forward.recording(check=check):
                    components = self.weighting(up.forward, up.tap, inputs, target,
                                                additional_forward_args)
                if up.forward.values is None:
                    raise RuntimeError(
                        "the CAM weighting never called forward_func; a custom weighting must "
                        "run the model through the forward_func it is given")
                if denoise:
                    components = svd_denoise(components, denoise_rank)
                return up.propagate(components, to_input)
            finally:
                up.forward.release()


class FGGradCam(FGCam):
    """FG-Grad-CAM: Grad-CAM's components (from Captum's ``LayerGradCam``), propagated."""

    def __init__(self, forward_func: nn.Module, layer: LayerRef,
                 cam_layer: LayerRef | None = None,
                 rules: None | str | RuleMap | Mapping[Any, Any] = None,
                 device_ids: list[int] | None = None) -> None:
        super().__init__(forward_func, layer, "grad_cam", cam_layer, rules, device_ids)


class FGScoreCam(FGCam):
    """FG-Score-CAM: Score-CAM components (``variant="reference"``, FG-CAM's, by default;
    ``"score-cam"`` for the Score-CAM paper's), propagated. ``batch_size`` masked images go
    through the model per forward pass.
    """

    def __init__(self, forward_func: nn.Module, layer: LayerRef,
                 cam_layer: LayerRef | None = None,
                 rules: None | str | RuleMap | Mapping[Any, Any] = None,
                 batch_size: int = 64, device_ids: list[int] | None = None,
                 variant: str = "reference") -> None:
        super().__init__(forward_func, layer, ScoreCamWeighting(batch_size, variant), cam_layer,
                         rules, device_ids)
