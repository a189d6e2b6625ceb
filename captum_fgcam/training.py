r"""Interpretable-gradient training (Figueroa et al., "A Learning Paradigm for Interpretable
Gradients", VISAPP 2024): a regulariser that makes the ordinary input gradient resemble the
guided-backpropagation gradient.

For a batch (x_i, t_i), with g_i = \partial f_{t_i}(x_i) / \partial x_i the standard input
gradient of the true class's logit (kept in the autograd graph: the regulariser is trained
through it, double backpropagation) and \tilde g_i the same gradient with guided
backpropagation (at every ReLU the gradient is passed only where it and the input are positive;
a constant target, no gradient flows into it):

    L = CE(f(X), T) + \lambda \frac{1}{n} \sum_i d(g_i, \tilde g_i)

with d the cosine distance 1 - <g, \tilde g> / (|g| |\tilde g|) by default (the paper's best;
"l1" and "mse" are the alternatives it compared) and \lambda = 7.5e-3 (the paper's weight for
the cosine distance).

Both gradients are two backward passes through the graph of one forward pass, the
classification pass itself (with ``subset``: one more pass over the first images, which leaves
no trace). Every ReLU the model runs, however it is written (``nn.ReLU``, ``F.relu``,
``torch.relu``, ``x.relu_()``, ``nn.ReLU6`` / ``F.relu6``, ``F.hardtanh`` with a lower bound of
0), is swapped during the pass (a ``TorchFunctionMode``) for the same clamp whose backward takes
the standard rule in the first backward pass and the guided one in the second, so both gradients
see the same BatchNorm statistics and dropout masks. Other activations (GELU, SiLU, sigmoid
gates, ...) have no guided rule and pass the standard gradient, as in Captum's
``GuidedBackprop``; a model that runs no ReLU is refused (its regulariser would be 0).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .metrics import check_scores

DISTANCES = ("cosine", "l1", "mse")

# every spelling of a ReLU: its positional argument names and defaults (clamp to [min_val,
# max_val]; a ReLU when min_val is 0)
_RELUS: dict[Any, tuple[tuple[str, ...], dict[str, Any]]] = {
    F.relu: (("input", "inplace"), {}),
    torch.relu: (("input",), {}),
    Tensor.relu: (("input",), {}),
    torch.relu_: (("input",), {"inplace": True}),
    Tensor.relu_: (("input",), {"inplace": True}),
    F.relu6: (("input", "inplace"), {"max_val": 6.0}),
    F.hardtanh: (("input", "min_val", "max_val", "inplace"), {"min_val": -1.0, "max_val": 1.0}),
    F.hardtanh_: (("input", "min_val", "max_val"),
                  {"min_val": -1.0, "max_val": 1.0, "inplace": True}),
}


class _Rule:
    """The backward rule the ReLUs of a pass take now: standard, or guided while ``guided``."""

    guided = False


class _ReLU(torch.autograd.Function):
    """y = clamp(x, low, high); dx = dy where low < y < high (guided rule: and dy > 0), else 0."""

    @staticmethod
    def forward(ctx, x: Tensor, low: float, high: float | None, in_place: bool,  # type: ignore[override]
                rule: _Rule) -> Tensor:
        y = x.clamp_(low, high) if in_place else x.clamp(low, high)
        if in_place:
            ctx.mark_dirty(x)
        ctx.save_for_backward(y)
        ctx.low, ctx.high, ctx.rule = low, high, rule
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        open_ = y > ctx.low
        if ctx.high is not None:
            open_ &= y < ctx.high
        if ctx.rule.guided:
            open_ &= grad > 0
        return torch.where(open_, grad, 0), None, None, None, None


class _SwitchableReLUs(TorchFunctionMode):
    """While active, every ReLU call (any spelling in ``_RELUS``) runs as :class:`_ReLU` under
    ``rule``; ``count`` counts them."""

    def __init__(self, rule: _Rule) -> None:
        super().__init__()
        self.rule = rule
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        spelling = _RELUS.get(func)
        if spelling is not None:
            names, defaults = spelling
            a = {"min_val": 0.0, "max_val": None, "inplace": False, **defaults,
                 **dict(zip(names, args, strict=False)), **kwargs}
            if a["min_val"] == 0:
                self.count += 1
                return _ReLU.apply(a["input"], 0.0, a["max_val"], a["inplace"], self.rule)
        return func(*args, **kwargs)


class _Trace:
    """The model's buffers and the random generators' states before a pass, to put back."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.buffers = [(b, b.clone()) for b in model.buffers()]
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, saved in self.buffers:
                buffer.data.copy_(saved)  # .data: no version bump for the saved graph
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def _distance(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """Per-example distance between two gradients, shape (N,)."""
    a, b = a.flatten(1), b.flatten(1)
    if kind == "cosine":
        return 1 - F.cosine_similarity(a, b, dim=1, eps=1e-12)
    if kind == "l1":
        return (a - b).abs().mean(dim=1)
    return ((a - b) ** 2).mean(dim=1)


def _is_integer(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


class InterpretableGradientLoss(nn.Module):
    """Cross-entropy plus the interpretable-gradient regulariser (module docstring).

    Args:
        model: the network being trained; it must run at least one ReLU (any spelling).
        weight: \\lambda >= 0 (default 7.5e-3, the paper's for the cosine distance).
        distance: "cosine" (default), "l1" or "mse".
        subset: the regulariser uses the first ``subset`` images of each batch (an unbiased
            estimate of its batch mean, for a shuffled batch), default all (the paper's).

    ``loss(x, target)`` (x: a finite floating-point batch (N, ...), target: N class indices)
    returns the total; ``loss.last`` holds the two terms of the last call. The classification
    term is exactly ``F.cross_entropy(model(x), target)`` of one plain training step, and the
    call leaves the model's buffers (BatchNorm's running statistics, ``num_batches_tracked``) and
    the random generators (dropout) exactly as that step does. With ``subset`` smaller than the
    batch the regulariser runs one more pass over the first ``subset`` images (BatchNorm
    normalising with their batch statistics), whose buffer updates and random draws are undone.
    Under ``torch.no_grad()`` (evaluation) the total is returned without a graph. A step costs
    about 4x a plain one with the whole batch, 2x with ``subset`` an eighth of it (VGG16-bn,
    CPU). Mistakes are refused with a ValueError / TypeError naming the fix before any work; a
    model that runs no ReLU is found in the first pass and refused with the model's buffers and
    the generators put back.
    """

    def __init__(self, model: nn.Module, weight: float = 7.5e-3, distance: str = "cosine",
                 subset: int | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
        if not isinstance(weight, Real) or isinstance(weight, bool) or not math.isfinite(weight) \
                or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0 (the paper's: 7.5e-3); "
                             f"got {weight!r}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}; got {distance!r}")
        if subset is not None and (not _is_integer(subset) or subset < 1):
            raise ValueError("subset must be None (the whole batch) or a number of images >= 1;"
                             f" got {subset!r}")
        self.model = model
        self.weight = float(weight)
        self.distance = distance
        self.subset = subset
        self.last: dict[str, float] = {}

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        self._check(x, target)
        n = x.shape[0]
        k = n if self.subset is None else min(self.subset, n)
        rule = _Rule()
        with torch.enable_grad():  # the input gradients need autograd, also for evaluation
            inputs = x if x.requires_grad else x.detach().requires_grad_(True)
            logits = self._run(inputs, target, rule, undo=False)
            classification = F.cross_entropy(logits, target)
            if k < n:
                inputs = x[:k].detach().requires_grad_(True)
                logits = self._run(inputs, target[:k], rule, undo=True)
            regulariser = self._regulariser(logits, inputs, target[:k], rule)
            total = classification + self.weight * regulariser
        self.last = {"classification": classification.item(),
                     "regulariser": regulariser.item()}
        return total if torch.is_grad_enabled() else total.detach()

    def _check(self, x: Tensor, target: Tensor) -> None:
        """Refuse what cannot give a meaningful loss, before any work."""
        if torch.is_inference_mode_enabled():
            raise ValueError("the loss needs autograd (input gradients): call it outside "
                             "torch.inference_mode() (torch.no_grad() is fine)")
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor (N, ...); got {type(x).__name__}: "
                            "convert it with torch.as_tensor")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor; got {x.dtype}: convert it "
                            "(e.g. x.float() / 255)")
        if x.is_inference():
            raise ValueError("x was made under torch.inference_mode(); clone it outside it "
                             "(x.clone())")
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty batch (N, ...); got shape {tuple(x.shape)}"
                             " (one image: x.unsqueeze(0))")
        if not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x.flatten(1))).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(f"x holds NaN or Inf (images {bad}); drop or repair them")
        parameter = next(self.model.parameters(), None)
        if parameter is not None and parameter.device != x.device:
            raise ValueError(f"x is on {x.device}, the model on {parameter.device}: "
                             f"x.to({str(parameter.device)!r})")
        if parameter is not None and parameter.is_floating_point() \
                and parameter.dtype != x.dtype:
            raise ValueError(f"x is {x.dtype}, the model {parameter.dtype}: "
                             f"x.to({parameter.dtype})")
        if not isinstance(target, Tensor) or target.dtype == torch.bool \
                or target.is_floating_point() or target.is_complex():
            raise TypeError("target must be an integer tensor of class indices, one per image; "
                            f"got {getattr(target, 'dtype', type(target).__name__)} (soft labels "
                            "or probabilities: target.argmax(1); a list: torch.tensor(target))")
        if tuple(target.shape) != (x.shape[0],):
            raise ValueError(f"target must have shape ({x.shape[0]},), one class per image; "
                             f"got {tuple(target.shape)}")
        if target.device != x.device:
            raise ValueError(f"target is on {target.device}, x on {x.device}: "
                             f"target.to({str(x.device)!r})")

    def _run(self, inputs: Tensor, target: Tensor, rule: _Rule, undo: bool) -> Tensor:
        """The model's logits on ``inputs`` with switchable ReLUs. Its buffers and the random
        generators are put back if ``undo`` or if the pass is refused."""
        trace = _Trace(self.model, inputs.device)
        relus = _SwitchableReLUs(rule)
        try:
            with relus:
                logits = self.model(inputs)
            if relus.count == 0:
                raise ValueError("the model runs no ReLU (nn.ReLU, F.relu, torch.relu, ReLU6): "
                                 "guided backpropagation changes only ReLUs' gradients, so the "
                                 "regulariser would be 0; use ReLU activations or train with "
                                 "plain cross-entropy")
            check_scores(logits, target, "the model")
        except BaseException:
            trace.restore()
            raise
        if undo:
            trace.restore()
        return logits

    def _regulariser(self, logits: Tensor, inputs: Tensor, target: Tensor, rule: _Rule
                     ) -> Tensor:
        """(1/n) sum_i d(g_i, g~_i): the standard gradient (kept in the graph), then the guided
        one (a constant), both backward passes through the graph of ``logits``."""
        chosen = logits.gather(1, target.unsqueeze(1)).sum()
        (standard,) = torch.autograd.grad(chosen, inputs, create_graph=True)
        rule.guided = True
        try:
            (guided,) = torch.autograd.grad(chosen, inputs, retain_graph=True)
        finally:
            rule.guided = False
        return _distance(standard, guided, self.distance).mean()
