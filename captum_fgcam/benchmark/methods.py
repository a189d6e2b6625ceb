"""The explanation methods the benchmark compares, by the names the paper's tables use.

Each method maps (images, targets) to one map per image at a layer: the plain CAMs at the
layer itself (Grad-CAM, Score-CAM, Layer-CAM, ReLU applied as in their papers), FG-CAM from
the model's CAM layer down to that layer, and the LRP family from the logits. The layer
``"input"`` means the image: attribution to the input of :func:`find_input_layer`'s module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from captum.attr import LayerGradCam
from torch import Tensor, nn

from ..attr import CLRP, LRP, SGLRP, FGGradCam, FGScoreCam, LayerCam, ScoreCam
from ..propagation import find_input_layer

INPUT = "input"

Explainer = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Method:
    """A named method; ``build(model, layer, to_input)`` returns its explainer."""

    name: str
    build: Callable[[nn.Module, str, bool, str], Explainer]
    at_input: bool  # whether it gives maps at the image
    at_layers: bool  # whether it gives maps at intermediate layers


Builder = Callable[[nn.Module, str, bool, str], Explainer]


def _plain(cls: type) -> Builder:
    def build(model: nn.Module, layer: str, to_input: bool, rules: str) -> Explainer:
        cam = cls(model, model.get_submodule(layer))
        return lambda x, t: cam.attribute(x, t, relu_attributions=True)
    return build


def _fine_grained(cls: type, denoise: bool) -> Builder:
    def build(model: nn.Module, layer: str, to_input: bool, rules: str) -> Explainer:
        fg = cls(model, layer, rules=rules)
        return lambda x, t: fg.attribute(x, t, attribute_to_layer_input=to_input,
                                         denoise=denoise)
    return build


def _lrp(cls: type) -> Builder:
    def build(model: nn.Module, layer: str, to_input: bool, rules: str) -> Explainer:
        lrp = cls(model, layer, rules=rules)
        return lambda x, t: lrp.attribute(x, t, attribute_to_layer_input=to_input)
    return build


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("Grad-CAM", _plain(LayerGradCam), at_input=False, at_layers=True),
    Method("FG-Grad-CAM", _fine_grained(FGGradCam, False), at_input=True, at_layers=True),
    Method("FG-Grad-CAM-D", _fine_grained(FGGradCam, True), at_input=True, at_layers=True),
    Method("Score-CAM", _plain(ScoreCam), at_input=False, at_layers=True),
    Method("FG-Score-CAM", _fine_grained(FGScoreCam, False), at_input=True, at_layers=True),
    Method("FG-Score-CAM-D", _fine_grained(FGScoreCam, True), at_input=True, at_layers=True),
    Method("Layer-CAM", _plain(LayerCam), at_input=False, at_layers=True),
    Method("LRP", _lrp(LRP), at_input=True, at_layers=False),
    Method("CLRP", _lrp(CLRP), at_input=True, at_layers=False),
    Method("SGLRP", _lrp(SGLRP), at_input=True, at_layers=False),
)}


def explainers(model: nn.Module, methods: Sequence[str], layers: Sequence[str],
               example: Tensor | None = None, rules: str = "conserving"
               ) -> dict[tuple[str, str], Explainer]:
    """One explainer per applicable (method, layer) pair, in table order (``example``: an
    input batch, to find the image layer on; ``rules``: FG-CAM's and LRP's rule preset)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    image_layer = find_input_layer(model, example) if INPUT in layers else ""
    out: dict[tuple[str, str], Explainer] = {}
    for layer in layers:
        to_input = layer == INPUT
        for name in methods:
            method = METHODS[name]
            if (method.at_input if to_input else method.at_layers):
                out[name, layer] = method.build(model, image_layer if to_input else layer,
                                                to_input, rules)
    return out
