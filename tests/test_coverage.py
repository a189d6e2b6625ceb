"""Every CNN users bring: torchvision, timm and Hugging Face families (and timm attention models
beyond the transformers of tests/test_transformers.py), wrappers, 1-D and 3-D
convolutions, the operations real networks use; a correct map or a clear refusal.

Each model: random weights, BatchNorm statistics randomised, FG-Grad-CAM from the CAM layer
found on the input to the image; the map sums to the components' sum within 1e-3 of their
absolute sum (per image), the batch equals the images one at a time, the model is unchanged.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import image_batch, randomise_batchnorm
from test_model_state import assert_unchanged, snapshot
from torch import nn

from captum_fgcam import (
    LRP,
    CaptureError,
    FGGradCam,
    MissingRuleError,
    PassRule,
    RoutingRule,
    SignAwareZRule,
    find_cam_layer,
    find_input_layer,
)
from captum_fgcam.propagation import ZBoxRule

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


def assert_explained(model: nn.Module, x: torch.Tensor, tol: float = 1e-3) -> float:
    """FG-Grad-CAM to the input: conservation, batch = per-sample, model unchanged; returns
    the worst relative conservation error."""
    model = randomise_batchnorm(model).eval()
    before = snapshot(model)
    with torch.no_grad():
        logits = model(x)
        logits = getattr(logits, "logits", logits)
    target = logits.argmax(dim=1)
    cam = find_cam_layer(model, x[:1])
    first = find_input_layer(model, x[:1])
    comps = FGGradCam(model, cam).attribute(x, target, attr_dim_summation=False)
    fg = FGGradCam(model, first, cam_layer=cam)
    got = fg.attribute(x, target, attribute_to_layer_input=True)
    assert got.shape == (x.shape[0], 1, *x.shape[2:]) and torch.isfinite(got).all()
    worst = 0.0
    for i in range(x.shape[0]):
        scale = float(comps[i].abs().sum())
        assert scale > 0
        error = abs(float(got[i].sum() - comps[i].sum())) / scale
        worst = max(worst, error)
        single = fg.attribute(x[i:i + 1], int(target[i]), attribute_to_layer_input=True)
        torch.testing.assert_close(single[0], got[i], rtol=0,
                                   atol=1e-5 * float(got[i].abs().max()) + 1e-12)
    assert worst <= tol, worst
    assert_unchanged(model, before)
    return worst


TORCHVISION = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
               "googlenet", "inception_v3", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small",
               "mobilenet_v3_large", "regnet_x_400mf", "regnet_y_400mf", "resnet18",
               "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "vgg11_bn",
               "wide_resnet50_2"]


def torchvision_case(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A torchvision model (random weights) and two images it accepts."""
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name in (
        "googlenet", "inception_v3") else {}
    model = getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs)
    size = 80 if name == "inception_v3" else 64
    return model, image_batch(2, size, size, seed=4)


def timm_case(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10), image_batch(2, 64, 64, 5)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_family(name):
    assert_explained(*torchvision_case(name))


TIMM = ["resnet18", "resnext26ts", "seresnet18", "convnext_atto", "convnextv2_atto",
        "efficientnet_b0", "mobilenetv3_small_050", "regnety_002", "regnetx_002", "densenet121",
        "cs3darknet_s", "ghostnet_050", "repvgg_a0", "rexnet_100", "dla34", "hrnet_w18_small",
        "res2net50_14w_8s", "nf_resnet26", "dm_nfnet_f0", "tresnet_m", "fastvit_t8"]


@pytest.mark.parametrize("name", TIMM)
def test_timm_family(name):
    assert_explained(*timm_case(name))


def hugging_face_models() -> dict[str, nn.Module]:
    t = transformers
    head = {"num_labels": 10}
    widths = {"hidden_sizes": [16, 32, 48, 64], "depths": [1, 1, 1, 1]}
    return {
        "ResNet": t.ResNetForImageClassification(t.ResNetConfig(embedding_size=16, **widths,
                                                                **head)),
        "ConvNext": t.ConvNextForImageClassification(t.ConvNextConfig(**widths, **head)),
        "ConvNextV2": t.ConvNextV2ForImageClassification(t.ConvNextV2Config(**widths, **head)),
        "RegNet": t.RegNetForImageClassification(t.RegNetConfig(
            embedding_size=16, groups_width=8, **widths, **head)),
        "MobileNetV1": t.MobileNetV1ForImageClassification(t.MobileNetV1Config(
            depth_multiplier=0.25, **head)),
        "MobileNetV2": t.MobileNetV2ForImageClassification(t.MobileNetV2Config(
            depth_multiplier=0.35, **head)),
        "EfficientNet": t.EfficientNetForImageClassification(t.EfficientNetConfig(
            width_coefficient=0.5, depth_coefficient=0.5, hidden_dim=640, image_size=64, **head)),
    }


