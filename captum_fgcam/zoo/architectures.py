"""The zoo's architectures, sized for 96 x 96 ``Scenes`` images and six classes."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import VGG
from torchvision.models.resnet import BasicBlock
from torchvision.models.vgg import make_layers

from .wall import WallNet

# torchvision's VGG16 configuration "D" at 1/16 of the widths (1/8 in the last block): the same
# module indices, so features[13], [23], [33], [43] are the max pools as in vgg16_bn.
VGG16_NARROW: list[int | str] = [4, 4, "M", 8, 8, "M", 16, 16, 16, "M",
                                 32, 32, 32, "M", 64, 64, 64, "M"]
# A shallower VGG (configuration "A", same widths) behind the wall.
VGG11_NARROW: list[int | str] = [4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 64, 64, "M"]


def _head(channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True),
                         nn.Dropout(0.2), nn.Linear(channels, num_classes))


def scenes_vgg16bn(num_classes: int = 6) -> VGG:
    """torchvision's ``VGG`` with VGG16-bn's ``features`` layout, global pooling, small head."""
    model = VGG(make_layers(VGG16_NARROW, batch_norm=True), num_classes=num_classes)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = _head(VGG16_NARROW[-2], num_classes)
    return model


class SmallResNet(nn.Module):
    """A ResNet-10 of torchvision ``BasicBlock``s with widths 16-32-64-128 (torchvision names)."""

    def __init__(self, num_classes: int = 6, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, inplanes = [], widths[0]
        for k, planes in enumerate(widths):
            stride = 1 if k == 0 else 2
            downsample = None if stride == 1 else nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
            stages.append(nn.Sequential(BasicBlock(inplanes, planes, stride, downsample)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def scenes_resnet(num_classes: int = 6) -> SmallResNet:
    return SmallResNet(num_classes)


def scenes_wall(num_classes: int = 6, size: int = 96) -> WallNet:
    """A VGG11-bn-like network behind a wall hiding rows ``size // 2`` and below."""
    return WallNet(make_layers(VGG11_NARROW, batch_norm=True), _head(VGG11_NARROW[-2], num_classes),
                   size, size, size // 2)


def scenes_vgg16bn_fc_wall(num_classes: int = 6, size: int = 96) -> VGG:
    """The wall *after* the CAM layer (Taimeskhanov et al.'s construction): VGG16-bn's
    ``features`` without the last max pool (the last grid: ``features.42``'s 6 x 6 output at
    96 px), flattened into a first linear layer whose weights for the bottom half of the grid's
    rows are zero, and kept zero in training (their gradient is masked; AdamW leaves zeros at
    zero). The feature maps span the whole image; the classifier never reads the bottom rows.
    ``model.unseen_mask(h, w)`` marks the image rows those grid rows cover.
    """
    layers = make_layers(VGG16_NARROW[:-1], batch_norm=True)
    model = VGG(layers, num_classes=num_classes)
    channels, grid = VGG16_NARROW[-2], size // 16
    model.avgpool = nn.Flatten()  # torchvision's VGG slot before its flatten: no pooling here
    first = nn.Linear(channels * grid * grid, channels)
    read = torch.ones(channels, grid, grid)
    read[:, grid // 2:, :] = 0  # bottom half of the rows: never read
    read = read.flatten().expand(channels, -1).clone()
    with torch.no_grad():
        first.weight.mul_(read)
    first.weight.register_hook(lambda g: g * read)
    model.classifier = nn.Sequential(first, nn.ReLU(inplace=True), nn.Dropout(0.2),
                                     nn.Linear(channels, num_classes))
    model.unseen_mask = lambda h, w: _bottom_half(h, w)  # type: ignore[assignment]
    return model


def _bottom_half(height: int, width: int) -> torch.Tensor:
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[height // 2:] = True
    return mask
