"""Captum's LRP and ours: Captum's rule objects accepted in our rule maps, and our z^B rule
usable inside Captum's ``LRP``.

Captum exports no public interface for LRP rules, so this module is the package's one import
of a private Captum module (``captum.attr._utils.lrp_rules``).
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr._utils import lrp_rules as captum_rules
from torch import Tensor, nn

from .core import Rule, safe_divide, total
from .kernels import linear_terms
from .views import linear_layer


class CaptumLinearTerms(captum_rules.PropagationRule):
    r"""Captum's ``PropagationRule`` protocol for a rule written as linear terms,
    R_i = \sum_k x^k_i \sum_j w^k_ij R_j / z_j (:func:`~.kernels.linear_terms`), given by
    the rule's ``terms(module, x) -> (xs, weights)``.

    Captum passes relevance backwards as gradients: at the output we turn R into s = R / z;
    autograd then computes w^T s at the input, where the rule's terms replace it.
    """

    def terms(self, module: nn.Module, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        raise NotImplementedError

    def _manipulate_weights(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        """The terms use the module's own weights: nothing to change."""

    def forward_hook(self, module: nn.Module, inputs: Any, outputs: Tensor) -> Tensor:
        """Called by Captum's LRP during its propagation forward pass."""
        x = inputs[0].data
        xs, weights = self.terms(module, x)
        f = linear_layer(module)
        with torch.no_grad():
            z = total(f(a, w, None) for a, w in zip(xs, weights, strict=True))
        state: dict[str, Tensor] = {}
        # Captum keeps these as class attributes shared by all rules; ours are per instance.
        self.relevance_input = self.__dict__.setdefault("relevance_input", {})
        self.relevance_output = self.__dict__.setdefault("relevance_output", {})

        def output_hook(grad: Tensor) -> Tensor:
            self.relevance_output[grad.device] = grad.data
            state["relevance"] = grad
            return safe_divide(grad, z)

        def input_hook(grad: Tensor) -> Tensor:
            relevance = linear_terms(module, xs, weights, state["relevance"])
            self.relevance_input[grad.device] = relevance.data
            grad.replace_out = relevance  # read by Captum's activation hooks
            return relevance

        self._has_single_input = True
        self._handle_input_hooks = [inputs[0].register_hook(input_hook)]
        inputs[0].hook_registered = True
        self._handle_output_hook = outputs.register_hook(output_hook)
        return outputs.clone()


def from_captum(rule: captum_rules.PropagationRule | Rule) -> Rule:
    """Our equivalent of one of Captum's LRP rule objects (same equations, same stabiliser)."""
    from . import rules

    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, captum_rules.IdentityRule):
        return rules.PassRule()
    if isinstance(rule, captum_rules.EpsilonRule):
        return rules.EpsilonRule(rule.STABILITY_FACTOR)
    if isinstance(rule, captum_rules.GammaRule):
        return rules.GammaRule(rule.gamma, rule.set_bias_to_zero)
    if isinstance(rule, captum_rules.Alpha1_Beta0_Rule):
        return rules.AlphaOneBetaZeroRule(rule.set_bias_to_zero)
    raise TypeError(
        f"unsupported Captum rule {type(rule).__name__}: pass EpsilonRule, GammaRule, "
        "Alpha1_Beta0_Rule, IdentityRule, or a captum_fgcam.propagation Rule")
