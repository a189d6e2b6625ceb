r"""Peers' transformer attribution methods as explainers for ``captum_fgcam.benchmark.runner``.

    extra = peer_explainers(model, "vit" | "swin", layers)
    runner.run(model, data, settings, extra=extra)

An explainer maps (images N x 3 x H x W, target class indices N) to N x 1 x h x w maps
(detached, float, signed allowed). Keys are ``(method, layer)``: ``"input"`` is a map at the
pixels summed over colour channels (or, for the attention-based methods, on the 12 x 12 patch
grid, as those methods define it); a block / stage name is relevance at that block's output
tokens, the class token dropped, summed over channels (activation x gradient for the LRP-type
methods). Peers are imported here only; no peer code is vendored.

Methods
-------
* **AttnLRP** (Achtibat et al., ICML 2024) via LXT 2.1's efficient (gradient x input)
  implementation, R(a) = a * dy_c/da under LXT's patched forward: identity rule on GELU and on
  LayerNorm (standard deviation detached), CP-LRP inside attention (softmax output constant:
  ``cp_multi_head_attention_forward`` detaches query and key) and zennit's Gamma rule
  z_jk = x_j (w_jk + gamma w_jk^+) on Conv2d / Linear, through zennit patched by
  ``monkey_patch_zennit``. On the torchvision ViT this is exactly LXT's rule set
  ``lxt.efficient.models.vit_torch.cp_LRP`` (the default map ``monkey_patch`` picks for
  ``torchvision.models.vision_transformer``) and the composite of LXT's ViT example,
  ``examples/vit_torch.py`` of github:rachtibat/LRP-eXplains-Transformers (commit f0434417,
  same as ``docs/source/quickstart.rst``, "Vision Transformer"): ``LayerMapComposite([(Conv2d,
  Gamma(conv_gamma)), (Linear, Gamma(lin_gamma))])``. That example sweeps conv_gamma in
  {0.1, 0.25, 100} x lin_gamma in {0, 0.01, 0.05, 0.1, 1} and leaves the pick to the eye; no
  single pair is prescribed. We fix conv_gamma = 0.25, lin_gamma = 0.05 from that grid
  (chosen before any benchmark number was seen; ``attnlrp_explainer`` takes others). As in
  LXT's own configuration, the MHA's in/out projections are called functionally by
  ``nn.MultiheadAttention`` and so never see the Gamma hook: they get the plain gradient.
  On the zoo Swin there is no LXT rule set; **this configuration is ours**: LXT's same patch
  functions on the same kinds of modules (``non_linear_forward`` on nn.GELU,
  ``layer_norm_forward`` on nn.LayerNorm), CP-LRP on ``WindowAttention`` (its forward swapped
  for a copy with the softmax output detached), the same composite and gammas, plus zennit's
  ``SequentialMergeBatchNorm`` canonizer for the stem's BatchNorm (the ViT has none).
  LXT patches classes process-wide; every patch is undone after each call (``_restored``)
  and the patched forward's logits are checked against the plain ones.
* **HiLRP** 0.2.0 (timm models only): its plain-ViT port ``hilrp.vit_lxt.attribute_vit`` is
  called directly, because ``hilrp.attributor_for`` refuses zennit < 1.0 (the check concerns
  BatchNorm merging for MobileViT / EfficientViT; the ViT has no BatchNorm) and zennit 1.0 is not
  available here. Its rules: LXT's GELU / LayerNorm identity rules, CP attention, zennit Gamma
  (HiLRP's default gamma = 0.25 on Linear and Conv2d). The torchvision ViT's weights are copied
  exactly into a timm ``VisionTransformer`` (``timm_vit_from_torchvision``; logits checked to
  1e-5). HiLRP's ViT port returns the pixel map only (``stage_maps`` exist for Swin only), so
  HiLRP gives layer ``"input"`` only. It processes one image at a time (batch index 0).
* **Attention rollout** (Abnar & Zuidema, ACL 2020): A~_l = (mean_h A_l + I) / 2 (identity
  added, rows renormalised), R = A~_L ... A~_1, map = R[cls, patches] on the patch grid.
* **Chefer (ICCV 2021)** (Chefer, Gur & Wolf, "Generic Attention-model Explainability", ICCV
  2021): R = I, R <- R + mean_h((dy_c/dA_l * A_l)^+) R over the blocks in order, map =
  R[cls, patches]. Their CVPR 2021 method needs a full LRP ``relprop`` through every layer
  (github:hila-chefer/Transformer-Explainability, ``baselines/ViT/ViT_LRP.py`` and
  ``modules/layers_ours.py``, ~700 lines of per-layer rules); that is not reimplemented.
* **LeGrad** (Bousselham et al., 2024) via ``torchcam.methods.LeGrad`` 0.5 as its docstring
  configures it on a torchvision ViT: ``LeGrad(model, list(model.encoder.layers)[-4:])`` (all
  four blocks here), built-in score projection, ``cam_extractor(class_idx)`` (min-max
  normalised), map = mean_l mean_{h,q} (ds_c^l/dA_l)^+ over patch keys, on the token grid.

The attention probabilities of ``nn.MultiheadAttention`` (rollout, Chefer) are recomputed
from the block's LN output and the MHA's weights in a temporary forward hook,
softmax(q k^T / sqrt(d)); for Chefer the hook returns the recomputed output so that the
probabilities are in the graph (checked equal to the module's own output).

``time_per_image``: a method's seconds per image over those of one forward plus backward.

    python benchmarks/transformer_peers.py     # smoke run: random weights, 2 images, seconds
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_fgcam.zoo.swin import WindowAttention

INPUT = "input"
ATTNLRP, HILRP, ROLLOUT, CHEFER, LEGRAD = (
    "AttnLRP", "HiLRP", "Attention rollout", "Chefer (ICCV 2021)", "LeGrad")
METHODS = (ATTNLRP, HILRP, ROLLOUT, CHEFER, LEGRAD)
#: LXT's ViT example grid: conv_gamma in {0.1, 0.25, 100}, lin_gamma in {0, .01, .05, .1, 1}
LXT_CONV_GAMMA, LXT_LINEAR_GAMMA = 0.25, 0.05
HILRP_GAMMA = 0.25  # hilrp.attribute's documented default, on Linear and Conv2d

_SWIN_ATTENTION = ("windowed attention with patch merging has no single token set across "
                   "depth and no class token: {what}")
#: (method, model kind) -> why the method gives no map there.
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    (HILRP, "swin"): "HiLRP ports timm models only: hilrp.swin_lxt patches timm's "
                     "swin_transformer.WindowAttention and reads timm's SwinTransformer layout "
                     "(patch_embed, layers[i].downsample, norm); the zoo Swin is its own module "
                     "(conv stem with BatchNorm, its own WindowAttention, stages / merges), so no "
                     "HiLRP port runs on it and any adaptation would be our configuration (the "
                     "AttnLRP entry on the Swin is that recipe: LXT identity rules, CP window "
                     "attention, zennit Gamma)",
    (ROLLOUT, "swin"): _SWIN_ATTENTION.format(
        what="rollout multiplies token-to-token attention matrices over all layers and reads "
             "the class token's row"),
    (CHEFER, "swin"): _SWIN_ATTENTION.format(
        what="the gradient-weighted rollout needs the same, and the class token's row"),
    (LEGRAD, "swin"): "torchcam's LeGrad needs blocks with a `self_attention` "
                      "nn.MultiheadAttention over (batch, tokens, embedding) tokens; the zoo "
                      "Swin's windowed attention is its own module on a channels-last grid",
}
#: Methods that give the input map only on the ViT (no per-block maps), and why.
INPUT_ONLY = {
    HILRP: "hilrp.vit_lxt returns the pixel map only (per-stage maps for Swin only)",
    ROLLOUT: "a map over the patch tokens by definition",
    CHEFER: "a map over the patch tokens by definition",
    LEGRAD: "a map over the patch tokens by definition",
}

Explainer = Callable[[Tensor, Any], Tensor]
_MISSING = object()


# -- shared helpers -----------------------------------------------------------------------
def _targets(target: Any, n: int, device: torch.device) -> Tensor:
    """One class index per image from an int, a sequence or a tensor."""
    t = torch.as_tensor(target, device=device).long().flatten()
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"expected {n} targets, got {t.numel()}")
    return t


#: the largest |patched - plain| logit (or attention output) difference seen, per check
PATCHED_LOGIT_ERROR: dict[str, float] = {}


def _check_logits(reference: Tensor, patched: Tensor, what: str, tol: float = 1e-4) -> None:
    """Raise if a rule-patched forward changed the model's logits beyond ``tol`` (relative)."""
    scale = max(1.0, float(reference.abs().max()))
    error = float((patched.detach() - reference).abs().max())
    PATCHED_LOGIT_ERROR[what] = max(error, PATCHED_LOGIT_ERROR.get(what, 0.0))
    if not error <= tol * scale:
        raise RuntimeError(f"{what}: patched forward changed the logits by {error:.3g}")


