r"""FG-CAM attributions for Captum: ``FGCam`` (any weighting), ``FGGradCam``, ``FGScoreCam``.

FG-CAM keeps a CAM method's per-channel components E_k = w_k A_k at the CAM layer (instead of
summing them into a coarse map) and propagates them to ``layer`` with relevance rules:

    map = \sum_c R_c^{(layer)},   R^{(layer)} = \rho_{layer+1} \circ ... \circ \rho_L (E)

optionally after SVD denoising of E (``denoise=True``).

Multi-scale FG-CAM (``multiscale=True``, not in the paper): the same propagation also reads
the relevance where it passes the CAM layer and every resolution step on the way (the layers
RefineCAM multiplies, :func:`~captum_fgcam.attr.refine.refine_layers`), and returns the
product of those maps, each ReLU'd, min-max normalised and upsampled to the layer's size:

    map = minmax( \prod_{s \in S} minmax( up( minmax( relu( \sum_c R_c^{(s)} ) ) ) ) )

The coarse scales veto what the fine one puts off the object; the map is in [0, 1] and no
longer conserves relevance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from captum._utils.common import (
    _format_additional_forward_args,
    _format_tensor_into_tuples,
    _select_targets,
)
from captum._utils.typing import TargetType
from captum.attr import LayerAttribution
from captum.attr._utils.attribution import GradientAttribution
from captum.log import log_usage
from torch import Tensor, nn

from .._batching import each, finished, take, take_all
from .._state import preserved_state
from ..denoising import svd_denoise
from ..propagation.capture import scores_of, unwrap
from ..propagation.layers import LayerRef, cam_layer_in, require_module, resolve_module
from ..propagation.presets import RuleMap
from ..propagation.tokens import on_grid
from ..propagation.upsampler import FineGrainedUpsampler
from ..weightings import GradientWeighting, ScoreCamWeighting, Weighting, get_weighting
from ..weightings import requires_target as weighting_requires_target
from .refine import refine_layers, scale_product
from .validation import as_target, check_inputs, check_target


class FGCam(LayerAttribution, GradientAttribution):
    r"""Fine-grained CAM for any CAM weighting, at any layer before the CAM layer.

    Args:
        forward_func: the model (an ``nn.Module``; ``DataParallel``, DDP, ``torch.compile``
            and Hugging Face models returning ``.logits`` are accepted).
        layer: where the map is returned (module or dotted name), Captum's meaning of
            ``layer``: its output, or its input with ``attribute_to_layer_input=True``.
        weighting: "grad_cam" (default), "score_cam", "grad_cam++", "xgrad_cam",
            "layer_cam", or a :class:`~captum_fgcam.weightings.Weighting`: a callable
            ``(forward_func, cam_layer, inputs, target, additional_forward_args) ->
            components`` (N x C x h x w at the CAM layer) that runs the model through
            ``forward_func`` (any number of times, on any inputs) and reads the CAM layer's
            output by hooking ``cam_layer``, the model's own module.
        cam_layer: where channel weights are computed; default: the last module with a
            spatial output before global pooling / flatten (VGG: ``features[43]``), found on
            each call from the operations the input runs through (``self.cam_layer`` is then
            the module last used).
        rules: relevance rules (see :class:`FineGrainedUpsampler`); default: the paper's.
        device_ids: as in Captum (for ``DataParallel`` models).
        fold_batchnorm: see :class:`FineGrainedUpsampler` (default False, as the reference).
    """

    def __init__(self, forward_func: nn.Module, layer: LayerRef,
                 weighting: str | Weighting = "grad_cam",
                 cam_layer: LayerRef | None = None,
                 rules: None | str | RuleMap | Mapping[Any, Any] = None,
                 device_ids: list[int] | None = None, fold_batchnorm: bool = False) -> None:
        require_module(forward_func)
        model = forward_func
        module = unwrap(model)
        require_module(module)
        LayerAttribution.__init__(self, model, resolve_module(module, layer), device_ids)
        GradientAttribution.__init__(self, model)
        self.module = module
        self.cam_layer = None if cam_layer is None else resolve_module(module, cam_layer)
        self.weighting = get_weighting(weighting)
        self.upsampler = FineGrainedUpsampler(model, cam_layer, layer, rules, fold_batchnorm)
        self._found_cam: str | None = None

    @log_usage()
    def attribute(self, inputs: Tensor | tuple[Tensor, ...], target: TargetType = None,
                  additional_forward_args: Any = None, attribute_to_layer_input: bool = False,
                  relu_attributions: bool = False, attr_dim_summation: bool = True,
                  denoise: bool = False, denoise_rank: float | int = 0.1,
                  internal_batch_size: int | None = None,
                  multiscale: bool = False) -> Tensor | tuple[Tensor, ...]:
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
            multiscale: multi-scale FG-CAM (module docstring): the product of the normalised
                maps at the CAM layer, every resolution step down to ``layer``, and ``layer``;
                N x 1 x h x w in [0, 1] (needs ``attr_dim_summation=True``).

        Returns:
            Signed relevance on the input's device; with ``attribute_to_layer_input`` on a
            layer of several tensor inputs, a tuple (one map per input, as in Captum).

        Examples::

            >>> fg = FGGradCam(model, layer=model.features[13])
            >>> attr = fg.attribute(x, target=labels)   # N x 1 x 56 x 56 at 224 px
        """
        if multiscale and not attr_dim_summation:
            raise ValueError("multiscale=True gives one map per image (a product over scales of "
                             "channel sums); it needs attr_dim_summation=True")
        inputs = _format_tensor_into_tuples(inputs)
        check_inputs(self.module, inputs)
        target = as_target(target)
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
                denoise_rank, multiscale))
        relevance = chunks[0] if len(chunks) == 1 else each(lambda *c: torch.cat(c), *chunks)
        return each(lambda r: finished(r, attr_dim_summation, relu_attributions), relevance)

    def _attribute_chunk(self, inputs: tuple[Tensor, ...], target: TargetType,
                         additional_forward_args: tuple[Any, ...] | None, to_input: bool,
                         denoise: bool, denoise_rank: float | int, multiscale: bool
                         ) -> Tensor | tuple[Tensor, ...]:
        """One recorded forward pass of the real input, the weighting, one propagation."""
        up, module = self.upsampler, self.module
        n = inputs[0].shape[0]
        gradient = isinstance(self.weighting, GradientWeighting)
        with preserved_state(module):
            # The recorded pass also gives A and dy/dA for gradient weightings: autograd runs
            # from the CAM layer's output on (the one found last time when not given).
            guess = up.from_name or self._found_cam
            cap = up.capture(inputs, additional_forward_args, guess if gradient else None)
            cam_name = up.from_name or cam_layer_in(cap, module)
            if gradient and cam_name != guess:  # first call: the CAM layer was not known yet
                cap = up.capture(inputs, additional_forward_args, cam_name)
            self._found_cam = None if up.from_name else cam_name
            self.cam_layer = module.get_submodule(cam_name)
            span = up.span(cap, to_input, cam_name)
            scores = scores_of(cap.output)
            check_target(target, n, scores, required=weighting_requires_target(self.weighting))
            if gradient:
                activation = cap.live[cam_name]
                with torch.enable_grad():
                    score = _select_targets(scores, target).sum()
                (grad,) = torch.autograd.grad(score, activation)
                components = self.weighting.in_layout(activation.detach(), grad.detach(),
                                                      inputs[0], cap.grids)
            else:
                cap.output = scores = None

                def forward(*args: Any) -> Tensor:
                    return scores_of(module(*args))

                if hasattr(self.weighting, "from_activation"):  # reuses the recorded A
                    components = self.weighting.from_activation(
                        forward, span.activation(), inputs, target, additional_forward_args)
                else:
                    components = self.weighting(forward, module.get_submodule(cam_name), inputs,
                                                target, additional_forward_args)
            cap.live.clear()
            components = _checked_components(components, span.activation(), self.weighting)
            if denoise:
                components = on_grid(lambda e: svd_denoise(e, denoise_rank), inputs[0],
                                     components, grids=cap.grids)
            if not multiscale:
                return up.propagate(span, components)
            if len(span.stops) > 1:
                raise ValueError(f"multiscale=True needs a layer with one tensor input; "
                                 f"{up.to_name!r} has {len(span.stops)}")
            scales = [name for name in refine_layers(cap, module, cam_name,
                                                     None if to_input else up.to_name)
                      if to_input or name != up.to_name]
            fine, coarse = up.propagate_with_taps(span, components, scales)
            maps = [r.sum(dim=1, keepdim=True) for r in (*coarse, fine)]
            return scale_product(maps, fine.shape[2:])


