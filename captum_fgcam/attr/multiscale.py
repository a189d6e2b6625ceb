r"""Multi-scale FG-CAM (ours, not in the paper): FG-CAM's relevance read at every resolution
step on the way down, multiplied.

The one propagation of :class:`~captum_fgcam.attr.fg_cam.FGCam` also reads the relevance where
it passes the CAM layer and every resolution step between it and ``layer`` (the layers
RefineCAM multiplies, :func:`~captum_fgcam.attr.refine.refine_layers`), S those layers and
``layer`` itself; the map is the product of their channel sums, each ReLU'd, min-max normalised
and upsampled to the layer's size:

    map = minmax( \prod_{s \in S} minmax( up( minmax( relu( \sum_c R_c^{(s)} ) ) ) ) )

The coarse scales veto what the fine one puts off the object; the map is in [0, 1] and does not
conserve relevance (scores, not relevance: hence a class of its own).
"""

from __future__ import annotations

from typing import Any

from captum.log import log_usage
from torch import Tensor

from ..arguments import TargetType
from ..propagation.layers import LayerError
from ..propagation.upsampler import Span
from .fg_cam import ComponentPropagation
from .refine import refine_layers, scale_product


class MultiScaleFGCam(ComponentPropagation):
    """Multi-scale FG-CAM (module docstring) for any CAM weighting; the arguments of
    :class:`~captum_fgcam.attr.fg_cam.FGCam` (``layer``: a layer with one tensor input; the
    CAM layer's map must have two positions at least)."""

    min_positions = 2

    @log_usage()
    def attribute(self, inputs: Tensor | tuple[Tensor, ...], target: TargetType = None,
                  additional_forward_args: Any = None, attribute_to_layer_input: bool = False,
                  denoise: bool | str = False, denoise_rank: float | int = 0.1,
                  internal_batch_size: int | None = None) -> Tensor:
        """N x 1 x h x w maps in [0, 1], at ``layer`` (its output, or its input with
        ``attribute_to_layer_input=True``); the other arguments as in
        :meth:`FGCam.attribute <captum_fgcam.attr.fg_cam.FGCam.attribute>`."""
        return self._attribute(inputs, target, additional_forward_args, internal_batch_size,
                               attribute_to_layer_input, denoise, denoise_rank,
                               lambda span, e, cam: self._product(span, e, cam,
                                                                  attribute_to_layer_input))

    def _product(self, span: Span, components: Tensor, cam_name: str, to_input: bool) -> Tensor:
        up = self.upsampler
        if len(span.stops) > 1:
            raise LayerError(f"multi-scale FG-CAM needs a layer with one tensor input; "
                             f"{up.to_name!r} has {len(span.stops)}")
        scales = [name for name in refine_layers(span.capture, self.module, cam_name,
                                                 None if to_input else up.to_name)
                  if to_input or name != up.to_name]
        fine, coarse = up.propagate_with_taps(span, components, scales)
        maps = [r.sum(dim=1, keepdim=True) for r in (*coarse, fine)]
        return scale_product(maps, fine.shape[2:])