@pytest.mark.parametrize("name", ["ResNet", "ConvNext", "ConvNextV2", "RegNet", "MobileNetV1",
                                  "MobileNetV2", "EfficientNet"])
def test_hugging_face_family(name):
    torch.manual_seed(0)
    assert_explained(hugging_face_models()[name], image_batch(2, 64, 64, seed=6))


# -- wrappers ------------------------------------------------------------------------------

class Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def test_wrapped_models_give_the_plain_models_maps():
    torch.manual_seed(0)
    hf = randomise_batchnorm(hugging_face_models()["ResNet"]).eval()
    x = image_batch(2, 64, 64, seed=7)
    name = "resnet.encoder.stages.2"
    plain = FGGradCam(hf, name).attribute(x, [1, 2])
    wrapped = Logits(hf)
    assert torch.equal(FGGradCam(wrapped, "model." + name).attribute(x, [1, 2]), plain)
    tv = randomise_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10)).eval()
    plain = FGGradCam(tv, "layer2").attribute(x, [1, 2])
    for wrapper in (nn.DataParallel(tv), torch.compile(tv)):
        assert torch.equal(FGGradCam(wrapper, "layer2").attribute(x, [1, 2]), plain)
    with pytest.raises(TypeError, match="TorchScript"):
        FGGradCam(torch.jit.script(tv), "layer2")


def test_distributed_data_parallel_gives_the_plain_models_maps(tmp_path):
    import torch.distributed as dist

    torch.manual_seed(0)
    tv = randomise_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10)).eval()
    x = image_batch(2, 64, 64, seed=7)
    plain = FGGradCam(tv, "layer2").attribute(x, [1, 2])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0,
                            world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(tv)
        assert torch.equal(FGGradCam(ddp, "layer2").attribute(x, [1, 2]), plain)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused_before_any_work(dtype):
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval().to(dtype)
    with pytest.raises(TypeError, match="half precision.*float32 copy"):
        FGGradCam(model, "layer2").attribute(image_batch(1, 32, 32).to(dtype), 1)


# -- 1-D and 3-D -----------------------------------------------------------------------------

def block(conv: type, norm: type, c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(conv(c_in, c_out, 3, padding=1), norm(c_out), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, conv: type, norm: type, c: int) -> None:
        super().__init__()
        self.body = block(conv, norm, c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def signal_cnn() -> nn.Module:
    """A Conv1d classifier of 2-channel signals."""
    return nn.Sequential(block(nn.Conv1d, nn.BatchNorm1d, 2, 8), nn.MaxPool1d(2),
                         Residual(nn.Conv1d, nn.BatchNorm1d, 8), block(nn.Conv1d, nn.BatchNorm1d,
                                                                       8, 16),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 4))


def volume_cnn() -> nn.Module:
    """A Conv3d classifier of 1-channel volumes (or clips)."""
    return nn.Sequential(block(nn.Conv3d, nn.BatchNorm3d, 1, 4), nn.MaxPool3d(2),
                         Residual(nn.Conv3d, nn.BatchNorm3d, 4), nn.AvgPool3d(2),
                         block(nn.Conv3d, nn.BatchNorm3d, 4, 8), nn.AdaptiveAvgPool3d(1),
                         nn.Flatten(), nn.Linear(8, 3))


@pytest.mark.parametrize("make,shape,stages", [
    (signal_cnn, (2, 2, 40), ["0", "1", "2"]),
    (volume_cnn, (2, 1, 8, 12, 12), ["0", "1", "2", "3"]),
])
def test_one_and_three_dimensional_cnns_at_every_resolution(make, shape, stages):
    torch.manual_seed(0)
    model, x = randomise_batchnorm(make()).eval(), torch.randn(*shape)
    assert_explained(model, x)
    cam = find_cam_layer(model, x)
    comps = FGGradCam(model, cam).attribute(x, 1, attr_dim_summation=False)
    for stage in stages:
        got = FGGradCam(model, stage, cam_layer=cam).attribute(x, 1)
        assert got.dim() == x.dim()
        assert abs(float(got.sum() - comps.sum())) <= 1e-3 * float(comps.abs().sum())


# -- operations ------------------------------------------------------------------------------

class Zoo(nn.Module):
    """Normalisation inside the model, an identity and a dropout in front of the first
    convolution, and the operations of the issue's list."""

    def __init__(self, normalise: bool = True, front: bool = True) -> None:
        super().__init__()
        self.normalise, self.front = normalise, front
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).reshape(1, 3, 1, 1))
        self.identity, self.dropout = nn.Identity(), nn.Dropout(0.3)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.prelu, self.leaky, self.elu = nn.PReLU(8), nn.LeakyReLU(0.1), nn.ELU()
        self.group, self.instance = nn.GroupNorm(2, 8), nn.InstanceNorm2d(8, affine=True)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            x = (x - self.mean) / self.std
        if self.front:
            x = self.dropout(self.identity(x))
        x = self.instance(self.group(self.elu(self.leaky(self.prelu(self.conv1(x))))))
        a, b = torch.chunk(x, 2, dim=1)
        x = torch.cat([b.clamp(min=-1, max=3), a], dim=1).relu_()
        x = self.up(self.conv2(x)) + F.interpolate(x, scale_factor=1.0, mode="nearest")
        x = F.relu(self.conv3(x))
        return self.head(x.mean((2, 3)))


