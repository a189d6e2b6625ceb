"""`make demo`: the paper's Figure 3 on the project's trained model and a held-out scene.

Rows: Grad-CAM, Score-CAM, Layer-CAM (plain CAMs at each layer), FG-Grad-CAM with and
without denoising, multi-scale FG-Grad-CAM-DM (our variant beside the paper's: the product of
the normalised denoised maps at every resolution step; scores in [0, 1], drawn on each map's
own scale), FG-Score-CAM (propagated from the CAM layer), LRP (from the logits, at the input).
Columns: the CAM layer ``features.43``, ``features.33``, ``.23``, ``.13`` and the input. Then a
short metrics table on a few held-out scenes, and relevance conservation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib
import torch
from matplotlib.backend_bases import FigureCanvasBase

from captum_fgcam import zoo
from captum_fgcam.benchmark import SceneItems, Settings, run
from captum_fgcam.datasets import Scenes
from captum_fgcam.methods import INPUT, METHODS, explainers
from captum_fgcam.outputs import OutputError, check_outputs, written
from captum_fgcam.visualization import denormalize, plot_grid

MODEL = "scenes-vgg16bn"
CAM_LAYER = "features.43"
LAYERS = [CAM_LAYER, "features.33", "features.23", "features.13", INPUT]
ROWS = ["Grad-CAM", "Score-CAM", "Layer-CAM", "FG-Grad-CAM", "FG-Grad-CAM-D", "FG-Grad-CAM-DM",
        "FG-Score-CAM", "LRP"]
METRICS = ["A.D.", "A.I.", "Overall", "Proportion"]


def figure_maps(model: torch.nn.Module, x: torch.Tensor,
                target: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """``maps[method][column]`` for the figure (plain CAMs have no map at the input)."""
    maps: dict[str, dict[str, torch.Tensor]] = {row: {} for row in ROWS}
    for (method, layer), explain in explainers(model, ROWS, LAYERS, x, benchmark=True).items():
        side = x.shape[-1] if layer == INPUT else None
        label = f"input ({side}x{side})" if side else layer
        maps[method][label] = explain(x, target).detach()
    return maps


def _column_titles(maps: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    """Column names with each layer's resolution (``features.33 (6x6)``)."""
    sizes = {col: m.shape[-1] for row in maps.values() for col, m in row.items()}
    named = {col: col if col.startswith("input") else f"{col} ({sizes[col]}x{sizes[col]})"
             for col in sizes}
    named[CAM_LAYER] += ", CAM layer"
    return {row: {named[c]: m for c, m in cols.items()} for row, cols in maps.items()}


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every option before any work: one line and exit code 2 (``parser.error``) otherwise."""
    if args.index < 0:
        parser.error(f"--index {args.index}: give a scene index of 0 or more")
    if args.images < 1:
        parser.error(f"--images {args.images}: give at least 1 image")
    if Path(args.out).suffix.lstrip(".") not in FigureCanvasBase.get_supported_filetypes():
        parser.error(f"--out {args.out}: use a figure file name such as demo.png")
    try:
        check_outputs([("--out", Path(args.out))],
                      [(f"the weights file of {MODEL}", zoo.checkpoint_path(MODEL))])
    except OutputError as err:
        parser.error(str(err))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo.png")
    parser.add_argument("--index", type=int, default=3, help="which held-out scene to show")
    parser.add_argument("--images", type=int, default=8, help="scenes for the metrics table")
    args = parser.parse_args(argv)
    _check(parser, args)
    matplotlib.use("Agg")  # the figure is saved, never shown
    start = time.perf_counter()
    model = zoo.load_model(MODEL)
    scenes = zoo.scenes(MODEL, "test", length=max(args.images, args.index + 1))
    image, label, _, _ = scenes[args.index]
    x, target = image[None], torch.tensor([int(label)])
    predicted = int(model(x).argmax())
    maps = _column_titles(figure_maps(model, x, target))
    title = (f"{MODEL} (trained on the embedded scenes), held-out scene {args.index}: "
             f"class '{Scenes.classes[int(label)]}' (predicted '{Scenes.classes[predicted]}'); "
             "positive relevance per pixel, one colour scale per method, ΣR = each map's total")
    fig = plot_grid(denormalize(image, Scenes.mean, Scenes.std), maps, sign="positive",
                    title=title, scale="method",
                    scores=[row for row in ROWS if METHODS[row].scores])
    with written(Path(args.out)) as partial:
        fig.savefig(partial)
    print(f"saved {args.out}")

    fg = maps["FG-Grad-CAM"]
    total = next(m for c, m in fg.items() if "CAM layer" in c).sum()
    print("conservation, FG-Grad-CAM (map sum / component sum at the CAM layer):")
    for column, m in fg.items():
        print(f"  {column:34s} {float(m.sum() / total):.6f}")

    settings = Settings(methods=ROWS, layers=["features.13", INPUT], progress=False)
    results = run(model, SceneItems(scenes), settings)
    print(f"\nmetrics on {len(scenes)} held-out scenes (A.D. lower, the others higher is better;"
          " `captum-fgcam benchmark` for the full tables):")
    print(f"  {'method':16s} {'layer':12s} " + " ".join(f"{m:>10s}" for m in METRICS))
    for (method, layer), r in results.items():
        print(f"  {method:16s} {layer:12s} " + " ".join(f"{r[m]:10.3f}" for m in METRICS))
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
