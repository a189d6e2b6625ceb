"""Score-CAM weighting: batched masked forwards, chunk-size independence, no NaN."""

from __future__ import annotations

import pytest
import torch
from conftest import image_batch
from torch import nn

from captum_fgcam import FGScoreCam
from captum_fgcam.weightings.score import channel_masks


class TinyCNN(nn.Module):
    """A small CNN whose forward takes an extra argument (Captum's additional_forward_args)."""

    def __init__(self, constant_channel: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(),
                                      nn.MaxPool2d(2))
        self.head = nn.Linear(6, 5)
        if constant_channel:
            with torch.no_grad():
                self.features[3].weight[2].zero_()
                self.features[3].bias[2].fill_(0.7)  # channel 2: constant 0.7 everywhere
                self.features[3].weight[4].zero_()
                self.features[3].bias[4].fill_(-1.0)  # channel 4: constant 0 after ReLU

    def forward(self, x: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))) * scale


def test_masked_forwards_are_batched_across_channels_and_images():
    model = TinyCNN().eval()
    sizes: list[int] = []
    model.head.register_forward_hook(lambda m, i, o: sizes.append(o.shape[0]))
    x = image_batch(3, 16, 16)
    FGScoreCam(model, model.features[0], batch_size=5).attribute(
        x, target=1, attribute_to_layer_input=True)
    # one recorded forward of the 3 images, then 3 x 6 = 18 masked images in chunks of 5
    assert sizes == [3, 5, 5, 5, 3]


def test_chunk_size_does_not_change_the_result():
    model = TinyCNN().eval()
    x = image_batch(3, 16, 16)
    target = torch.tensor([0, 3, 4])
    results = [FGScoreCam(model, model.features[3], batch_size=b).attribute(x, target=target)
               for b in (1, 4, 7, 100)]
    for r in results[1:]:
        assert torch.allclose(r, results[0], atol=1e-6, rtol=1e-5)


def test_constant_channels_give_no_nan():
    model = TinyCNN(constant_channel=True).eval()
    x = image_batch(2, 16, 16)
    acts = model.features(x)
    assert torch.all(acts[:, 2] == acts[0, 2, 0, 0]) and acts[0, 2, 0, 0] > 0
    masks = channel_masks(acts[:, 2], (16, 16))
    assert torch.all(masks == 0)  # constant non-zero channel: zero mask, not NaN
    got = FGScoreCam(model, model.features[0]).attribute(x, 2, attribute_to_layer_input=True)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("target", [1, [0, 4], torch.tensor([2, 3])])
def test_target_forms_and_additional_forward_args(target):
    model = TinyCNN().eval()
    x = image_batch(2, 16, 16)
    scale = torch.tensor([[2.0], [0.5]])
    fg = FGScoreCam(model, model.features[3], batch_size=4)
    got = fg.attribute(x, target=target, additional_forward_args=(scale,))
    per_sample = []
    for i in range(2):
        t = target if isinstance(target, int) else int(target[i])
        per_sample.append(fg.attribute(x[i:i + 1], target=t,
                                       additional_forward_args=(scale[i:i + 1],)))
    assert torch.allclose(got, torch.cat(per_sample), atol=1e-6, rtol=1e-5)
