"""Transformers: token grids, relevance through attention, and the models users bring.

- token layouts (N x h x w x C, N x L x C with prefix tokens) read and converted exactly;
- the product and attention rules against explicit sums written here, and fused attention
  (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``) against the same attention
  written out with ``softmax`` and ``matmul``: equal maps;
- torchvision's and timm's Swin, ViT and MaxViT, the zoo's Swin, and Hugging Face's ViT, DeiT
  (with teacher), BEiT, DINOv2, Swin, Swin V2 and CLIP image tower (random weights): the
  relevance entering every stage and the pixels sums to the CAM components' sum (the class,
  distillation and register tokens of a ViT, learned constants, keep their share, measured),
  FG-Grad-CAM maps are finite, the batch equals the images one at a time (CLIP's tower: the
  cosine similarity to a reference embedding); Hugging Face's ``sdpa`` and ``eager``
  attention give the same maps; a layer returning a tuple (Hugging Face's Swin stages) is
  its first element;
- Grad-CAM at a token grid equals pytorch-grad-cam's with its ``reshape_transform``;
- attention without a rule is refused before any work, naming the operation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import image_batch
from torch import nn

from captum_fgcam import (
    FGGradCam,
    FineGrainedUpsampler,
    GradCam,
    LayerError,
    MissingRuleError,
    ProductRule,
    TokenLayout,
    find_cam_layer,
    find_input_layer,
)
from captum_fgcam.propagation import Call
from captum_fgcam.targets import Similarity, Target
from captum_fgcam.zoo.swin import scenes_swin
from captum_fgcam.zoo.vit import scenes_vit

timm = pytest.importorskip("timm")


# -- token layouts ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape, image, expected", [
    ((2, 64, 16, 16), (64, 64), TokenLayout()),
    ((2, 7, 7, 768), (224, 224), TokenLayout("channels-last")),
    ((2, 8, 16, 96), (128, 256), TokenLayout("channels-last")),
    ((2, 197, 768), (224, 224), TokenLayout("tokens", 1, (14, 14))),
    ((2, 21, 192), (64, 64), TokenLayout("tokens", 5, (4, 4))),  # class + 4 register tokens
    ((2, 33, 32), (64, 128), TokenLayout("tokens", 1, (4, 8))),
    ((2, 196, 32), (224, 224), TokenLayout("tokens", 0, (14, 14))),
    ((2, 16, 16, 16), (64, 64), TokenLayout()),  # both readings fit: channels-first
    ((2, 24, 24, 32), (96, 96), TokenLayout("channels-last")),  # 24 x 32 would fit less well
    ((2, 64, 3, 4), (80, 100), TokenLayout()),  # strides rounded at an odd size
])
def test_token_layouts_are_read_from_the_shapes(shape, image, expected):
    value = torch.randn(shape)
    layout = TokenLayout.of(value, (2, 3, *image))
    assert layout == expected
    grid = layout.to_grid(value)
    assert grid.dim() == 4 and grid.shape[0] == 2
    back = layout.from_grid(grid)
    assert back.shape == value.shape
    kept = value.clone()
    if layout.kind == "tokens":
        kept[:, :layout.prefix] = 0
    assert torch.equal(back, kept)


def test_an_ambiguous_token_sequence_is_refused_unless_the_model_tells():
    tokens = torch.randn(2, 9, 192)  # 3 x 3 patches, or 1 + 4 prefix tokens and 2 x 2
    with pytest.raises(ValueError, match="prefix tokens"):
        TokenLayout.of(tokens, (2, 3, 32, 32))
    assert TokenLayout.of(tokens, (2, 3, 32, 32), {(2, 2)}) == TokenLayout("tokens", 5, (2, 2))


def test_signals_keep_their_layout():
    value = torch.randn(2, 8, 50)
    assert TokenLayout.of(value, (2, 1, 200)) == TokenLayout()


# -- rules against explicit sums -------------------------------------------------------------

def sign_aware_by_hand(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """R for x in y = w @ x (w: L x S constant, x: S x D), contribution by contribution."""
    out = torch.zeros_like(x, dtype=torch.float64)
    for q in range(w.shape[0]):
        for d in range(x.shape[1]):
            c = [float(w[q, k] * x[k, d]) for k in range(x.shape[0])]
            y = sum(c)
            pos, neg = sum(v for v in c if v > 0), sum(v for v in c if v < 0)
            for k, v in enumerate(c):
                if y > 0 and v > 0:
                    out[k, d] += v / pos * float(r[q, d])
                elif y < 0 and v < 0:
                    out[k, d] += v / neg * float(r[q, d])
    return out


def test_product_rule_with_attention_weights_is_the_sign_aware_z_rule():
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(5, 7, generator=g).softmax(dim=-1)  # L x S, rows sum to 1
    values = torch.randn(7, 3, generator=g)
    r = torch.randn(5, 3, generator=g)
    got = ProductRule().propagate(Call(torch.matmul, (weights, values), live=(False, True)), r)
    assert got[0] is None
    torch.testing.assert_close(got[1].double(), sign_aware_by_hand(values, weights, r),
                               atol=1e-5, rtol=1e-5)
    assert math.isclose(float(got[1].sum()), float(r.sum()), rel_tol=1e-5)


def test_product_rule_with_signed_constants_and_einsum():
    g = torch.Generator().manual_seed(1)
    w, x, r = torch.randn(4, 6, generator=g), torch.randn(6, 2, generator=g), torch.randn(4, 2)
    got = ProductRule().propagate(Call(torch.einsum, ("qk,kd->qd", w, x),
                                       live=(False, False, True)), r)
    assert got[0] is None and got[1] is None
    torch.testing.assert_close(got[2].double(), sign_aware_by_hand(x, w, r), atol=1e-5,
                               rtol=1e-5)


def test_product_of_two_activations_splits_each_term_in_half():
    g = torch.Generator().manual_seed(2)
    a, b, r = torch.randn(3, 4, generator=g), torch.randn(4, 5, generator=g), torch.randn(3, 5)
    got = ProductRule().propagate(Call(torch.matmul, (a, b)), r)
    y = a @ b
    expected_a = torch.zeros_like(a)
    expected_b = torch.zeros_like(b)
    for i in range(3):
        for j in range(5):
            for k in range(4):
                share = a[i, k] * b[k, j] / y[i, j] * r[i, j]
                expected_a[i, k] += share / 2
                expected_b[k, j] += share / 2
    torch.testing.assert_close(got[0], expected_a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1], expected_b, atol=1e-4, rtol=1e-4)


class WrittenOut(nn.Module):
    """``nn.MultiheadAttention`` (self-attention, batch first) written out with the same
    parameters: qkv projection, softmax(q k^T / sqrt(d)), A v, output projection."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha = mha

    def forward(self, query, key, value, need_weights=False):
        mha = self.mha
        n, length, e = query.shape
        heads = mha.num_heads
        q, k, v = F.linear(query, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.view(n, length, heads, e // heads).transpose(1, 2) for t in (q, k, v))
        attention = (q @ k.transpose(-2, -1) / math.sqrt(e // heads)).softmax(dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(n, length, e)
        return mha.out_proj(out), None


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts it at zero
    return model.eval()


def maps_at(model: nn.Module, x: torch.Tensor, layers: list[str]) -> list[torch.Tensor]:
    cam = find_cam_layer(model, x)
    maps = [FGGradCam(model, layer, cam_layer=cam).attribute(x, 3) for layer in layers]
    first = find_input_layer(model, x)
    maps.append(FGGradCam(model, first, cam_layer=cam).attribute(
        x, 3, attribute_to_layer_input=True))
    return maps


def test_multi_head_attention_rule_equals_the_attention_written_out():
    fused = tiny_vit()
    written = tiny_vit()
    for block in written.encoder.layers:
        block.self_attention = WrittenOut(block.self_attention)
    x = image_batch(2, 32, 32)
    torch.testing.assert_close(fused(x), written(x), atol=1e-5, rtol=1e-5)
    layers = ["encoder.layers.encoder_layer_0", "encoder.dropout", "conv_proj"]
    for a, b in zip(maps_at(fused, x, layers), maps_at(written, x, layers), strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-6 * float(a.abs().max()), rtol=1e-4)


def test_scaled_dot_product_attention_rule_equals_the_attention_written_out():
    torch.manual_seed(0)
    fused = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=10)
    written = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=10)
    written.load_state_dict(fused.state_dict())
    for block in written.blocks:
        block.attn.fused_attn = False
    fused.eval(), written.eval()
    x = image_batch(2, 32, 32)
    layers = ["blocks.0", "norm_pre"]
    for a, b in zip(maps_at(fused, x, layers), maps_at(written, x, layers), strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-6 * float(a.abs().max()), rtol=1e-4)


# -- the models users bring ------------------------------------------------------------------

def _heads_drawn(model: nn.Module) -> nn.Module:
    for module in model.modules():  # torchvision's ViT starts its head at zero
        if isinstance(module, nn.Linear) and not bool(module.weight.any()):
            nn.init.normal_(module.weight, std=0.5)
    return model.eval()


def _tv(name: str, **kwargs):
    return lambda: _heads_drawn(getattr(torchvision.models, name)(weights=None, num_classes=10,
                                                                  **kwargs))


def _timm(name: str, **kwargs):
    return lambda: _heads_drawn(timm.create_model(name, pretrained=False, num_classes=10,
                                                  **kwargs))


def _hf(model: str, config: str, **kwargs):
    """A Hugging Face ``transformers`` model from a small config (random weights; parameters
    it starts at zero, class / distillation tokens, position embeddings, relative position
    bias tables, biases, drawn as in a trained model)."""
    def make() -> nn.Module:
        hf = pytest.importorskip("transformers")
        built = getattr(hf, model)(getattr(hf, config)(**kwargs))
        with torch.no_grad():
            for parameter in built.parameters():
                if not bool(parameter.any()):
                    parameter.normal_(std=0.02)
        return built.eval()
    return make


HF_VIT = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
          "intermediate_size": 64, "image_size": 32, "patch_size": 8}
HF_SWIN = {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2],
           "num_heads": [1, 2], "window_size": 4, "num_labels": 10}

