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
the cosine distance). Both gradients come from one forward pass of the batch twice over,
[x; x] (BatchNorm in training mode, its running statistics left unchanged by this pass), whose
second half takes the guided rule at every ``nn.ReLU`` (forward hooks; each
``nn.Dropout`` draws one mask for both halves, so the two gradients belong to the same
network), and one backward pass. ReLUs written as functions (``torch.relu``) are not seen: the
loss refuses a model without ``nn.ReLU`` modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DISTANCES = ("cosine", "l1", "mse")


class _HalfGuidedReLU(torch.autograd.Function):
    """ReLU whose backward is standard on the first ``half`` rows and guided on the rest."""

    @staticmethod
    def forward(ctx, x: Tensor, half: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.half = half
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        open_ = (x > 0).to(grad.dtype)
        standard = grad[:ctx.half] * open_[:ctx.half]
        guided = grad[ctx.half:].clamp(min=0) * open_[ctx.half:]
        return torch.cat([standard, guided]), None


def _distance(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """Per-example distance between two gradients, shape (N,)."""
    a, b = a.flatten(1), b.flatten(1)
    if kind == "cosine":
        return 1 - F.cosine_similarity(a, b, dim=1, eps=1e-12)
    if kind == "l1":
        return (a - b).abs().mean(dim=1)
    return ((a - b) ** 2).mean(dim=1)


class InterpretableGradientLoss(nn.Module):
    """Cross-entropy plus the interpretable-gradient regulariser (module docstring).

    Args:
        model: the network being trained (its ``nn.ReLU`` modules take the guided rule in the
            regulariser's second half of the batch).
        weight: \\lambda (default 7.5e-3, the paper's for the cosine distance).
        distance: "cosine" (default), "l1" or "mse".
        subset: the regulariser uses the first ``subset`` images of each batch (an unbiased
            estimate of its batch mean, for a shuffled batch), default all (the paper's).

    ``loss(x, target)`` returns the total; ``loss.last`` holds the two terms of the last call.
    The classification term comes from an ordinary forward pass of ``x``; the regulariser from
    a second pass over [x_s; x_s] (6 to 7 times a plain training step's cost per image on a
    CPU: three passes over twice the images).
    """

    def __init__(self, model: nn.Module, weight: float = 7.5e-3, distance: str = "cosine",
                 subset: int | None = None) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}; got {distance!r}")
        if weight < 0:
            raise ValueError(f"weight must be >= 0; got {weight}")
        self.relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
        if not self.relus:
            raise ValueError("the model has no nn.ReLU modules for guided backpropagation; "
                             "write its ReLUs as nn.ReLU modules")
        self.dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
        self.norms = [m for m in model.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.model = model
        self.weight = weight
        self.distance = distance
        self.subset = subset
        self.last: dict[str, float] = {}

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        classification = F.cross_entropy(self.model(x), target)
        k = x.shape[0] if self.subset is None else min(self.subset, x.shape[0])
        with torch.enable_grad():  # the input gradients need autograd, also for evaluation
            regulariser = self.regulariser(x[:k], target[:k])
        self.last = {"classification": classification.item(),
                     "regulariser": regulariser.item()}
        return classification + self.weight * regulariser

    def regulariser(self, x: Tensor, target: Tensor) -> Tensor:
        """(1/n) sum_i d(g_i, g~_i) from one pass over [x; x] (BatchNorm running statistics
        are left as the classification pass set them)."""
        n = x.shape[0]
        both = torch.cat([x, x]).detach().requires_grad_(True)

        def guided(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            return _HalfGuidedReLU.apply(inputs[0], n)

        def same_dropout(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor
                         ) -> Tensor | None:
            if not module.training or module.p == 0:
                return None
            keep = torch.bernoulli(torch.full_like(inputs[0][:n], 1 - module.p))
            return inputs[0] * torch.cat([keep, keep]) / (1 - module.p)

        handles = [m.register_forward_hook(guided) for m in self.relus]
        handles += [m.register_forward_hook(same_dropout) for m in self.dropouts]
        momenta = {m: m.momentum for m in self.norms}
        for m in self.norms:
            m.momentum = 0.0  # running = 1 * running + 0 * batch: unchanged
        try:
            logits = self.model(both)
        finally:
            for h in handles:
                h.remove()
            for m, momentum in momenta.items():
                m.momentum = momentum
        chosen = logits.gather(1, torch.cat([target, target]).unsqueeze(1)).sum()
        (gradient,) = torch.autograd.grad(chosen, both, create_graph=True)
        return _distance(gradient[:n], gradient[n:].detach(), self.distance).mean()