def _checked_components(components: Any, activation: Tensor, weighting: Any) -> Tensor:
    """The weighting's result as a tensor of the CAM layer's shape, or an error naming it."""
    if not isinstance(components, Tensor):
        raise TypeError(
            f"the CAM weighting {weighting!r} returned {type(components).__name__}; it must "
            f"return a torch.Tensor of the CAM layer's output shape {tuple(activation.shape)}")
    if components.shape != activation.shape:
        raise ValueError(
            f"the CAM weighting returned shape {tuple(components.shape)}; the CAM layer's "
            f"output has shape {tuple(activation.shape)} (one value per element)")
    return components.detach().to(activation.dtype)


class FGGradCam(FGCam):
    """FG-Grad-CAM: Grad-CAM's components (from Captum's ``LayerGradCam``), propagated."""

    def __init__(self, forward_func: nn.Module, layer: LayerRef,
                 cam_layer: LayerRef | None = None,
                 rules: None | str | RuleMap | Mapping[Any, Any] = None,
                 device_ids: list[int] | None = None, fold_batchnorm: bool = False) -> None:
        super().__init__(forward_func, layer, "grad_cam", cam_layer, rules, device_ids,
                         fold_batchnorm)


class FGScoreCam(FGCam):
    """FG-Score-CAM: Score-CAM components (``variant="reference"``, FG-CAM's, by default;
    ``"score-cam"`` for the Score-CAM paper's), propagated. Cost: one forward pass per channel
    of the CAM layer per image (512 on VGG16), ``batch_size`` masked images at a time (memory
    grows with it); a progress bar counts them on a terminal (``progress=False``: none).
    """

    def __init__(self, forward_func: nn.Module, layer: LayerRef,
                 cam_layer: LayerRef | None = None,
                 rules: None | str | RuleMap | Mapping[Any, Any] = None,
                 batch_size: int = 64, device_ids: list[int] | None = None,
                 variant: str = "reference", fold_batchnorm: bool = False,
                 progress: bool = True) -> None:
        super().__init__(forward_func, layer, ScoreCamWeighting(batch_size, variant, progress),
                         cam_layer, rules, device_ids, fold_batchnorm)