# (builder, image size, CAM layer expected, stages tapped, prefix-token layer or None)
MODELS = {
    "torchvision swin_t": (_tv("swin_t"), 64, "norm",
                           ["features.7", "features.5", "features.3", "features.1"], None),
    "torchvision swin_v2_t": (_tv("swin_v2_t"), 64, "norm",
                              ["features.7", "features.5", "features.3", "features.1"], None),
    "torchvision vit_b_16": (_tv("vit_b_16", image_size=32), 32,
                             "encoder.layers.encoder_layer_11.ln_1",
                             ["encoder.layers.encoder_layer_8", "encoder.layers.encoder_layer_0"],
                             "encoder.dropout"),
    "torchvision maxvit_t": (_tv("maxvit_t"), 224, "blocks.3.layers.1.layers.grid_attention",
                             ["blocks.2", "blocks.1", "blocks.0", "stem"], None),
    "timm swin": (_timm("swin_tiny_patch4_window7_224", img_size=64, window_size=2), 64, "norm",
                  ["layers.2", "layers.1", "layers.0", "patch_embed"], None),
    "timm vit + registers": (_timm("vit_tiny_patch16_224", img_size=32, reg_tokens=4), 32,
                             "blocks.11.norm1", ["blocks.6", "blocks.0"], "norm_pre"),
    "timm maxvit": (_timm("maxvit_tiny_tf_224", img_size=64), 64, "norm",
                    ["stages.2", "stages.1", "stages.0", "stem"], None),
    "zoo scenes-vit": (lambda: _heads_drawn(scenes_vit()), 96,
                       "encoder.layers.encoder_layer_3.ln_1",
                       ["encoder.layers.encoder_layer_2", "encoder.layers.encoder_layer_0"],
                       "encoder.dropout"),
    "zoo scenes-swin": (lambda: scenes_swin().eval(), 96, "norm",
                        ["stages.2", "merges.1", "stages.1", "merges.0", "stages.0", "stem.0"],
                        None),
    "transformers ViT": (_hf("ViTForImageClassification", "ViTConfig", **HF_VIT, num_labels=10),
                         32, "vit.layers.2.layernorm_before", ["vit.layers.1", "vit.layers.0"],
                         "vit.embeddings.dropout"),
    "transformers DeiT with teacher": (
        _hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", **HF_VIT, num_labels=10), 32,
        "deit.layers.2.layernorm_before", ["deit.layers.1", "deit.layers.0"],
        "deit.embeddings.dropout"),
    "transformers BEiT": (_hf("BeitForImageClassification", "BeitConfig", **HF_VIT,
                              num_labels=10, use_relative_position_bias=True), 32,
                          "beit.layernorm", ["beit.layers.2", "beit.layers.1", "beit.layers.0"],
                          "beit.embeddings.dropout"),
    "transformers DINOv2": (_hf("Dinov2ForImageClassification", "Dinov2Config", **HF_VIT,
                                num_labels=10), 32, "dinov2.layernorm",
                            ["dinov2.encoder.layer.2", "dinov2.encoder.layer.1",
                             "dinov2.encoder.layer.0"], "dinov2.embeddings.dropout"),
    "transformers Swin": (_hf("SwinForImageClassification", "SwinConfig", **HF_SWIN), 32,
                          "swin.layernorm", ["swin.encoder.layers.1", "swin.encoder.layers.0",
                                             "swin.embeddings.dropout"], None),
    "transformers Swinv2": (_hf("Swinv2ForImageClassification", "Swinv2Config", **HF_SWIN), 32,
                            "swinv2.layernorm", ["swinv2.encoder.layers.1",
                                                 "swinv2.encoder.layers.0",
                                                 "swinv2.embeddings.dropout"], None),
    "transformers CLIP image tower": (
        _hf("CLIPVisionModelWithProjection", "CLIPVisionConfig", **HF_VIT, projection_dim=16), 32,
        "vision_model.encoder.layers.2.layer_norm1",
        ["vision_model.encoder.layers.1", "vision_model.encoder.layers.0",
         "vision_model.pre_layrnorm"], "vision_model.embeddings"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_transformer_relevance_is_conserved_at_every_stage_and_the_pixels(name):
    make, size, cam_expected, stages, prefix_layer = MODELS[name]
    torch.manual_seed(0)
    model = make()
    x = image_batch(1, size, size, seed=3)
    cam = find_cam_layer(model, x)
    assert cam == cam_expected
    first = find_input_layer(model, x)
    up = FineGrainedUpsampler(model, cam, first)
    span = up.span(up.capture((x,)), attribute_to_layer_input=True)
    components = torch.rand_like(span.activation())
    taps = stages + ([prefix_layer] if prefix_layer else [])
    pixels, tapped = up.propagate_with_taps(span, components, taps, grid=False)
    total = float(components.sum())
    for stage, relevance in zip(taps, tapped, strict=True):
        assert torch.isfinite(relevance).all()
        assert math.isclose(float(relevance.sum()), total, rel_tol=1e-3), stage
    absorbed = 0.0
    if prefix_layer:  # the class / register tokens: learned constants, like biases
        layout = TokenLayout.of(tapped[-1], x, span.capture.grids)
        assert layout.kind == "tokens" and layout.prefix >= 1
        absorbed = float(tapped[-1][:, :layout.prefix].sum())
    assert torch.isfinite(pixels).all() and pixels.shape == x.shape
    assert math.isclose(float(pixels.sum()) + absorbed, total, rel_tol=1e-3)


def explained_target(model: nn.Module, x: torch.Tensor) -> torch.Tensor | Target:
    """The classes the model predicts, or for an image tower that returns embeddings (CLIP's
    ``image_embeds``) the cosine similarity to a reference image's embedding, as
    ``tests/test_tasks.py`` explains it (a third image: an image's own embedding is the
    cosine's maximum, where its gradient vanishes)."""
    with torch.no_grad():
        output = model(x)
        embeddings = getattr(output, "image_embeds", None)
        if embeddings is not None:
            reference = model(image_batch(1, *x.shape[2:], seed=99)).image_embeds
            return Similarity(reference.expand(x.shape[0], -1))
    return getattr(output, "logits", output).argmax(dim=1)


def one_of(target: torch.Tensor | Target, i: int) -> int | Target:
    return target.take(slice(i, i + 1)) if isinstance(target, Target) else int(target[i])


HF_NAMES = [name for name in MODELS if name.startswith("transformers ")]


@pytest.mark.parametrize("name", ["timm swin", "timm vit + registers", "zoo scenes-swin",
                                  *HF_NAMES])
def test_transformer_batch_equals_the_images_one_at_a_time(name):
    make, size, _, stages, _ = MODELS[name]
    torch.manual_seed(0)
    model = make()
    x = image_batch(2, size, size, seed=4)
    target = explained_target(model, x)
    for layer, to_input in [(stages[0], False), (find_input_layer(model, x), True)]:
        fg = FGGradCam(model, layer)
        both = fg.attribute(x, target, attribute_to_layer_input=to_input)
        assert both.dim() == 4 and both.shape[1] == 1 and torch.isfinite(both).all()
        assert both.abs().sum() > 0
        for i in range(2):
            one = fg.attribute(x[i:i + 1], one_of(target, i), attribute_to_layer_input=to_input)
            torch.testing.assert_close(one[0], both[i], rtol=0,
                                       atol=1e-5 * float(both[i].abs().max()))


@pytest.mark.parametrize("name", ["transformers ViT", "transformers BEiT", "transformers Swin"])
def test_hugging_face_attention_implementations_give_the_same_maps(name):
    """``sdpa`` (``F.scaled_dot_product_attention``: AttentionRule) and ``eager`` (softmax and
    matmul written out: ProductRule), relative position bias and shifted-window mask
    included."""
    make, size, cam, stages, _ = MODELS[name]
    torch.manual_seed(0)
    fused, written = make(), make()
    written.load_state_dict(fused.state_dict())
    written.set_attn_implementation("eager")
    assert fused.config._attn_implementation == "sdpa"
    x = image_batch(2, size, size, seed=4)
    for layer, to_input in [(stages[0], False), (find_input_layer(fused, x), True)]:
        a, b = (FGGradCam(m, layer, cam_layer=cam).attribute(
            x, 1, attribute_to_layer_input=to_input) for m in (fused, written))
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-6 * float(a.abs().max()), rtol=1e-4)


def test_a_layer_returning_a_tuple_is_its_first_element():
    """Hugging Face's Swin stages return ``(hidden_states, reshaped_hidden_states, weights)``:
    as a map layer or a CAM layer, the name means the hidden states (the first element)."""
    torch.manual_seed(0)
    model = MODELS["transformers Swin"][0]()
    x = image_batch(2, 32, 32, seed=5)
    stage = FGGradCam(model, "swin.encoder.layers.0").attribute(x, 2)
    merged = FGGradCam(model, "swin.encoder.layers.0.downsample").attribute(x, 2)
    assert stage.shape == (2, 1, 4, 4) and stage.abs().sum() > 0
    assert torch.equal(stage, merged)  # the stage's hidden states: its patch merging's output
    seen = {}  # Grad-CAM at the last stage's hidden states (N x 16 tokens x C), written out
    handle = model.swin.encoder.layers[1].register_forward_hook(
        lambda module, args, output: seen.update(a=output[0]))
    logits = model(x).logits
    handle.remove()
    (gradient,) = torch.autograd.grad(logits[:, 2].sum(), seen["a"])
    expected = (gradient.mean(dim=1, keepdim=True) * seen["a"]).sum(dim=2).reshape(2, 1, 4, 4)
    got = FGGradCam(model, "swin.encoder.layers.1", cam_layer="swin.encoder.layers.1").attribute(
        x, 2)  # the CAM layer's output replaced by an autograd root inside the tuple
    torch.testing.assert_close(got, expected.detach(), atol=1e-6, rtol=1e-5)

    torch.manual_seed(0)
    model = scenes_swin().eval()
    x = image_batch(2, 96, 96, seed=5)
    fg = FGGradCam(model, "norm").attribute(x, 1)
    plain = GradCam(model, model.norm).attribute(x, 1)
    assert fg.shape == plain.shape == (2, 1, 6, 6)
    torch.testing.assert_close(fg, plain, atol=1e-6, rtol=1e-5)


def test_grad_cam_at_a_token_grid_equals_pytorch_grad_cam_with_reshape():
    gradcam = pytest.importorskip("pytorch_grad_cam")
    torch.manual_seed(0)
    model = _timm("swin_tiny_patch4_window7_224", img_size=64, window_size=2)()
    x = image_batch(2, 64, 64, seed=6)
    theirs = gradcam.GradCAM(model, [model.layers[-1].blocks[-1].norm1],
                             reshape_transform=lambda t: t.permute(0, 3, 1, 2))
    outputs = theirs.activations_and_grads(x)
    outputs[:, 2].sum().backward()
    acts = theirs.activations_and_grads.activations[0]
    grads = theirs.activations_and_grads.gradients[0]
    expected = theirs.get_cam_image(x, None, None, acts.numpy(), grads.numpy(), False)
    theirs.activations_and_grads.release()
    ours = GradCam(model, model.layers[-1].blocks[-1].norm1).attribute(x, 2)
    torch.testing.assert_close(ours[:, 0], torch.as_tensor(expected), atol=1e-5, rtol=1e-4)


# -- refusals --------------------------------------------------------------------------------

class SoftmaxFeatures(nn.Module):
    """A softmax over channels used as features: relevance would have to cross the softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv2(self.conv1(x).softmax(dim=1))
        return self.head(x.mean(dim=(2, 3)))


def test_a_softmax_that_relevance_must_cross_is_refused_before_any_work():
    model = SoftmaxFeatures().eval()
    x = image_batch(1, 16, 16)
    with pytest.raises(LayerError, match="softmax"):
        find_cam_layer(model, x)
    calls = []
    model.head.register_forward_hook(lambda *a: calls.append(1))
    fg = FGGradCam(model, "conv1", cam_layer="conv2")
    with pytest.raises(MissingRuleError, match="no relevance rule for .*softmax"):
        fg.attribute(x, 1)
    assert calls == [1]  # one recorded forward, no weighting, no propagation
