"""FG-CAM against the methods built for transformers, on the zoo's ViT and Swin: the tables.

For each zoo transformer, on held-out scenes, at every stage and the pixels, under both blur
substrates (the paper's 51 / 50 and RISE's 11 / 5): our FG-Grad-CAM (plain, the paper's
denoising -D, the means kept -DK), FG-HiResCAM, our LRP through attention, Grad-CAM (token
grids reshaped) and Layer-CAM, and the peers of ``transformer_peers.py``: AttnLRP (LXT),
HiLRP, attention rollout, Chefer et al. (ICCV 2021) and LeGrad. Writes ``OUT/paper`` and
``OUT/rise`` (the benchmark's CSV / Markdown / PNG) and ``OUT/time.md``: each method's time
per image at the pixels as a ratio to one forward plus backward, on a batch of 8.

The peers are test-only extras, installed by ``make transformer``:
``pip install --no-deps lxt==2.1`` and ``pip install --no-deps --ignore-requires-python
hilrp==0.2.0`` (HiLRP asks for Python >= 3.11.11; its ViT port runs on 3.11.7).

    python benchmarks/transformer_comparison.py --model scenes-vit [--images 50]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import transformer_peers as peers  # noqa: E402

from captum_fgcam import metrics, zoo  # noqa: E402
from captum_fgcam.benchmark import SceneItems, Settings, explainers, run, write_tables  # noqa: E402
from captum_fgcam.benchmark.runner import describe  # noqa: E402

#: per zoo model: the peers' kind and the stages benchmarked (deepest first), then the pixels.
#: The ViT's last block is left out: its patch tokens reach no logit (the head reads the class
#: token), so every method's map there is 0.
MODELS = {
    "scenes-vit": ("vit", ["encoder.layers.encoder_layer_2", "encoder.layers.encoder_layer_1",
                           "encoder.layers.encoder_layer_0"]),
    "scenes-swin": ("swin", ["stages.2", "stages.1", "stages.0"]),
}
OURS = ("Grad-CAM", "Layer-CAM", "FG-Grad-CAM", "FG-Grad-CAM-D", "FG-Grad-CAM-DK", "FG-HiResCAM",
        "LRP")
SUBSTRATES = {"paper": metrics.Blur(), "rise": metrics.Blur(11, 5)}


def timings(model: torch.nn.Module, data: SceneItems, kind: str, stage: str
            ) -> list[tuple[str, float]]:
    """(method, time per image over one forward + backward) at the pixels (the plain CAMs at
    ``stage``), a batch of 8."""
    count = min(8, len(data))
    images = torch.stack([data[i][0] for i in range(count)])
    targets = torch.tensor([data[i][1] for i in range(count)])
    plain = [m for m in OURS if "CAM" in m and not m.startswith("FG-")]
    ours = explainers(model, plain, [stage], images[:1]) | explainers(
        model, [m for m in OURS if m not in plain], ["input"], images[:1])
    theirs = peers.peer_explainers(model, kind, ["input"])
    return [(method if layer == "input" else f"{method} (at `{layer}`)",
             peers.time_per_image(explain, images, targets, model))
            for (method, layer), explain in (ours | theirs).items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scenes-vit", choices=list(MODELS))
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmark/transformer"))
    parser.add_argument("--only", choices=("tables", "time"),
                        help="the tables or the timings only (timings want a quiet machine)")
    args = parser.parse_args()
    kind, stages = MODELS[args.model]
    layers = [*stages, "input"]
    model = zoo.load_model(args.model).eval()
    data = SceneItems(zoo.scenes(args.model, "test", length=args.images))
    out = args.out / args.model
    skipped = "; ".join(f"{m}: {why}" for (m, k), why in peers.NOT_APPLICABLE.items()
                        if k == kind)
    for name, blur in SUBSTRATES.items() if args.only != "time" else ():
        settings = Settings(methods=OURS, layers=layers, blur=blur, progress=False)
        results = run(model, data, settings, extra=peers.peer_explainers(model, kind, layers))
        notes = describe(settings) + (f" Not applicable here: {skipped}." if skipped else "")
        paths = write_tables(results, out / name, f"{args.model} on {args.images} held-out "
                             "scenes: FG-CAM and the transformer methods", notes=notes)
        print(paths[1].read_text(), flush=True)
    if args.only == "tables":
        return
    torch.manual_seed(0)
    rows = timings(model, data, kind, stages[-1])
    lines = [f"# {args.model}: time per image at the pixels / one forward + backward", "",
             f"Batch of 8 scenes, {torch.get_num_threads()} threads, median of 3 after one "
             "warm-up.", "", "| method | time ratio |", "|---|---|",
             *(f"| {m} | {r:.2f} |" for m, r in rows)]
    (out / "time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