@contextlib.contextmanager
def _restored(*owners: object) -> Iterator[None]:
    """Snapshot the namespaces of ``owners`` (classes, modules) and restore them exactly on
    exit: attributes added are deleted, attributes replaced are put back."""
    saved = [(owner, dict(vars(owner))) for owner in owners]
    try:
        yield
    finally:
        for owner, before in reversed(saved):
            now = vars(owner)
            for name in [name for name in now if name not in before]:
                delattr(owner, name)
            for name, value in before.items():
                if now.get(name, _MISSING) is not value:
                    setattr(owner, name, value)


def _lxt() -> Any:
    """Import LXT's efficient backend. LXT 2.1 imports its BERT rules eagerly, which need
    ``transformers.pytorch_utils.find_pruneable_heads_and_indices`` (gone in transformers 5):
    importing ``hilrp`` first installs its shim; we remove the shim again once LXT is in."""
    from transformers import pytorch_utils

    name = "find_pruneable_heads_and_indices"
    had = hasattr(pytorch_utils, name)
    import hilrp  # noqa: F401  (its _compat shim lets LXT import)
    import lxt.efficient
    import lxt.efficient.models.vit_torch  # noqa: F401

    if not had and hasattr(pytorch_utils, name):
        delattr(pytorch_utils, name)
    return lxt.efficient


