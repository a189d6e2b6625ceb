"""`make demo`: Grad-CAM beside FG-Grad-CAM (with and without denoising) across layers.

Until the project ships a trained model, the demo runs on a randomly initialised VGG16-bn
(the figure says so) and a procedurally drawn scene, fully offline.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LayerGradCam

from captum_fgcam import FGGradCam
from captum_fgcam.visualization import denormalize, plot_grid

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def procedural_scene(size: int = 224, seed: int = 0) -> torch.Tensor:
    """A textured background with a disc and a triangle; normalised, 1 x 3 x H x W."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size),
                            indexing="ij")
    noise = F.interpolate(torch.rand(1, 3, size // 8, size // 8, generator=g), size=size,
                          mode="bilinear", align_corners=False)[0]
    img = 0.35 + 0.25 * noise + 0.05 * torch.sin(40 * xx + 25 * yy)
    disc = (xx - 0.32) ** 2 + (yy - 0.40) ** 2 < 0.15 ** 2
    tri = (yy > 0.55) & (yy < 0.9) & ((xx - 0.7).abs() < (yy - 0.55) * math.tan(0.5))
    img[:, disc] = torch.tensor([0.9, 0.2, 0.1])[:, None]
    img[:, tri] = torch.tensor([0.1, 0.3, 0.9])[:, None]
    return ((img - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo.png")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(0)
    model = torchvision.models.vgg16_bn(weights=None).eval()
    x = procedural_scene()
    target = int(model(x).argmax())
    layers = {"features[43] (7x7, CAM layer)": 43, "features[33] (14x14)": 33,
              "features[23] (28x28)": 23, "features[13] (56x56)": 13, "input (224x224)": -1}
    maps: dict[str, dict[str, torch.Tensor]] = {"Grad-CAM": {}, "FG-Grad-CAM": {},
                                                "FG-Grad-CAM, denoised": {}}
    for name, index in layers.items():
        layer = model.features[0] if index == -1 else model.features[index]
        if index != -1:
            maps["Grad-CAM"][name] = LayerGradCam(model, layer).attribute(x, target).detach()
        fg = FGGradCam(model, layer)
        maps["FG-Grad-CAM"][name] = fg.attribute(x, target, attribute_to_layer_input=index == -1)
        maps["FG-Grad-CAM, denoised"][name] = fg.attribute(
            x, target, attribute_to_layer_input=index == -1, denoise=True)
    fig = plot_grid(denormalize(x[0], MEAN, STD), maps, sign="positive",
                    title=f"RANDOMLY INITIALISED VGG16-bn (no trained model yet), class {target}: "
                          "positive relevance per layer")
    fig.savefig(args.out, dpi=110)
    total = maps["FG-Grad-CAM"]["features[43] (7x7, CAM layer)"].sum()
    print(f"saved {args.out} in {time.perf_counter() - start:.1f} s")
    print("conservation (sum of the FG-Grad-CAM map / sum of the components at the CAM layer):")
    for name in layers:
        print(f"  {name:32s} {float(maps['FG-Grad-CAM'][name].sum() / total):.6f}")


if __name__ == "__main__":
    main()
