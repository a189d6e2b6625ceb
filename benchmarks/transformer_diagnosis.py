"""Why FG-CAM's denoised variants and last-stage maps fail on transformers: one experiment each.

For a zoo transformer (or CNN, as the control) on held-out scenes, prints Overall (insertion -
deletion), energy proportion and pointing of FG-Grad-CAM with one change at a time, under the
paper's blur substrate (51 / 50) and RISE's (11 / 5). Each row tests one hypothesis; a change
that moves nothing refutes it.

Denoising (the paper's: per channel, the mean over positions removed, top 10 % of the singular
triplets kept):

- *the truncation over a small token grid* (6 x 6 tokens give d = 3): centring alone, every
  triplet kept (``denoise_rank=1.0``); if this still fails, the truncation is not the cause;
- *mean removal*: the means added back (``denoise="keep-mean"``); if this recovers the plain
  map's scores, the class evidence lies in the per-channel means (every token of a last stage
  carries it), which the paper's centring deletes;
- the control: the same rows on the zoo CNN (post-ReLU activations), where centring helps.

The last stage (anti-faithful: Overall < 0, pointing 0 in docs/benchmark/transformer):

- *Grad-CAM's sign on the pre-LayerNorm stream*: FG-Grad-CAM at the last stage with the CAM
  layer at the last stage itself (Grad-CAM weights of the un-normalised tokens) against the
  default CAM layer (the final LayerNorm's output, whose per-token contributions to the logit
  are exact); if both fail alike, the CAM layer and sign are not the cause;
- *token mixing*: the same components one stage further down (through the last stage's
  attention: the FG-Grad-CAM row at the stage below); if that map is faithful while the last
  stage's is not, the last-stage tokens
  hold evidence that attention gathered from elsewhere: their own positions are not where it
  came from.

The CAM weighting (a ViT whose head reads the class token): Grad-CAM averages each channel's
gradient over the patch tokens, the right weight where the head averages the tokens (Swin) but
not where the class token's attention weighs each patch differently; FG-HiResCAM (the
per-token gradient, E = A * dy/dA) in its place. If it does not gain, the weighting is not
the cause.

The class token (a ViT): the conservation report's shares, median over the images, of the
CAM total held by the class token at each block and kept by it (never reaching a pixel), and
the share reaching the pixels.

    python benchmarks/transformer_diagnosis.py --model scenes-swin [--images 50]
"""

from __future__ import annotations

import argparse

import torch

from captum_fgcam import FGCam, conservation_report, find_input_layer, metrics, zoo
from captum_fgcam.benchmark import SceneItems, Settings, run
from captum_fgcam.methods import Explainer

#: per model: the last stage whose tokens reach the logits, and the stage below it
STAGES = {
    "scenes-swin": ("stages.2", "stages.1"),
    "scenes-vit": ("encoder.layers.encoder_layer_2", "encoder.layers.encoder_layer_1"),
    "scenes-vgg16bn": ("features.43", "features.23"),
}


def fg(model: torch.nn.Module, layer: str, example: torch.Tensor, cam_layer: str | None = None,
       weighting: str = "grad_cam", **options: object) -> Explainer:
    """FG-CAM (default FG-Grad-CAM) at ``layer`` ("input": the image, found on ``example``)
    with ``attribute`` options."""
    to_input = layer == "input"
    first = find_input_layer(model, example) if to_input else layer
    explainer = FGCam(model, first, cam_layer=cam_layer, weighting=weighting)
    return lambda x, t: explainer.attribute(x, t, attribute_to_layer_input=to_input,
                                            **options).detach()


def rows(model: torch.nn.Module, name: str, x: torch.Tensor
         ) -> dict[tuple[str, str], Explainer]:
    last, below = STAGES[name]
    out: dict[tuple[str, str], Explainer] = {}
    for layer in (below, "input"):
        out["FG-Grad-CAM", layer] = fg(model, layer, x)
        out["paper's denoising (means removed, top 10 %)", layer] = fg(model, layer, x,
                                                                       denoise=True)
        out["centring only (every triplet kept)", layer] = fg(model, layer, x, denoise=True,
                                                              denoise_rank=1.0)
        out["means kept (denoise='keep-mean')", layer] = fg(model, layer, x, denoise="keep-mean")
    if name == "scenes-vit":
        for layer in (below, "input"):
            out["FG-HiResCAM (per-token weights)", layer] = fg(model, layer, x,
                                                               weighting="hires_cam")
    if name != "scenes-vgg16bn":
        out["last stage, CAM layer default", last] = fg(model, last, x)
        out["last stage, CAM layer = last stage", last] = fg(model, last, x, cam_layer=last)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scenes-swin", choices=list(STAGES))
    parser.add_argument("--images", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = zoo.load_model(args.model).eval()
    data = SceneItems(zoo.scenes(args.model, "test", length=args.images))
    pairs = rows(model, args.model, data[0][0][None])
    print(f"# {args.model} on {args.images} held-out scenes: the diagnosis\n\n"
          "Overall (insertion - deletion) under both substrates; energy proportion and pointing "
          "(substrate-free). `python benchmarks/transformer_diagnosis.py --model "
          f"{args.model}`\n")
    results = {}
    for blur in (metrics.Blur(), metrics.Blur(11, 5)):
        settings = Settings(methods=(), layers=["input"], blur=blur, progress=False)
        results[blur.kernel_size] = run(model, data, settings, extra=pairs)
    print("| experiment | layer | Overall (51/50) | Overall (11/5) | proportion | pointing |")
    print("|---|---|---|---|---|---|")
    for method, layer in pairs:
        a, b = results[51][method, layer], results[11][method, layer]
        print(f"| {method} | `{layer}` | {a['Overall']:.3f} | {b['Overall']:.3f} | "
              f"{a['Proportion']:.3f} | {a['Pointing']:.2f} |", flush=True)
    print("\n".join(class_token_shares(model, data)))


def class_token_shares(model: torch.nn.Module, data: SceneItems) -> list[str]:
    """Markdown rows: per stage, the median share of the CAM total in the prefix tokens."""
    reports = []
    for start in range(0, len(data), 10):
        items = [data[i] for i in range(start, min(start + 10, len(data)))]
        x, labels = torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items])
        reports += conservation_report(model, x, labels)
    if not any(s.prefix_tokens for s in reports[0].stages):
        return []
    lines = ["", "| stage | median share of the CAM total in the class token |", "|---|---|"]
    for k, stage in enumerate(reports[0].stages):
        if stage.prefix_tokens:
            share = torch.tensor([r.stages[k].prefix_share for r in reports]).median()
            lines.append(f"| `{stage.layer}` | {share:.1%} |")
    for what, values in (("kept by the class token", [r.prefix for r in reports]),
                         ("reaching the pixels", [r.pixels for r in reports])):
        lines.append(f"| {what} | {torch.tensor(values).median():.1%} |")
    return lines


if __name__ == "__main__":
    main()