def test_every_operation_family_conserves():
    torch.manual_seed(0)
    assert_explained(Zoo(), torch.rand(2, 3, 16, 16), tol=1e-3)


def test_normalising_inside_equals_normalising_outside_and_front_modules_keep_z_box():
    torch.manual_seed(0)
    inside = Zoo().eval()
    outside = Zoo(normalise=False, front=False).eval()
    outside.load_state_dict(inside.state_dict())
    raw = torch.rand(2, 3, 16, 16)
    normalised = (raw - inside.mean) / inside.std
    torch.testing.assert_close(inside(raw), outside(normalised))
    a = FGGradCam(inside, "conv1", cam_layer="conv3").attribute(
        raw, 1, attribute_to_layer_input=True)
    b = FGGradCam(outside, "conv1", cam_layer="conv3").attribute(
        normalised, 1, attribute_to_layer_input=True)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))
    # the first convolution keeps z^B behind the normalisation, identity and dropout
    fg = FGGradCam(inside, "conv1", cam_layer="conv3")
    span = fg.upsampler.span(fg.upsampler.capture((raw,)), attribute_to_layer_input=True)
    assert isinstance(next(s.rule for n, s in span.steps.items() if n.target == "conv1"), ZBoxRule)


class Unknown(nn.Module):
    """Operations the rule table does not know: a rotation (moves elements), a cumulative sum
    (sums with non-negative weights), an element-wise logistic function."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cumsum(torch.rot90(F.relu(self.conv1(x)), 1, (2, 3)), dim=3)
        x = torch.special.expit(self.conv2(x))
        return self.head(x.mean((2, 3)))


def test_every_missing_rule_suggestion_is_a_rule_that_works():
    torch.manual_seed(0)
    model = Unknown().eval()
    x = torch.rand(1, 3, 8, 6)
    known: dict = {}
    for name, rule in [("rot90", RoutingRule()), ("cumsum", SignAwareZRule())]:
        with pytest.raises(MissingRuleError, match=rf"{name}.*rules={{'{name}': "
                                                   rf"{type(rule).__name__}\(\)}}"):
            FGGradCam(model, "conv1", cam_layer="conv2", rules=known).attribute(x, 1)
        known[name] = rule
    comps = FGGradCam(model, "conv2").attribute(x, 1)
    fixed = FGGradCam(model, "conv1", cam_layer="conv2", rules=known).attribute(x, 1)
    assert torch.allclose(fixed.sum(), comps.sum(), rtol=1e-4)
    with pytest.raises(MissingRuleError,
                       match=r"expit.*rules=\{'special_expit': PassRule\(\)\}"):
        LRP(model, "conv1", rules=known).attribute(x, 1)  # from the logits, through expit
    head = LRP(model, "conv1", rules={**known, "special_expit": PassRule()})
    assert torch.isfinite(head.attribute(x, 1)).all()


# -- refusals --------------------------------------------------------------------------------

# attention models beyond the transformers issue's list (tests/test_transformers.py has those):
# mobile attention, talking heads, gated positional attention, SwiGLU and rotary embeddings,
# attention biases, distillation tokens, factorised attention
TIMM_ATTENTION = [("mobilevitv2_050", 64), ("levit_128s", 64), ("convit_tiny", 64),
                  ("cait_xxs24_224", 64), ("eva02_tiny_patch14_224", 56),
                  ("coat_lite_tiny", 64), ("deit_tiny_distilled_patch16_224", 64)]


@pytest.mark.parametrize("name, size", TIMM_ATTENTION)
def test_timm_attention_family(name, size):
    torch.manual_seed(0)
    kwargs = {} if name.startswith("mobilevit") else {"img_size": size}
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    assert_explained(model, image_batch(2, size, size, 5))


class Hidden(nn.Module):
    """Computes part of its output outside torch functions (through numpy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.detach().numpy() * 2.0)


class Overwrites(nn.Module):
    """Overwrites an activation in place with an index assignment."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 1.0
        y[:, :1] = 0.0
        return y


@pytest.mark.parametrize("middle,message", [(Hidden(), "cannot see"),
                                            (Overwrites(), "in place")])
def test_operations_relevance_cannot_follow_are_refused(middle, message):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), middle, nn.ReLU(), nn.Conv2d(4, 4, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    with pytest.raises(CaptureError, match=message):
        FGGradCam(model, "0", cam_layer="3").attribute(image_batch(1, 16, 16), 1)
