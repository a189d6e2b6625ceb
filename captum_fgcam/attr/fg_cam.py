r"""FG-CAM attributions for Captum: ``FGCam`` (any weighting), ``FGGradCam``, ``FGScoreCam``.

FG-CAM keeps a CAM method's per-channel components E_k = w_k A_k at the CAM layer (instead of
summing them into a coarse map) and propagates them to ``layer`` with relevance rules:

    map = \sum_c R_c^{(layer)},   R^{(layer)} = \rho_{layer+1} \circ ... \circ \rho_L (E)

optionally after SVD denoising of E (``denoise=True``). The multi-scale map, a product of such
maps at several resolutions, is :class:`~captum_fgcam.attr.multiscale.MultiScaleFGCam`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from captum.log import log_usage
from torch import Tensor, nn

from .._batching import each, finished, take, take_all
from .._state import preserved_state
from ..arguments import TargetType, forward_args_tuple, input_tuple
from ..denoising import denoise_mode, svd_denoise
from ..propagation.capture import ANY_LAYER, where_non_finite
from ..propagation.layers import LayerRef, Rules, cam_layer_in, check_cam_layer, qualified_name
from ..propagation.tokens import on_grid
from ..propagation.upsampler import Span
from ..targets import Target, scores_of
from ..weightings import CamRecord, ScoreCamWeighting, Weighting, get_weighting
from .base import PropagatedAttribution
from .validation import as_target, check_inputs, explained_scores

Maps = TypeVar("Maps")


class ComponentPropagation(PropagatedAttribution):
    """A CAM weighting's components at the CAM layer, propagated to ``layer``: what
    :class:`FGCam` and :class:`~captum_fgcam.attr.multiscale.MultiScaleFGCam` share (their
    arguments: :class:`FGCam`). The property :attr:`cam_layer` is the CAM layer used."""

    #: the fewest positions a CAM layer's map may have (:func:`check_cam_layer`)
    min_positions = 1

    def __init__(self, forward_func: nn.Module, layer: LayerRef,
                 device_ids: list[int] | None = None, *,
                 weighting: str | Weighting | Any = "grad_cam",
                 cam_layer: LayerRef | None = None, rules: Rules = None,
                 fold_batchnorm: bool = False) -> None:
        super().__init__(forward_func, layer, device_ids, cam_layer, rules, fold_batchnorm)
        if cam_layer is not None:
            check_cam_layer(qualified_name(self.module, cam_layer))
        self.weighting = get_weighting(weighting)
        self._found: str | None = None  # the CAM layer the last call found

    @property
    def cam_layer(self) -> nn.Module | None:
        """The CAM layer: the one given, else the one the last call found (None before)."""
        name = self.upsampler.from_name or self._found
        return None if name is None else self.module.get_submodule(name)

    def _attribute(self, inputs: Tensor | tuple[Tensor, ...], target: Any,
                   additional_forward_args: Any, internal_batch_size: int | None,
                   to_input: bool, denoise: bool | str, denoise_rank: float | int,
                   maps: Callable[[Span, Tensor, str], Maps]) -> Maps:
        """Checked arguments, then per batch of at most ``internal_batch_size`` examples:
        one recorded forward pass of the real input, the weighting's components (denoised
        with ``denoise``), and ``maps(span, components, cam layer name)``; the batches'
        maps concatenated."""
        mode = denoise_mode(denoise)
        inputs = check_inputs(self.module, input_tuple(inputs))
        n = inputs[0].shape[0]
        target = as_target(target, n, self.module)
        extra = forward_args_tuple(additional_forward_args)
        step = n if internal_batch_size is None else internal_batch_size
        if step < 1:
            raise ValueError(f"internal_batch_size must be >= 1; got {internal_batch_size}")
        found, chunks = self._found, []
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            chunk = tuple(x[rows] for x in inputs)
            with preserved_state(self.module):
                span, components, found = self._components(
                    chunk, take(target, rows, n), take_all(extra, rows, n) or None, to_input,
                    found)
                if mode is not None:
                    components = on_grid(lambda e: svd_denoise(
                        e, denoise_rank, keep_mean=mode == "keep-mean"), chunk[0],
                                         components, grids=span.capture.grids)
                chunks.append(maps(span, components, found))
        if self.upsampler.from_name is None:
            self._found = found
        return chunks[0] if len(chunks) == 1 else each(lambda *c: torch.cat(c), *chunks)

    def _components(self, inputs: tuple[Tensor, ...], target: TargetType,
                    additional_forward_args: tuple[Any, ...] | None, to_input: bool,
                    guess: str | None) -> tuple[Span, Tensor, str]:
        """The span from the CAM layer to ``layer``, the components there, and the CAM
        layer's name. A gradient weighting's A and dy/dA come from the recorded pass itself:
        autograd runs from the CAM layer's output on (``guess``: the one found last time, when
        not given), or from the input where the CAM layer is found in this very pass; a
        second pass only where the guess was wrong or the model changed the CAM layer's
        output in place."""
        up, module, weighting = self.upsampler, self.module, self.weighting
        gradient = weighting.requires_gradient
        guess = up.from_name or guess
        cap = up.capture(inputs, additional_forward_args,
                         (guess or ANY_LAYER) if gradient else None)
        cam_name = up.from_name or cam_layer_in(cap, module)
        if gradient and cam_name not in cap.live:
            cap = up.capture(inputs, additional_forward_args, cam_name)
        with torch.set_grad_enabled(gradient):
            scores = explained_scores(cap.output, target, inputs[0].shape[0],
                                      lambda: where_non_finite(cap, module),
                                      weighting.requires_target)
        span = up.span(cap, to_input, cam_name)
        grad = None
        if gradient:
            (grad,) = torch.autograd.grad(scores.sum(), cap.live[cam_name])
        check_cam_layer(cam_name, span.activation(), inputs[0], cap.grids, grad,
                        self.min_positions, lambda: cam_layer_in(cap, module))
        cap.output = scores = None  # the weighting may need the memory
        cap.live.clear()
        cam = CamRecord(module.get_submodule(cam_name), span.activation(), grad, cap.grids)

        def forward(*args: Any) -> Any:  # a target object reads the whole output
            output = module(*args)
            return output if isinstance(target, Target) else scores_of(output)

        components = weighting.weigh(forward, cam, inputs, target, additional_forward_args)
        return span, _checked_components(components, cam.activation, weighting), cam_name


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


class FGCam(ComponentPropagation):
    r"""Fine-grained CAM for any CAM weighting, at any layer before the CAM layer: signed
    relevance (one recorded forward pass of the real input, the weighting's components,
    optional denoising, one propagation per batch).

    Args:
        forward_func: the model (an ``nn.Module``; ``DataParallel``, DDP, ``torch.compile``
            and Hugging Face models returning ``.logits`` are accepted).
        layer: where the map is returned (module or dotted name), Captum's meaning of
            ``layer``: its output, or its input with ``attribute_to_layer_input=True``.
        device_ids: as in Captum (not needed: wrappers are looked through).
        weighting: "grad_cam" (default), "score_cam", "grad_cam++", "xgrad_cam",
            "layer_cam", "hires_cam", "conceptor", a
            :class:`~captum_fgcam.weightings.Weighting`, or a function
            ``(forward_func, cam_layer, inputs, target, additional_forward_args) ->
            components`` (N x C x h x w at the CAM layer) that runs the model through
            ``forward_func`` (any number of times, on any inputs) and reads the CAM layer's
            output by hooking ``cam_layer``, the model's own module.
        cam_layer: where channel weights are computed (module or dotted name); default: the
            last module with a spatial output before global pooling / flatten (VGG:
            ``features[43]``), found on each call from the operations the input runs through
            (the property :attr:`cam_layer` then tells the one the last call used).
        rules: relevance rules (see :class:`FineGrainedUpsampler`); default: the conserving
            preset (``rules="reference"``: the paper's exactly).
        fold_batchnorm: see :class:`FineGrainedUpsampler` (default False, as the reference).
    """

    @log_usage()
    def attribute(self, inputs: Tensor | tuple[Tensor, ...], target: TargetType = None,
                  additional_forward_args: Any = None, attribute_to_layer_input: bool = False,
                  relu_attributions: bool = False, attr_dim_summation: bool = True,
                  denoise: bool | str = False, denoise_rank: float | int = 0.1,
                  internal_batch_size: int | None = None) -> Tensor | tuple[Tensor, ...]:
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
                (fraction of min(C, hw), or a count) singular triplets of the components,
                centred per channel (True or ``"paper"``: the means removed, as in the
                paper; ``"keep-mean"``: added back, the variant for transformers).
            internal_batch_size: process at most this many examples at a time (for batches
                larger than memory allows); the result is the same.

        Returns:
            Signed relevance on the input's device; with ``attribute_to_layer_input`` on a
            layer of several tensor inputs, a tuple (one map per input, as in Captum).

        Examples::

            >>> fg = FGGradCam(model, layer=model.features[13])
            >>> attr = fg.attribute(x, target=labels)   # N x 1 x 56 x 56 at 224 px
        """
        relevance = self._attribute(inputs, target, additional_forward_args,
                                    internal_batch_size, attribute_to_layer_input, denoise,
                                    denoise_rank, lambda span, e, _: self.upsampler.propagate(
                                        span, e))
        return each(lambda r: finished(r, attr_dim_summation, relu_attributions), relevance)


class FGGradCam(FGCam):
    """FG-Grad-CAM: Grad-CAM's components (from Captum's ``LayerGradCam``), propagated."""

    def __init__(self, forward_func: nn.Module, layer: LayerRef,
                 device_ids: list[int] | None = None, *, cam_layer: LayerRef | None = None,
                 rules: Rules = None, fold_batchnorm: bool = False) -> None:
        super().__init__(forward_func, layer, device_ids, weighting="grad_cam",
                         cam_layer=cam_layer, rules=rules, fold_batchnorm=fold_batchnorm)


class FGScoreCam(FGCam):
    """FG-Score-CAM: Score-CAM components (``variant="reference"``, FG-CAM's, by default;
    ``"score-cam"`` for the Score-CAM paper's), propagated. Cost: one forward pass per channel
    of the CAM layer per image (512 on VGG16), ``batch_size`` masked images at a time (memory
    grows with it); a progress bar counts them on a terminal (``progress=False``: none).
    """

    def __init__(self, forward_func: nn.Module, layer: LayerRef,
                 device_ids: list[int] | None = None, *, cam_layer: LayerRef | None = None,
                 rules: Rules = None, fold_batchnorm: bool = False, batch_size: int = 64,
                 variant: str = "reference", progress: bool = True) -> None:
        super().__init__(forward_func, layer, device_ids,
                         weighting=ScoreCamWeighting(batch_size, variant, progress),
                         cam_layer=cam_layer, rules=rules, fold_batchnorm=fold_batchnorm)