def _gamma_composite(conv_gamma: float, linear_gamma: float,
                     canonizers: Sequence[Any] = ()) -> Any:
    """LXT's ViT example composite: zennit Gamma on Conv2d and on Linear."""
    from zennit.composites import LayerMapComposite
    from zennit.rules import Gamma

    return LayerMapComposite([(nn.Conv2d, Gamma(conv_gamma)), (nn.Linear, Gamma(linear_gamma))],
                             canonizers=list(canonizers))


def _token_grid(tokens: Tensor, images: Tensor, patch: int, prefix: int = 1) -> Tensor:
    """N x (prefix + h w) -> N x 1 x h x w (prefix tokens dropped)."""
    h, w = images.shape[-2] // patch, images.shape[-1] // patch
    return tokens[:, prefix:].reshape(len(tokens), 1, h, w)


# -- AttnLRP (LXT) ------------------------------------------------------------------------
def _cp_window_attention_forward(self: WindowAttention, windows: Tensor,
                                 mask: Tensor | None) -> Tensor:
    """``WindowAttention.forward`` with the softmax output detached (CP-LRP)."""
    b, t, c = windows.shape
    q, k, v = self.qkv(windows).view(b, t, 3, self.heads, c // self.heads).permute(
        2, 0, 3, 1, 4)
    scores = q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5
    scores = scores + self.bias_table[self.index].permute(2, 0, 1)
    if mask is not None:
        scores = scores.view(-1, mask.shape[0], self.heads, t, t) + mask[:, None]
        scores = scores.view(b, self.heads, t, t)
    out = scores.softmax(dim=-1).detach() @ v
    return self.proj(out.transpose(1, 2).reshape(b, t, c))


