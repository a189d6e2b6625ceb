r"""LRP from the logits on the propagation engine: ``LRP``, ``CLRP`` and ``SGLRP``.

All three propagate initial relevances R0 at the model's output (the logits y) down to
``layer`` with the same rules as FG-CAM (default: the conserving preset), and work on
every architecture the engine supports. With R(R0) that propagation:

- LRP:   R0 = onehot_c * y_c;  map = R(R0). With a target object t (:mod:`..targets`),
  R0 = y * dt/dy, which sums to t(y) where t is linear in the scores (a class logit, several,
  a segmentation region, a regression output: Euler's theorem); any other target (a
  probability, a cosine similarity) is refused, as R0 would not sum to what is explained.
- CLRP (Gu, Yang, Tresp 2018):  map = R(R0_t) / sum R(R0_t) - R(R0_d) / sum R(R0_d), with the
  target R0_t = onehot_c * y_c and the dual either (``dual=1``, default) a virtual class whose
  output-layer weights are the target's negated (R0_d = onehot_c, propagated through the
  negated weights; its scale cancels in the normalisation), or (``dual=2``) every other class,
  R0_d[n != c] = y_c / (N - 1).
- SGLRP (Iwana et al. 2019): with p = softmax(y), R0_t = onehot_c * p_c (1 - p_c),
  R0_d[n != c] = p_c p_n;  map = R(R0_t) - R(R0_d) * (sum R(R0_t) / sum R(R0_d)).

Sums are per example; a zero sum gives a zero term.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.log import log_usage
from torch import Tensor, nn

from .._batching import each, finished
from .._state import preserved_state
from ..arguments import TargetType, input_tuple
from ..propagation.capture import refuse_non_finite, where_non_finite
from ..propagation.core import safe_divide
from ..propagation.layers import LayerRef, Rules, producing_module, resolve_module
from ..propagation.views import NegatedRows
from ..targets import Target, scores_of, with_scores
from .base import PropagatedAttribution
from .validation import as_target, check_inputs, check_target, explained_scores


def _per_example_sum(r: Tensor | tuple[Tensor, ...]) -> Tensor:
    """sum_i R_i per example, shape (N,), over all tensors of a tuple."""
    parts = r if isinstance(r, tuple) else (r,)
    return sum(p.reshape(p.shape[0], -1).sum(dim=1) for p in parts)


def _column(s: Tensor, like: Tensor) -> Tensor:
    return s.reshape(-1, *([1] * (like.dim() - 1)))


def _one_hot(logits: Tensor, target: TargetType) -> Tensor:
    n, classes = logits.shape[0], logits.shape[1]
    index = torch.as_tensor(target, device=logits.device).reshape(-1).expand(n)
    return torch.nn.functional.one_hot(index, classes).to(logits.dtype)


class LRP(PropagatedAttribution):
    r"""LRP started at the logits with R0 = onehot_c y_c, to any layer or the input (a
    ``GradientAttribution`` as Captum's ``LRP``, and a ``LayerAttribution`` at ``layer``).

    Args:
        forward_func: the model (``nn.Module``).
        layer: where relevance is returned (module or dotted name: its output, or input with
            ``attribute_to_layer_input=True``; the first convolution's input is the image).
        device_ids: as in Captum (not needed: wrappers are looked through).
        rules: as for :class:`~captum_fgcam.FineGrainedUpsampler` (default: the conserving
            preset).
        output_layer: the module producing the logits (module or dotted name; found
            automatically).
        fold_batchnorm: fold BatchNorm into the preceding layer (Zennit's convention).
    """

    def __init__(self, forward_func: nn.Module, layer: LayerRef,
                 device_ids: list[int] | None = None, *, rules: Rules = None,
                 output_layer: LayerRef | None = None, fold_batchnorm: bool = False) -> None:
        super().__init__(forward_func, layer, device_ids, output_layer, rules, fold_batchnorm)
        self.output_layer = (None if output_layer is None
                             else resolve_module(self.module, output_layer))

    def initial_relevances(self, logits: Tensor, target: TargetType) -> list[Tensor]:
        """R0 for each propagation this method needs (here one: onehot_c * y_c)."""
        return [_one_hot(logits, target) * logits]

    def object_relevance(self, target: Target, output: Any, logits: Tensor, n: int,
                         locate: Callable[[], str]) -> Tensor:
        """R0 = y * dt/dy for a target object t, refused unless it sums to t(y) per example
        (t linear in the scores y)."""
        if type(self) is not LRP:
            raise TypeError(f"{type(self).__name__} contrasts one class with the others: pass "
                            "a class index (LRP and FG-CAM take target objects)")
        y = logits.detach().requires_grad_(True)
        with torch.enable_grad():
            t = explained_scores(with_scores(output, y), target, n, locate)
            (grad,) = torch.autograd.grad(t.sum(), y, allow_unused=True)
        r0 = y.detach() * (torch.zeros_like(y) if grad is None else grad)
        total, t = r0.flatten(1).sum(dim=1), t.detach()
        if not torch.allclose(total, t, rtol=1e-4, atol=1e-5 * float(y.detach().abs().max())):
            raise ValueError(
                f"LRP starts from R0 = y * dt/dy, which sums to {total.tolist()[:3]} for the "
                f"target {target!r}, not to its scores {t.tolist()[:3]}: the target is not "
                "linear in the model's scores (a probability, a cosine similarity). Explain "
                "it with FG-CAM, or with LRP a linear target (ClassLogit, MultiLabel, "
                "SegmentationRegion, Regression)")
        return r0

    def combine(self, maps: list[Tensor | tuple[Tensor, ...]]) -> Tensor | tuple[Tensor, ...]:
        return maps[0]

    def views(self, target: TargetType, logits: Tensor, output_layer: str | None
              ) -> list[dict[str, Any]]:
        """Per propagation, the layers rules see differently (none for plain LRP)."""
        return [{} for _ in self.initial_relevances(logits, target)]

    @log_usage()
    def attribute(self, inputs: Tensor | tuple[Tensor, ...], target: TargetType = None,
                  additional_forward_args: Any = None, attribute_to_layer_input: bool = False,
                  relu_attributions: bool = False, attr_dim_summation: bool = True
                  ) -> Tensor | tuple[Tensor, ...]:
        """Captum's conventions; returns signed relevance (N x 1 x ... when summed), a tuple
        for a layer input of several tensors."""
        inputs = check_inputs(self.module, input_tuple(inputs))
        n = inputs[0].shape[0]
        target = as_target(target, n, self.module)
        up = self.upsampler
        with preserved_state(self.module):
            cap = up.capture(inputs, additional_forward_args)
            scores = scores_of(cap.output, strict=False)
            if scores is None:
                raise TypeError(
                    f"{type(self).__name__} starts at the model's score tensor, and "
                    f"{type(self.module).__name__} returned {type(cap.output).__name__} "
                    "(a detector's detections): explain it with FG-CAM and a Detection target")
            locate = lambda: where_non_finite(cap, self.module)  # noqa: E731
            refuse_non_finite(scores, "the model's scores", locate)
            span = up.span(cap, attribute_to_layer_input)
            logits = span.activation()
            if isinstance(target, Target):
                starts = [self.object_relevance(target, cap.output, logits, n, locate)]
            else:
                check_target(target, n, logits)
                starts = self.initial_relevances(logits, target)
            output_layer = up.from_name or producing_module(cap, span.start)
            views = [{}] if isinstance(target, Target) else self.views(target, logits,
                                                                       output_layer)
            maps = [up.propagate(span.substituted(v), r0)
                    for r0, v in zip(starts, views, strict=True)]
        relevance = self.combine(maps)
        return each(lambda r: finished(r, attr_dim_summation, relu_attributions), relevance)


class CLRP(LRP):
    """Contrastive LRP; ``dual=1`` (virtual class, default) or ``dual=2`` (other classes)."""

    def __init__(self, forward_func: nn.Module, layer: LayerRef,
                 device_ids: list[int] | None = None, *, rules: Rules = None,
                 output_layer: LayerRef | None = None, fold_batchnorm: bool = False,
                 dual: int = 1) -> None:
        if dual not in (1, 2):
            raise ValueError(f"dual must be 1 (virtual class) or 2 (other classes); got {dual}")
        super().__init__(forward_func, layer, device_ids, rules=rules,
                         output_layer=output_layer, fold_batchnorm=fold_batchnorm)
        if dual == 1 and self.output_layer is not None \
                and not isinstance(self.output_layer, nn.Linear):
            raise TypeError("CLRP's first dual negates the output layer's weights, which must "
                            "be nn.Linear; use dual=2")
        self.dual = dual

    def initial_relevances(self, logits: Tensor, target: TargetType) -> list[Tensor]:
        onehot = _one_hot(logits, target)
        score = (onehot * logits).sum(dim=1, keepdim=True)
        if self.dual == 1:
            return [onehot * score, onehot]
        return [onehot * score, (1 - onehot) * score / (logits.shape[1] - 1)]

    def views(self, target: TargetType, logits: Tensor, output_layer: str | None
              ) -> list[dict[str, Any]]:
        if self.dual == 2:
            return [{}, {}]
        layer = self.module.get_submodule(output_layer) if output_layer is not None else None
        if not isinstance(layer, nn.Linear):
            raise TypeError("CLRP's first dual negates the output layer's weights, which must "
                            "be one nn.Linear producing the logits; use dual=2")
        classes = _one_hot(logits, target).argmax(dim=1).unique()
        return [{}, {output_layer: NegatedRows(layer, classes)}]

    def combine(self, maps: list[Tensor | tuple[Tensor, ...]]) -> Tensor | tuple[Tensor, ...]:
        target, dual = maps
        st, sd = _per_example_sum(target), _per_example_sum(dual)
        return each(lambda t, d: safe_divide(t, _column(st, t)) - safe_divide(d, _column(sd, d)),
                    target, dual)


class SGLRP(LRP):
    """Softmax-gradient LRP."""

    def initial_relevances(self, logits: Tensor, target: TargetType) -> list[Tensor]:
        onehot = _one_hot(logits, target)
        p = logits.softmax(dim=1)
        p_c = (onehot * p).sum(dim=1, keepdim=True)
        return [onehot * p_c * (1 - p_c), (1 - onehot) * p_c * p]

    def combine(self, maps: list[Tensor | tuple[Tensor, ...]]) -> Tensor | tuple[Tensor, ...]:
        target, dual = maps
        ratio = safe_divide(_per_example_sum(target), _per_example_sum(dual))
        return each(lambda t, d: t - d * _column(ratio, d), target, dual)
