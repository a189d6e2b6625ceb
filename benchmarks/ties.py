"""Do ties among equal map values decide insertion / deletion? A diagnosis for sparse maps.

Pixels are ranked by a stable sort, so equal values keep row-major order: a sparse map with
many exact zeros hands the order of most pixels to the image's top-left corner. For maps at
``features.13`` and at the input of ``scenes-vgg16bn``, prints the share of pixels whose value
is tied with at least 1 % of the image (after upsampling), and Overall (insertion - deletion,
the paper's substrate) with the stable order and with ties broken at random (a perturbation
far below the map's resolution).

    python benchmarks/ties.py [--images 100]
"""

from __future__ import annotations

import argparse

import torch
from scenes import held_out

from captum_fgcam import metrics
from captum_fgcam.methods import INPUT, explainers


def tied_share(maps: torch.Tensor, size: tuple[int, int]) -> float:
    """Mean share of pixels whose upsampled value is shared by >= 1 % of the image."""
    up = torch.nn.functional.interpolate(maps.sum(1, keepdim=True), size=size,
                                         mode="bilinear", align_corners=False).flatten(1)
    shares = []
    for row in up:
        _, counts = torch.unique(row, return_counts=True)
        shares.append(float(counts[counts >= 0.01 * row.numel()].sum()) / row.numel())
    return sum(shares) / len(shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    model, x, y, _ = held_out("scenes-vgg16bn", args.images)
    methods = ["FG-Grad-CAM", "FG-Grad-CAM-D", "Layer-CAM", "HiResCAM", "RefineCAM", "LRP"]
    pairs = explainers(model, methods, ["features.13", INPUT], x[:1])
    g = torch.Generator().manual_seed(0)
    print(f"scenes-vgg16bn, {args.images} held-out scenes")
    print(f"{'map':28s} {'tied pixels':>11s} {'Overall, stable':>16s} "
          f"{'Overall, random ties':>21s}")
    for (method, layer), explain in pairs.items():
        maps = torch.cat([explain(x[i:i + 25], y[i:i + 25]) for i in range(0, len(x), 25)])
        scale = maps.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-30)
        jitter = 1e-6 * scale * torch.rand(maps.shape[0], 1, *x.shape[2:], generator=g)
        upsampled = torch.nn.functional.interpolate(maps.sum(1, keepdim=True),
                                                    size=x.shape[2:], mode="bilinear",
                                                    align_corners=False)
        overall = [metrics.insertion_deletion(model, x, m, y, batch_size=128).average_overall
                   for m in (maps, upsampled + jitter)]
        print(f"{method + ' @ ' + layer:28s} {tied_share(maps, x.shape[2:]):11.3f} "
              f"{overall[0]:16.3f} {overall[1]:21.3f}", flush=True)


if __name__ == "__main__":
    main()