@contextlib.contextmanager
def lxt_rules(kind: str) -> Iterator[None]:
    """LXT's class patches for ``kind`` ("vit": its torchvision ViT map ``cp_LRP``; "swin":
    the same patch functions on GELU / LayerNorm and CP-LRP on ``WindowAttention``) plus
    ``monkey_patch_zennit``, all undone on exit."""
    efficient = _lxt()
    from lxt.efficient import patches
    from torchvision.models import vision_transformer
    from zennit.core import BasicHook

    owners = (nn.GELU, nn.LayerNorm, nn.MultiheadAttention, WindowAttention, BasicHook)
    with _restored(*owners):
        if kind == "vit":
            efficient.monkey_patch(vision_transformer)
        else:
            efficient.monkey_patch(vision_transformer, patch_map={
                nn.GELU: partial(patches.patch_method, patches.non_linear_forward,
                                 keep_original=True),
                nn.LayerNorm: partial(patches.patch_method, patches.layer_norm_forward),
                WindowAttention: partial(patches.patch_method, _cp_window_attention_forward),
            })
        efficient.monkey_patch_zennit()
        yield


def attnlrp_explainer(model: nn.Module, kind: str, layer: str,
                      conv_gamma: float = LXT_CONV_GAMMA,
                      linear_gamma: float = LXT_LINEAR_GAMMA) -> Explainer:
    """AttnLRP under LXT's rules: R(a) = a * dy_c/da (modified gradient), summed over
    channels, at the pixels (``"input"``) or at a block / stage output."""

    def explain(images: Tensor, target: Any) -> Tensor:
        from zennit.canonizers import SequentialMergeBatchNorm

        t = _targets(target, len(images), images.device)
        with torch.no_grad():
            reference = model(images).gather(1, t[:, None])
        taps: list[Tensor] = []
        handle = None
        if layer != INPUT:
            handle = model.get_submodule(layer).register_forward_hook(
                lambda _m, _i, out: taps.append(out))
        x = images.detach().clone().requires_grad_(True)
        canonizers = [SequentialMergeBatchNorm()] if kind == "swin" else []
        composite = _gamma_composite(conv_gamma, linear_gamma, canonizers)
        try:
            with lxt_rules(kind), torch.enable_grad(), composite.context(model) as hooked:
                score = hooked(x).gather(1, t[:, None])
                _check_logits(reference, score, f"AttnLRP ({kind})")
                (grad,) = torch.autograd.grad(score.sum(), taps or [x])
        finally:
            if handle is not None:
                handle.remove()
        activation = taps[0] if taps else x
        relevance = (activation.detach() * grad).float()
        if layer == INPUT:
            return relevance.sum(1, keepdim=True)
        if kind == "swin":  # N x H x W x C, channels last
            return relevance.sum(-1)[:, None]
        return _token_grid(relevance.sum(-1), images, model.patch_size)

    return explain


