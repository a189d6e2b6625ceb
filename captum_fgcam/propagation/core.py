r"""What every rule is written against: one recorded operation (:class:`Call`), the
:class:`Rule` interface, and the two numerical tools rules share.

A rule is linear in the relevance R once the forward values are fixed, so a whole tensor of
per-channel components (or a batch) moves through in one call. Rules use the "gradient
trick": for z = f(x), the vector-Jacobian product J_f(x)^T s is one backward pass of f
(:func:`vector_jacobian`), which for a convolution is a transposed convolution.
"""

from __future__ import annotations

import functools
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

Op = Any  # an nn.Module, a function, a method name, or a view (:mod:`.views`)


@dataclass
class Call:
    """One recorded operation: what ran (``op``) on which arguments, with the graph facts a
    rule may need.

    ``args`` are the positional arguments as the operation received them (tensors or
    constants; a list argument such as ``torch.cat``'s stays a list). ``inputs`` flattens them
    one level: rules return one relevance (or None) per entry of ``inputs``.
    """

    op: Op
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: per entry of ``inputs``: whether it is an activation that receives relevance (False:
    #: a constant, such as attention weights or a gate); None: every tensor is
    live: tuple[bool, ...] | None = None
    #: which elements of the first input exist (False: zero padding the model added in front
    #: of this operation, or around the image before its first layer); None: all do
    valid: Tensor | None = None
    #: the module this call ran inside (the innermost one; None for the model's own forward)
    scope: nn.Module | None = None
    #: the rule map's rule for another operation (a module or function), for rules that
    #: decompose a fused operation into ordinary ones
    rule_for: Callable[[Any], Rule] | None = None

    @property
    def inputs(self) -> list[Any]:
        flat: list[Any] = []
        for arg in self.args:
            flat.extend(arg if isinstance(arg, (list, tuple)) else [arg])
        return flat

    @property
    def x(self) -> Tensor:
        return self.inputs[0]

    def run(self, inputs: list[Any]) -> Any:
        """The operation on ``inputs`` (flat, as :attr:`inputs`), without module hooks."""
        it = iter(inputs)
        args = [type(a)(next(it) for _ in a) if isinstance(a, (list, tuple)) else next(it)
                for a in self.args]
        op = self.op
        if isinstance(op, nn.Module):
            return type(op).forward(op, *args, **self.kwargs)
        if isinstance(op, str):
            return getattr(args[0], op)(*args[1:], **self.kwargs)
        return op(*args, **self.kwargs)

    def tensor_positions(self) -> list[int]:
        """Positions of the floating-point tensors among :attr:`inputs` (integer and boolean
        tensors, indices and masks, stay fixed like constants: they hold no relevance)."""
        return [i for i, v in enumerate(self.inputs)
                if isinstance(v, Tensor) and (v.is_floating_point() or v.is_complex())]

    def live_positions(self) -> list[int]:
        """Positions of the activations among :attr:`inputs`."""
        if self.live is None:
            return self.tensor_positions()
        return [i for i, v in enumerate(self.inputs) if isinstance(v, Tensor) and self.live[i]]

    def tensor_function(self) -> Callable[..., Tensor]:
        """The operation as a function of its tensor inputs (in order), the rest fixed."""
        inputs, positions = self.inputs, self.tensor_positions()

        def fn(*tensors: Tensor) -> Tensor:
            new = list(inputs)
            for p, t in zip(positions, tensors, strict=True):
                new[p] = t
            return self.run(new)

        return fn

    def function(self) -> Callable[[Tensor], Tensor]:
        """The operation as a function of its first input, everything else fixed."""
        inputs = self.inputs
        return lambda x: self.run([x] + inputs[1:])

    def to_inputs(self, relevances: list[Tensor]) -> list[Tensor | None]:
        """Place one relevance per tensor input at its position in :attr:`inputs`."""
        out: list[Tensor | None] = [None] * len(self.inputs)
        for p, r in zip(self.tensor_positions(), relevances, strict=True):
            out[p] = r
        return out

    def to_first_input(self, relevance: Tensor) -> list[Tensor | None]:
        """Relevance for the first input; None for the other arguments."""
        return [relevance] + [None] * (len(self.inputs) - 1)


class Rule(ABC):
    """How relevance crosses one operation: R_in = rule(R_out). Subclasses implement
    :meth:`propagate`."""

    #: False for rules whose equation reads only the shapes of an operation's inputs (then
    #: an in-place operation need not keep a copy of the value it overwrites)
    reads_values: bool = True

    @abstractmethod
    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        """Relevance for each of ``call.inputs`` (None for non-tensor inputs)."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def safe_divide(numerator: Tensor, denominator: Tensor, out: Tensor | None = None) -> Tensor:
    """numerator / denominator, and 0 where the denominator is exactly 0.

    (Division by 0 gives +-inf or NaN exactly there, which are then replaced by 0.) With
    ``out`` (e.g. ``out=denominator`` when the denominator is not needed afterwards) the
    quotient is written there instead of into new memory.
    """
    return torch.div(numerator, denominator, out=out).nan_to_num_(nan=0.0, posinf=0.0,
                                                                   neginf=0.0)


def stabilise(z: Tensor, epsilon: float) -> Tensor:
    """z + epsilon sign(z) with sign(0) = 1 (Captum's and Zennit's convention)."""
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def vector_jacobian(fn: Callable[..., Tensor], inputs: list[Tensor],
                    scale: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """Run z = fn(*inputs), then return J^T s for s = scale(z), one tensor per input."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in inputs]
        z = fn(*leaves)
        s = scale(tuple(t.detach() for t in z) if isinstance(z, tuple) else z.detach())
        if isinstance(z, tuple):  # several outputs (sort, topk): those autograd follows
            pairs = [(o, r) for o, r in zip(z, s, strict=True)
                     if isinstance(o, Tensor) and o.requires_grad]
            z, s = tuple(o for o, _ in pairs), tuple(r for _, r in pairs)
        # an input the output does not depend on (``expand_as``'s shape donor) gets zeros
        return list(torch.autograd.grad(z, leaves, s, allow_unused=True,
                                        materialize_grads=True))


def total(terms: Iterable[Tensor]) -> Tensor:
    """Sum of tensors without Python's ``0 +`` start (which costs a full copy)."""
    return functools.reduce(operator.add, terms)
