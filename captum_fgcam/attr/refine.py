r"""RefineCAM (arXiv 2605.14641; pytorch-grad-cam's ``RefineCAM``): fine maps as the product of
normalised CAMs of several layers.

For layers l = 1..m (deepest first), with CAM_l the base method's map at layer l (default
Grad-CAM++, as in pytorch-grad-cam):

    M_l = minmax( up_S( minmax( relu(CAM_l) ) ) ),   RefineCAM = minmax( \prod_l M_l )

minmax(c) = (c - min c) / (max(c - min c) + 1e-7) per image, up_S bilinear upsampling
(``align_corners=False``, OpenCV's ``resize`` convention) to the output size S (default: the
largest layer resolution; the image's for a map at the input); the second minmax is there
because upsampling need not sample a coarse map's extremes (pytorch-grad-cam rescales each
layer's map after resizing it, too). The product keeps what every
layer agrees on, so deep layers veto the false positives of shallow ones.

:func:`refine_layers` chooses the layers for a map at a given layer: the CAM layer, every
downsampling module between it and that layer (outermost ones, none containing the CAM layer:
VGG's max pools, ResNet's ``layer2``..``layer4``), and the layer itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from captum.log import log_usage
from torch import Tensor, nn

from ..arguments import TargetType, input_tuple
from ..propagation.capture import Capture, unwrap
from ..propagation.layers import (
    LayerRef,
    cam_layer_in,
    qualified_name,
    record_example,
    require_module,
    resolve_module,
)
from ..propagation.tokens import as_grid
from .base import LayerGradientAttribution
from .cam import GradCamPlusPlus


def _minmax(c: Tensor) -> Tensor:
    flat = c.flatten(1)
    flat = flat - flat.amin(dim=1, keepdim=True)
    return (flat / (flat.amax(dim=1, keepdim=True) + 1e-7)).view_as(c)


class RefineCam(LayerGradientAttribution):
    """RefineCAM over ``layers`` (module or dotted name each, deepest first), with ``base`` a
    plain CAM class taking ``(model, layer)`` (default :class:`GradCamPlusPlus`); a Captum
    layer attribution whose ``layer`` is the layer of the map, the last (finest) of
    ``layers``."""

    def __init__(self, forward_func: nn.Module, layers: Sequence[LayerRef],
                 device_ids: list[int] | None = None, *,
                 base: type = GradCamPlusPlus) -> None:
        require_module(forward_func)
        if not layers:
            raise ValueError("RefineCAM needs at least one layer")
        module = unwrap(forward_func)
        self.cams = [base(forward_func, resolve_module(module, layer)) for layer in layers]
        for cam in self.cams:
            cam.min_positions = 2  # a 1 x 1 map min-max normalises to 0: so would the product
        super().__init__(forward_func, self.cams[-1].layer, device_ids)

    @log_usage()
    def attribute(self, inputs: Tensor | tuple[Tensor, ...], target: TargetType = None,
                  additional_forward_args: Any = None,
                  size: tuple[int, ...] | None = None) -> Tensor:
        """N x 1 x S map in [0, 1]; ``size`` S defaults to the largest layer resolution."""
        inputs = input_tuple(inputs)
        maps = [cam.attribute(inputs, target, additional_forward_args).detach()
                for cam in self.cams]
        size = tuple(size or max((m.shape[2:] for m in maps), key=lambda s: s.numel()))
        return scale_product(maps, size)


def scale_product(maps: Sequence[Tensor], size: Sequence[int]) -> Tensor:
    r"""minmax( \prod_l minmax( up_S( minmax( relu(m_l) ) ) ) ) of N x 1 x ... maps, at ``size``."""
    mode = "bilinear" if len(size) == 2 else "linear" if len(size) == 1 else "trilinear"
    product = torch.ones(1, device=maps[0].device, dtype=maps[0].dtype)
    for m in maps:
        product = product * _minmax(F.interpolate(_minmax(m.clamp(min=0)), size=tuple(size),
                                                  mode=mode, align_corners=False))
    return _minmax(product)


def refine_layers(cap: Capture, model: nn.Module, cam_layer: str, layer: str | None) -> list[str]:
    """The layers RefineCAM multiplies for a map at ``layer`` (None: the image): the CAM layer,
    the outermost downsampling modules between them that do not contain the CAM layer, and
    ``layer``; deepest first."""
    position = {name: cap.position[calls[0].output] for name, calls in cap.calls.items()
                if len(calls) == 1 and calls[0].output is not None and calls[0].inputs}
    top = position[cam_layer]
    bottom = -1 if layer is None else position[layer]
    picked: list[str] = []
    for name, _ in model.named_modules():
        if name not in position or not bottom < position[name] < top \
                or cam_layer.startswith(f"{name}.") or name == cam_layer \
                or any(name.startswith(f"{p}.") for p in picked):
            continue
        call = cap.calls[name][0]
        image = cap.values[cap.image]  # token grids (Swin's N x h x w x C) as grids
        before, after = (as_grid(cap.values[n], image, cap.grids)
                         for n in (call.inputs[0], call.output))
        if before.dim() == after.dim() > 2 and after.shape[2:].numel() < before.shape[2:].numel():
            picked.append(name)
    chosen = [cam_layer, *sorted(picked, key=position.__getitem__, reverse=True)]
    if layer is not None and layer != cam_layer:
        chosen.append(layer)
    return list(dict.fromkeys(chosen))


def find_refine_layers(model: nn.Module, layer: str | None,
                       inputs: Tensor | None = None) -> list[str]:
    """:func:`refine_layers` for ``model`` (one forward pass on ``inputs``)."""
    module = unwrap(model)
    cap = record_example(module, inputs)
    return refine_layers(cap, module, cam_layer_in(cap, module),
                         None if layer is None else qualified_name(module, layer))