# -- HiLRP --------------------------------------------------------------------------------
def timm_vit_from_torchvision(model: nn.Module) -> nn.Module:
    """The torchvision ViT as a timm ``VisionTransformer`` with the same weights (class
    token, position embedding, in_proj -> qkv, out_proj -> proj, MLP, LNs, head); its logits
    are checked against the torchvision model's to 1e-5."""
    from timm.models.vision_transformer import VisionTransformer

    blocks = list(model.encoder.layers)
    head = model.heads.head
    first = blocks[0]
    timm_vit = VisionTransformer(
        img_size=model.image_size, patch_size=model.patch_size, embed_dim=model.hidden_dim,
        depth=len(blocks), num_heads=first.num_heads,
        mlp_ratio=model.mlp_dim / model.hidden_dim, qkv_bias=True, class_token=True,
        global_pool="token", num_classes=head.out_features)
    state = {
        "cls_token": model.class_token, "pos_embed": model.encoder.pos_embedding,
        "patch_embed.proj.weight": model.conv_proj.weight,
        "patch_embed.proj.bias": model.conv_proj.bias,
        "norm.weight": model.encoder.ln.weight, "norm.bias": model.encoder.ln.bias,
        "head.weight": head.weight, "head.bias": head.bias,
    }
    for k, block in enumerate(blocks):
        attention, mlp = block.self_attention, block.mlp
        for timm_name, tensor in {
            "norm1.weight": block.ln_1.weight, "norm1.bias": block.ln_1.bias,
            "attn.qkv.weight": attention.in_proj_weight, "attn.qkv.bias": attention.in_proj_bias,
            "attn.proj.weight": attention.out_proj.weight,
            "attn.proj.bias": attention.out_proj.bias,
            "norm2.weight": block.ln_2.weight, "norm2.bias": block.ln_2.bias,
            "mlp.fc1.weight": mlp[0].weight, "mlp.fc1.bias": mlp[0].bias,
            "mlp.fc2.weight": mlp[3].weight, "mlp.fc2.bias": mlp[3].bias,
        }.items():
            state[f"blocks.{k}.{timm_name}"] = tensor
    timm_vit.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    device = model.conv_proj.weight.device
    timm_vit = timm_vit.to(device).eval().requires_grad_(False)
    if any(abs(m.eps - 1e-6) > 1e-12 for m in model.modules() if isinstance(m, nn.LayerNorm)):
        raise ValueError("timm's ViT LayerNorm has eps 1e-6; this model's differs")
    probe = torch.randn(2, 3, model.image_size, model.image_size, device=device,
                        generator=torch.Generator(device).manual_seed(0))
    with torch.no_grad():
        error = float((timm_vit(probe) - model(probe)).abs().max())
    if not error <= 1e-5:
        raise RuntimeError(f"timm conversion: logits differ by {error:.3g}")
    return timm_vit


def hilrp_explainer(model: nn.Module, gamma: float = HILRP_GAMMA) -> Explainer:
    """HiLRP's plain-ViT port on the timm copy, image by image: R(x) = x * dy_c/dx under its
    rules (LXT identity rules, CP attention, Gamma), summed over channels."""
    timm_vit = timm_vit_from_torchvision(model)

    def explain(images: Tensor, target: Any) -> Tensor:
        _lxt()
        from hilrp import vit_lxt
        from zennit.core import BasicHook

        t = _targets(target, len(images), images.device)
        with torch.no_grad():
            reference = model(images).gather(1, t[:, None])[:, 0]
        maps = []
        owners = (nn.GELU, nn.LayerNorm, vit_lxt.TimmLayerNorm, vit_lxt.Attention, BasicHook,
                  vit_lxt)
        with _restored(*owners), torch.enable_grad():
            for i in range(len(images)):
                result = vit_lxt.attribute_vit(timm_vit, images[i:i + 1], target=int(t[i]),
                                               gamma=gamma)
                _check_logits(reference[i:i + 1], torch.tensor([result["logit"]],
                              device=images.device), "HiLRP")
                maps.append(result["pixel_map"])
        return torch.stack(maps)[:, None].float().to(images.device)

    return explain


# -- attention-based methods on torchvision's ViT -----------------------------------------
def _attention(mha: nn.MultiheadAttention, y: Tensor) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(d)) per head (N x heads x T x T) and the MHA output, recomputed
    from its input ``y`` and weights."""
    n, t, e = y.shape
    heads = mha.num_heads
    q, k, v = F.linear(y, mha.in_proj_weight, mha.in_proj_bias).view(
        n, t, 3, heads, e // heads).permute(2, 0, 3, 1, 4)
    probs = (q @ k.transpose(-2, -1) * (e // heads) ** -0.5).softmax(dim=-1)
    out = mha.out_proj((probs @ v).transpose(1, 2).reshape(n, t, e))
    return probs, out


@contextlib.contextmanager
def _attention_probs(model: nn.Module, in_graph: bool) -> Iterator[list[Tensor]]:
    """Collect every block's attention probabilities during a forward; with ``in_graph`` the
    MHA's output is replaced by the (equal) recomputed one, so the probabilities get gradients."""
    probs: list[Tensor] = []

    def hook(mha: nn.Module, args: tuple[Any, ...], output: tuple[Tensor, Any]) -> Any:
        y = args[0]
        if not (args[1] is y and args[2] is y):
            raise ValueError("expected self-attention (query is key is value)")
        with torch.set_grad_enabled(in_graph and torch.is_grad_enabled()):
            attention, out = _attention(mha, y)
        probs.append(attention)
        if not in_graph:
            return None
        _check_logits(output[0].detach(), out, "recomputed attention")
        return out, output[1]

    handles = [block.self_attention.register_forward_hook(hook)
               for block in model.encoder.layers]
    try:
        yield probs
    finally:
        for handle in handles:
            handle.remove()


