r"""Attention and other products of activations: which operands receive relevance, and how.

FG-CAM follows CP-LRP (Ali et al. 2022, "XAI for Transformers: Better Explanations through
Conservative Propagation"): in  y = softmax(q k^T / \sqrt{d} + B + M) v  the attention weights
A = softmax(...) are treated as constants, so y = A v is linear in the values v and relevance
flows through the value path only. The query / key path, the relative position bias B and the
mask M then receive none (they only decide A), and softmax needs no rule of its own. AttnLRP
(Achtibat et al. 2024) keeps this value-path rule and adds one for the query / key path; we do
not propagate through it.

- :class:`ProductRule`: ``matmul`` / ``bmm`` / ``einsum`` of an activation with constants
  (attention weights, parameters), and of two activations (AttnLRP's uniform rule).
- :class:`AttentionRule`: the fused kernels ``F.scaled_dot_product_attention`` and
  ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``), decomposed into their value
  path of ordinary operations: value projection, A v (A constant), output projection, each
  crossed with the rule the rule map gives that operation.
Which operands are constant (attention weights, queries and keys) is a graph fact
(:func:`.graph.relevance_inputs`); the rules here see it as ``Call.live``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .core import Call, Rule, safe_divide, vector_jacobian
from .views import FunctionalLinear


def _split(t: Tensor) -> tuple[Tensor, Tensor]:
    return t.clamp(min=0), t.clamp(max=0)


class ProductRule(Rule):
    r"""Products of tensors: ``matmul``, ``bmm``, ``einsum``.

    One activation x among the operands, a constant W (attention weights, a parameter): y is
    linear in x with contributions c_ij = x_i W_ij, and the sign-aware z-rule gives

        R_i = \sum_j c_ij^{s_j} R_j / z_j^{s_j},   s_j = sign(y_j),
        z_j^+ = \sum_i (x^+ W^+ + x^- W^-)_ij,   z_j^- = \sum_i (x^+ W^- + x^- W^+)_ij ,

    which conserves relevance wherever a contribution is non-zero (where y_j = 0 by
    cancellation, half of R_j goes to each sign; where every c_ij = 0, R_j is dropped). With
    attention weights W = A >= 0 this is the sign-aware z-rule of a sum with non-negative
    weights, as for residual additions.

    Two activations a, b (y_j = \sum_k a_k b_k): AttnLRP's uniform rule, the z-rule on the
    terms a_k b_k with half of each term's relevance to each factor,
    R_a = 1/2 a \odot J_a^T (R / y),  R_b = 1/2 b \odot J_b^T (R / y)  (0 where y = 0).
    """

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        positions = call.tensor_positions()
        live = call.live_positions()
        tensors = [call.inputs[p] for p in positions]
        fn = call.tensor_function()
        if len(live) == 2:
            grads = vector_jacobian(fn, tensors, lambda z: safe_divide(relevance, z))
            return call.to_inputs([0.5 * t * g for t, g in zip(tensors, grads, strict=True)])
        if len(live) != 1 or len(tensors) != 2:
            raise ValueError(f"{ops.op_name(call.op)} of {len(tensors)} tensors with "
                             f"{len(live)} activations has no rule; register one")
        i = positions.index(live[0])
        x, w = tensors[i], tensors[1 - i]

        def of_x(weight: Tensor) -> Callable[[Tensor], Tensor]:
            return lambda a: fn(*((a, weight) if i == 0 else (weight, a)))

        (xp, xn), (wp, wn) = _split(x), _split(w)
        signed = bool((w < 0).any())
        with torch.no_grad():
            z_pos = of_x(wp)(xp) + (of_x(wn)(xn) if signed else 0)
            z_neg = of_x(wp)(xn) + (of_x(wn)(xp) if signed else 0)
            y = z_pos + z_neg
            half = torch.where(y == 0, 0.5, 1.0)
            s_pos = safe_divide(torch.where(y >= 0, relevance * half, 0.0), z_pos)
            s_neg = safe_divide(torch.where(y <= 0, relevance * half, 0.0), z_neg)

        def back(weight: Tensor, s: Tensor) -> Tensor:
            return vector_jacobian(of_x(weight), [x], lambda _: s)[0]

        r = xp * back(wp, s_pos) + xn * back(wp, s_neg)
        if signed:
            r = r + xn * back(wn, s_pos) + xp * back(wn, s_neg)
        out: list[Tensor | None] = [None] * len(call.inputs)
        out[live[0]] = r
        return out


_MHA = inspect.signature(F.multi_head_attention_forward)
_SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None,
                  "enable_gqa": False}


def sdpa_weights(q: Tensor, k: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False,
                 scale: float | None = None, enable_gqa: bool = False) -> Tensor:
    r"""A = softmax(q k^T * scale + mask), as ``F.scaled_dot_product_attention`` computes it
    (scale 1 / \sqrt{d} by default; boolean masks keep True; causal: lower triangle)."""
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        scores = (scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                  else scores + attn_mask)
    return scores.softmax(dim=-1)


class AttentionRule(Rule):
    r"""Fused attention, through its value path (module docstring):

    ``F.scaled_dot_product_attention(q, k, v)``: y = A v with A = softmax(q k^T s + M) a
    constant; :class:`ProductRule` gives R_v (q and k receive none).

    ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``):
    y = W_o concat_h(A_h (x_v W_v^T + b_v)_h) + b_o; relevance crosses the output projection
    and the value projection with the rule the rule map gives the module's ``out_proj`` (an
    ``nn.Linear``; ``F.linear``'s rule when called outside ``nn.MultiheadAttention``), and
    A_h v_h with :class:`ProductRule`; only the ``value`` input receives relevance.
    """

    def propagate(self, call: Call, relevance: Tensor) -> list[Tensor | None]:
        if isinstance(relevance, tuple):  # (output, attention weights): the output's share
            relevance = relevance[0]
        if ops.op_name(call.op) == "multi_head_attention_forward":
            r_value = self._multi_head(call, relevance)
        else:
            r_value = self._scaled_dot_product(call, relevance)
        out: list[Tensor | None] = [None] * len(call.inputs)
        out[2] = r_value
        return out

    @staticmethod
    def _scaled_dot_product(call: Call, relevance: Tensor) -> Tensor:
        if len(call.args) < 3:
            raise ValueError("scaled_dot_product_attention: pass query, key and value "
                             "positionally for FG-CAM to follow the value path")
        q, k, v = call.args[:3]
        options = {**_SDPA_DEFAULTS, **dict(zip(_SDPA_DEFAULTS, call.args[3:], strict=False)),
                   **call.kwargs}
        options.pop("dropout_p")
        weights = sdpa_weights(q, k, **options)
        group = q.shape[-3] // v.shape[-3] if v.dim() > 2 else 1
        heads = v.repeat_interleave(group, dim=-3) if group > 1 else v
        r = ProductRule().propagate(Call(torch.matmul, (weights, heads), live=(False, True)),
                                    relevance)[1]
        assert r is not None
        if group > 1:
            r = r.unflatten(-3, (v.shape[-3], group)).sum(dim=-3)
        return r

    def _multi_head(self, call: Call, relevance: Tensor) -> Tensor:
        a = _MHA.bind(*call.args, **call.kwargs).arguments
        a = {**{k: p.default for k, p in _MHA.parameters.items()}, **a}
        if a["bias_k"] is not None or a["add_zero_attn"] or a["static_v"] is not None:
            raise ValueError("nn.MultiheadAttention with add_bias_kv, add_zero_attn or static "
                             "values has no relevance rule (its extra values are constants)")
        value, heads = a["value"], a["num_heads"]
        with torch.no_grad():
            _, weights = F.multi_head_attention_forward(
                **{**a, "need_weights": True, "average_attn_weights": False, "training": False})
        e = value.shape[-1]
        if a["use_separate_proj_weight"]:
            w_v, b_v = a["v_proj_weight"], a["in_proj_bias"]
            b_v = None if b_v is None else b_v[-e:]
        else:
            w_v = a["in_proj_weight"][-e:]
            b_v = None if a["in_proj_bias"] is None else a["in_proj_bias"][-e:]
        batched = value.dim() == 3
        seq = value if batched else value.unsqueeze(1)  # S x N x E
        r_out = relevance if batched else relevance.unsqueeze(1)  # L x N x E
        if not batched:
            weights = weights.unsqueeze(0)
        with torch.no_grad():
            v = F.linear(seq, w_v, b_v)
            v_heads = v.unflatten(-1, (heads, e // heads)).permute(1, 2, 0, 3)  # N x h x S x d
            o = (weights @ v_heads).permute(2, 0, 1, 3).flatten(2)  # L x N x E
        linear = _projection_rule(call)
        out_proj = FunctionalLinear(F.linear, (None, a["out_proj_weight"], a["out_proj_bias"]),
                                    {})
        r_o = linear.propagate(Call(out_proj, (o,)), r_out)[0]
        assert r_o is not None
        r_heads = r_o.unflatten(-1, (heads, e // heads)).permute(1, 2, 0, 3)
        r_v = ProductRule().propagate(Call(torch.matmul, (weights, v_heads), live=(False, True)),
                                      r_heads)[1]
        assert r_v is not None
        r_v = r_v.permute(2, 0, 1, 3).flatten(2)  # S x N x E
        v_proj = FunctionalLinear(F.linear, (None, w_v, b_v), {})
        r_value = linear.propagate(Call(v_proj, (seq,)), r_v)[0]
        assert r_value is not None
        return r_value if batched else r_value.squeeze(1)


def _projection_rule(call: Call) -> Rule:
    """The rule map's rule for the projections of ``nn.MultiheadAttention`` (that of its
    ``out_proj``), or for ``F.linear`` where the call ran outside such a module."""
    if call.rule_for is None:
        raise ValueError("AttentionRule for nn.MultiheadAttention runs inside the engine, "
                         "which gives it the rule map's rule for the projections")
    out_proj = getattr(call.scope, "out_proj", None)
    return call.rule_for(out_proj if isinstance(out_proj, nn.Linear) else F.linear)
