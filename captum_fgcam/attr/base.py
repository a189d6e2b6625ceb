"""What every attribution class shares: Captum's bases, the layer argument, one signature.

Every class is built as ``Method(forward_func, layer, device_ids=None, *, options...)``, the
order of Captum's layer attributions, with its own options keyword-only; ``layer`` is a module
of the model or its dotted name (``"features.13"``). The classes on the propagation engine
(FG-CAM, LRP) also share one prologue: the model is checked, its wrappers looked through, the
layers resolved once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from captum.attr import GradientAttribution, LayerAttribution
from torch import nn

from ..propagation.capture import unwrap
from ..propagation.layers import LayerRef, Rules, require_module, resolve_module
from ..propagation.upsampler import FineGrainedUpsampler


def layer_module(forward_func: Callable[..., Any], layer: LayerRef) -> nn.Module:
    """The module ``layer`` refers to: a module as given (Captum's convention, any forward
    function), a dotted name looked up in the model (``forward_func`` an ``nn.Module`` then;
    ``DataParallel`` and ``torch.compile`` wrappers are looked through)."""
    if isinstance(layer, nn.Module):
        return layer
    if not isinstance(forward_func, nn.Module):
        raise TypeError(f"layer {layer!r} is a name, which needs the model as an nn.Module; "
                        f"got {type(forward_func).__name__}. Pass the module itself instead")
    return resolve_module(unwrap(forward_func), layer)


class LayerGradientAttribution(LayerAttribution, GradientAttribution):
    """A Captum layer attribution that runs the model with autograd or relevance rules."""

    def __init__(self, forward_func: Callable[..., Any], layer: LayerRef,
                 device_ids: list[int] | None = None) -> None:
        LayerAttribution.__init__(self, forward_func, layer_module(forward_func, layer),
                                  device_ids)
        GradientAttribution.__init__(self, forward_func)


class PropagatedAttribution(LayerGradientAttribution):
    """A map propagated by :class:`FineGrainedUpsampler` from ``start`` (None: the model's
    output) down to ``layer``; ``self.module`` is the model with its wrappers looked through
    (``device_ids``: accepted as in Captum, not needed since wrappers are looked through)."""

    def __init__(self, forward_func: nn.Module, layer: LayerRef, device_ids: list[int] | None,
                 start: LayerRef | None, rules: Rules, fold_batchnorm: bool) -> None:
        require_module(forward_func)
        self.module = unwrap(forward_func)
        require_module(self.module)
        super().__init__(forward_func, resolve_module(self.module, layer), device_ids)
        self.upsampler = FineGrainedUpsampler(forward_func, start, layer, rules, fold_batchnorm)