def rollout_explainer(model: nn.Module) -> Explainer:
    """Attention rollout: R = prod_l (mean_h A_l + I) / 2, the class token's row."""

    def explain(images: Tensor, target: Any) -> Tensor:
        with torch.no_grad(), _attention_probs(model, in_graph=False) as probs:
            model(images)
        rollout = None
        for attention in probs:
            a = attention.mean(1)
            a = a + torch.eye(a.shape[-1], device=a.device)
            a = a / a.sum(-1, keepdim=True)
            rollout = a if rollout is None else a @ rollout
        assert rollout is not None
        return _token_grid(rollout[:, 0], images, model.patch_size).float()

    return explain


def chefer_explainer(model: nn.Module) -> Explainer:
    """Chefer et al. (ICCV 2021): R = I; R <- R + mean_h((dy_c/dA * A)^+) R; class row."""

    def explain(images: Tensor, target: Any) -> Tensor:
        t = _targets(target, len(images), images.device)
        x = images.detach().requires_grad_(True)  # probabilities in the graph even if frozen
        with torch.enable_grad(), _attention_probs(model, in_graph=True) as probs:
            score = model(x).gather(1, t[:, None]).sum()
            grads = torch.autograd.grad(score, probs)
        relevance = None
        for attention, grad in zip(probs, grads, strict=True):
            a = (grad * attention.detach()).clamp(min=0).mean(1)
            if relevance is None:
                relevance = torch.eye(a.shape[-1], device=a.device).expand_as(a)
            relevance = relevance + a @ relevance
        assert relevance is not None
        return _token_grid(relevance[:, 0], images, model.patch_size).float()

    return explain


def legrad_explainer(model: nn.Module) -> Explainer:
    """torchcam's LeGrad as its docstring configures it (the last four blocks), normalised."""
    from torchcam.methods import LeGrad

    def explain(images: Tensor, target: Any) -> Tensor:
        t = _targets(target, len(images), images.device)
        with torch.enable_grad(), LeGrad(model, list(model.encoder.layers)[-4:]) as extractor:
            model(images.detach())
            cam = extractor(class_idx=t.tolist())[0]
        return cam[:, None].detach().float()

    return explain


# -- entry points -------------------------------------------------------------------------
def peer_explainers(model: nn.Module, kind: str,
                    layers: Sequence[str]) -> dict[tuple[str, str], Explainer]:
    """(method, layer) -> explainer for the zoo ``"vit"`` or ``"swin"``; pairs a method does not
    give are left out (``NOT_APPLICABLE``, ``INPUT_ONLY``)."""
    if kind not in ("vit", "swin"):
        raise ValueError(f"kind must be 'vit' or 'swin', not {kind!r}")
    for layer in layers:
        if layer != INPUT:
            model.get_submodule(layer)  # raises on an unknown name
    out: dict[tuple[str, str], Explainer] = {
        (ATTNLRP, layer): attnlrp_explainer(model, kind, layer) for layer in layers}
    if kind == "vit" and INPUT in layers:
        out[HILRP, INPUT] = hilrp_explainer(model)
        out[ROLLOUT, INPUT] = rollout_explainer(model)
        out[CHEFER, INPUT] = chefer_explainer(model)
        out[LEGRAD, INPUT] = legrad_explainer(model)
    return out


