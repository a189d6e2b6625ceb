"""Measured conservation through transformers, per model: the README's Transformers table.

The models, sizes and components are those of ``tests/test_transformers.py`` (random weights,
one image, random positive components at the CAM layer found): the relevance entering every
tapped stage and the pixels, as max |sum(R) - sum(E)| / sum(E), and the share a ViT's class
and register tokens (learned constants) keep.

    python benchmarks/transformer_conservation.py        # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_transformers as cases  # noqa: E402
from conftest import image_batch  # noqa: E402

from captum_fgcam import (  # noqa: E402
    FineGrainedUpsampler,
    TokenLayout,
    find_cam_layer,
    find_input_layer,
)


def measure(name: str) -> tuple[str, str, float, float, float]:
    make, size, _, stages, prefix_layer = cases.MODELS[name]
    torch.manual_seed(0)
    model = make()
    x = image_batch(1, size, size, seed=3)
    cam = find_cam_layer(model, x)
    up = FineGrainedUpsampler(model, cam, find_input_layer(model, x))
    span = up.span(up.capture((x,)), attribute_to_layer_input=True)
    components = torch.rand_like(span.activation())
    taps = stages + ([prefix_layer] if prefix_layer else [])
    pixels, tapped = up.propagate_with_taps(span, components, taps, grid=False)
    total = float(components.sum())
    stage_error = max(abs(float(r.sum()) - total) / total for r in tapped)
    absorbed = 0.0
    if prefix_layer:
        layout = TokenLayout.of(tapped[-1], x, span.capture.grids)
        absorbed = float(tapped[-1][:, :layout.prefix].sum()) / total
    pixel_error = abs(float(pixels.sum()) / total + absorbed - 1)
    return name, cam, stage_error, pixel_error, absorbed


def main() -> None:
    print("| model | CAM layer found | stages: max relative error | pixels (+ prefix tokens): "
          "relative error | kept by class / register tokens |")
    print("|---|---|---|---|---|")
    for name in cases.MODELS:
        name, cam, stages, pixels, absorbed = measure(name)
        print(f"| {name} | `{cam}` | {stages:.1e} | {pixels:.1e} | {absorbed:.1%} |", flush=True)


if __name__ == "__main__":
    main()
