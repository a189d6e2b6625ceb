"""Why does FG-CAM lose at intermediate layers, and what wins? One experiment per hypothesis.

For a zoo model's held-out scenes, at each layer (default: the paper's, e.g. features.23,
features.13, input), prints energy proportion and insertion - deletion (Overall) under the
paper's blur substrate (51 / 50) and RISE's (11 / 5) for the rivals and for FG-Grad-CAM with
one change at a time. Each row tests one hypothesis; a change that moves nothing refutes it:

- negative relevance: drop channels with negative Grad-CAM weights (``relu`` of the
  components) before propagating;
- the CAM weighting: Layer-CAM's pixel-wise weights instead of Grad-CAM's;
- denoising: FG-Grad-CAM-D (top 10 % of singular triplets) and rank 1;
- the first layer's rule (maps at the input): z+ (``rules="zplus"``) instead of z^B;
- sharpening: the denoised map raised to the power m (m = the number of scales multi-scale
  FG-CAM multiplies): a monotone transform, so Overall barely moves, but energy proportion
  rewards any sharpening; the control for the product below;
- evidence at several scales: multi-scale FG-CAM (FG-Grad-CAM-DM, the product of the
  normalised denoised maps at every resolution step);
- the substrate (diagnostic, not a method): each map times the pooled change the light blur
  makes, |x - blur_11/5(x)|; if a method gains under RISE from this, RISE's deletion rewards
  ranking edges (where a light blur changes pixels) over object interiors (where it does not).

    python benchmarks/diagnosis.py [--model scenes-vgg16bn] [--images 100] [--style held-out]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_fgcam import FGCam, MultiScaleFGCam, find_input_layer, metrics, zoo
from captum_fgcam.attr.refine import find_refine_layers
from captum_fgcam.benchmark import default_layers
from captum_fgcam.methods import INPUT, METHODS, explainers
from captum_fgcam.weightings import GradientWeighting, grad_cam

POSITIVE = GradientWeighting("positive grad_cam",
                             lambda a, g: grad_cam.components(a, g).clamp(min=0))
RIVALS = ("Grad-CAM", "Layer-CAM", "HiResCAM", "RefineCAM", "LRP")


def held_out(name: str, images: int, style: str) -> tuple[torch.nn.Module, Tensor, Tensor,
                                                          Tensor]:
    scenes = zoo.scenes(name, "test", length=images, style=style)
    items = [scenes[i] for i in range(images)]
    return (zoo.load_model(name), *(torch.stack([it[k] for it in items]) for k in range(3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="scenes-vgg16bn")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--style", default="training", choices=("training", "held-out"))
    parser.add_argument("--batch-size", type=int, default=20)
    args = parser.parse_args()
    model, x, y, masks = held_out(args.model, args.images, args.style)
    layers = default_layers(model, x[:1])
    edges = (x - metrics.RISE_BLUR(x)).abs().sum(1, keepdim=True)
    print(f"{args.model} ({args.style} generator), {args.images} held-out scenes, accuracy "
          f"{(model(x).argmax(1) == y).float().mean():.3f}")
    for layer in layers:
        to_input = layer == INPUT
        methods = [m for m in RIVALS if METHODS[m].supports(layer)]
        rows: dict[str, Callable[[Tensor, Tensor], Tensor] | None] = {
            m: f for (m, _), f in explainers(model, methods, [layer], x[:1]).items()}
        where = find_input_layer(model, x[:1]) if to_input else layer

        def fg(weighting=grad_cam, rules="conserving", where=where, to_input=to_input,
               multiscale=False, **options):
            cam = (MultiScaleFGCam if multiscale else FGCam)(model, where, weighting=weighting,
                                                              rules=rules)
            return lambda xx, t: cam.attribute(xx, t, attribute_to_layer_input=to_input,
                                               **options).detach()

        scales = len(_scales(model, layer, x[:1]))
        rows |= {
            "FG-Grad-CAM": fg(),
            "  negative weights dropped": fg(POSITIVE),
            "  Layer-CAM weighting": fg("layer_cam"),
            "FG-Grad-CAM-D": fg(denoise=True),
            "  rank 1": fg(denoise=True, denoise_rank=1),
            "  z+ at the first layer": fg(rules="zplus", denoise=True) if to_input else None,
            f"  to the power {scales} (control)": _power(fg(denoise=True), scales),
            "FG-Grad-CAM-DM (multi-scale)": fg(denoise=True, multiscale=True),
            "  with z+ at the first layer": (fg(rules="zplus", denoise=True, multiscale=True)
                                         if to_input else None),
        }
        maps = {name: _batched(f, x, y, args.batch_size)
                for name, f in rows.items() if f is not None}
        print(f"\n{layer} (multi-scale: {scales} scales)")
        print(f"{'map':34s} {'Proportion':>10s} {'Overall 51/50':>14s} {'Overall 11/5':>13s}"
              f" {'x edges 11/5':>13s}")
        for name, m in maps.items():
            prop = float(metrics.energy_proportion(m, masks).mean())
            overall = [_overall(model, x, m, y, blur) for blur in (metrics.DEFAULT_BLUR,
                                                                  metrics.RISE_BLUR)]
            gated = m.clamp(min=0) * F.adaptive_avg_pool2d(edges, m.shape[2:])
            edge = _overall(model, x, gated, y, metrics.RISE_BLUR)
            print(f"{name:34s} {prop:10.3f} {overall[0]:14.3f} {overall[1]:13.3f} {edge:13.3f}",
                  flush=True)


def _scales(model: torch.nn.Module, layer: str, example: Tensor) -> list[str]:
    scales = find_refine_layers(model, None if layer == INPUT else layer, example)
    return scales + [INPUT] if layer == INPUT else scales


def _power(explain: Callable[[Tensor, Tensor], Tensor], k: int
           ) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda xx, t: explain(xx, t).clamp(min=0) ** k


def _batched(explain: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
             size: int) -> Tensor:
    return torch.cat([explain(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)])


def _overall(model: torch.nn.Module, x: Tensor, m: Tensor, y: Tensor, blur) -> float:
    return metrics.insertion_deletion(model, x, m, y, blur=blur,
                                      batch_size=128).average_overall


if __name__ == "__main__":
    main()