def time_per_image(explain: Explainer, images: Tensor, targets: Tensor,
                   model: nn.Module) -> float:
    """The method's time on ``images`` over one forward plus backward (to the input) of
    ``model`` on the same batch; each the median of 3 runs after one warm-up."""

    def gradient() -> None:
        x = images.detach().requires_grad_(True)
        with torch.enable_grad():
            score = model(x).gather(1, targets[:, None].to(x.device)).sum()
            torch.autograd.grad(score, x)

    def seconds(run: Callable[[], object]) -> float:
        times = []
        for k in range(4):
            if images.is_cuda:
                torch.cuda.synchronize(images.device)
            start = time.perf_counter()
            run()
            if images.is_cuda:
                torch.cuda.synchronize(images.device)
            if k:
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    return seconds(lambda: explain(images, targets)) / seconds(gradient)


# -- smoke run ----------------------------------------------------------------------------
def _originals() -> dict[str, object]:
    """The class attributes LXT / HiLRP patch, to compare before and after a call."""
    from hilrp import vit_lxt
    from zennit.core import BasicHook

    owners = {"nn.GELU": nn.GELU, "nn.LayerNorm": nn.LayerNorm,
              "nn.MultiheadAttention": nn.MultiheadAttention, "WindowAttention": WindowAttention,
              "timm LayerNorm": vit_lxt.TimmLayerNorm, "timm Attention": vit_lxt.Attention}
    found: dict[str, object] = {f"{k}.{a}": vars(o).get(a, _MISSING) for k, o in owners.items()
                                for a in ("forward", "original_forward")}
    found |= {f"BasicHook.{a}": vars(BasicHook)[a] for a in ("forward", "backward")}
    found["hilrp.vit_lxt._PATCHED"] = vit_lxt._PATCHED
    return found


def main() -> None:
    from captum_fgcam.zoo.swin import scenes_swin
    from captum_fgcam.zoo.vit import scenes_vit

    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 96, 96)
    targets = torch.tensor([1, 4])
    _lxt()
    before = _originals()
    models = {"vit": scenes_vit().eval(), "swin": scenes_swin().eval()}
    nn.init.normal_(models["vit"].heads.head.weight, std=0.1)  # torchvision zero-inits it
    layers = {"vit": [f"encoder.layers.encoder_layer_{k}" for k in range(4)] + [INPUT],
              "swin": ["stages.0", "stages.1", "stages.2", INPUT]}
    for kind, model in models.items():
        with torch.no_grad():
            logits = model(images)
        explainers = peer_explainers(model, kind, layers[kind])
        print(f"== {kind}: {len(explainers)} (method, layer) pairs")
        for (method, layer), explain in explainers.items():
            maps = explain(images, targets)
            ok = maps.dtype == torch.float32 and not maps.requires_grad and bool(
                maps.isfinite().all()) and maps.ndim == 4 and maps.shape[:2] == (2, 1)
            line = f"  {method:20s} {layer:32s} {tuple(maps.shape)} finite+shape={ok}"
            if method in (ATTNLRP, HILRP) and layer == INPUT:
                ratio = maps.sum((1, 2, 3)) / logits.gather(1, targets[:, None])[:, 0]
                line += f"  sum(R)/logit = {[round(float(r), 3) for r in ratio]}"
            if layer == INPUT:
                line += f"  time = {time_per_image(explain, images, targets, model):.1f}x f+b"
            print(line)
            assert ok, (method, layer)
        with torch.no_grad():
            identical = torch.equal(model(images), logits)
        restored = _originals() == before
        print(f"  after all calls: logits identical = {identical}, "
              f"LXT/HiLRP/zennit patches undone = {restored}")
        assert identical and restored
        for (method, model_kind), why in NOT_APPLICABLE.items():
            if model_kind == kind:
                print(f"  not applicable: {method}: {why}")
    vit = models["vit"]
    with torch.no_grad():
        error = float((timm_vit_from_torchvision(vit)(images) - vit(images)).abs().max())
    print(f"timm conversion: max |logit difference| = {error:.2e}")
    for what, error in PATCHED_LOGIT_ERROR.items():
        print(f"patched vs plain forward, {what}: max |difference| = {error:.2e}")


if __name__ == "__main__":
    main()
