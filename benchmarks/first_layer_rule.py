"""Which rule at the first layer (the one the image feeds) gives the most faithful pixel maps?

A diagnosis for the faithfulness issue: the paper's z^B rule divides a first-layer neuron's
relevance by w x - w+ l - w- h, so it spreads relevance over the whole receptive field whatever
the pixels' contrast; the sign-aware z+ rule follows the pixels' actual contributions. Prints
insertion - deletion (Overall) and energy proportion at the input of ``scenes-vgg16bn`` on
held-out scenes, for FG-Grad-CAM with and without denoising under three first-layer rules
(the default preset's z^B, the "zplus" preset's z+, and epsilon),
beside RefineCAM, under the paper's blur substrate (51 / 50) and RISE's (11 / 5).

    python benchmarks/first_layer_rule.py [--images 100]
"""

from __future__ import annotations

import argparse

import torch
from scenes import held_out

from captum_fgcam import EpsilonRule, FGGradCam, RefineCam, metrics
from captum_fgcam.attr.refine import find_refine_layers
from captum_fgcam.propagation import FedByInput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    model, x, y, masks = held_out("scenes-vgg16bn", args.images)
    first = {"z^B (the paper's)": "conserving", "z+": "zplus",
             "epsilon": {FedByInput(): EpsilonRule(1e-9)}}
    maps = {}
    for rule_name, rules in first.items():
        fg = FGGradCam(model, "features", rules=rules)
        for denoise in (False, True):
            name = f"FG-Grad-CAM{'-D' if denoise else ''}, {rule_name} first"
            maps[name] = torch.cat([
                fg.attribute(x[i:i + 25], y[i:i + 25], attribute_to_layer_input=True,
                             denoise=denoise).detach() for i in range(0, len(x), 25)])
    refine = RefineCam(model, find_refine_layers(model, None, x[:1]))
    maps["RefineCAM"] = refine.attribute(x, y, size=x.shape[2:])
    print(f"scenes-vgg16bn, {args.images} held-out scenes, maps at the input")
    print(f"{'map':40s} {'Proportion':>10s} {'Overall (51/50)':>16s} {'Overall (11/5)':>15s}")
    for name, m in maps.items():
        overall = [metrics.insertion_deletion(model, x, m, y, blur=blur,
                                              batch_size=128).average_overall
                   for blur in (metrics.DEFAULT_BLUR, metrics.RISE_BLUR)]
        proportion = float(metrics.energy_proportion(m, masks).mean())
        print(f"{name:40s} {proportion:10.3f} {overall[0]:16.3f} {overall[1]:15.3f}",
              flush=True)


if __name__ == "__main__":
    main()
