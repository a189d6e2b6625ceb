"""Methods x layers x metrics over a dataset, sharded across processes, as the paper's tables.

Every process (``torchrun`` rank) explains the images ``rank, rank + world, ...``; the metric
sums are all-reduced with ``torch.distributed`` at the end, so any number of processes gives
the numbers one process gives. Per (method, layer) the sums are::

    A.D. = 100/N sum max(0, Y - O)/Y,   A.I. = 100/N sum 1[Y < O],
    Insertion, Deletion = mean AUC,     Overall = Insertion - Deletion,
    Proportion = mean over localisable images of (map+ inside object) / (map+ everywhere),
    Pointing = share of localisable images whose maximum lies on the object,
    Unseen = mean share of map+ behind the model's wall (``model.unseen_mask``: the pixels it
        cannot see, or for a wall after the CAM layer the rows its classifier never reads),
    Dead zone = Taimeskhanov et al.'s ||minmax(map) behind the wall||_2 / ||minmax(map)||_2.
"""

from __future__ import annotations

import csv
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from .. import metrics
from ..arguments import TargetType
from ..methods import INPUT, METHODS, PAPER_METHODS, Explainer, explainers
from ..outputs import written
from ..propagation import find_cam_layer
from ..targets import Detection, SegmentationRegion

#: Columns of the per-(method, layer) sum vector, in order.
SUMS = ("images", "drop", "increase", "insertion", "deletion", "localisable", "proportion",
        "pointing", "walled", "unseen", "dead")
#: Reported metrics: name -> (numerator, denominator, scale).
REPORTED = {
    "A.D.": ("drop", "images", 1.0),
    "A.I.": ("increase", "images", 100.0),
    "Insertion": ("insertion", "images", 1.0),
    "Deletion": ("deletion", "images", 1.0),
    "Overall": (None, "images", 1.0),
    "Proportion": ("proportion", "localisable", 1.0),
    "Pointing": ("pointing", "localisable", 1.0),
    "Unseen": ("unseen", "walled", 1.0),
    "Dead zone": ("dead", "walled", 1.0),
}
LOWER_IS_BETTER = ("A.D.", "Deletion", "Unseen", "Dead zone")


@dataclass
class Settings:
    """What to run; defaults follow the paper's protocol (docs/benchmarks.md#the-protocol)."""

    methods: Sequence[str] = PAPER_METHODS
    layers: Sequence[str] = ()
    batch_size: int = 8  # images explained together
    metric_batch_size: int = 128  # perturbed images per forward pass
    pixels_per_step: int = 448  # insertion / deletion (112 steps at 224 x 224)
    steps: int | None = None  # overrides pixels_per_step when set
    keep: float = 0.5  # A.D. / A.I.: fraction of pixels kept
    blur: metrics.Blur = field(default_factory=metrics.Blur)
    use_softmax: bool = True
    progress: bool = True
    rules: str = "conserving"  # FG-CAM's and LRP's relevance rule preset
    task: str = "classification"  # what is explained (task_target)


def default_layers(model: nn.Module, example: Tensor | None = None) -> list[str]:
    """The paper's layers for the VGG16 layout (features 33, 23, 13, input; a segmenter's
    ``backbone`` alike); the stage outputs below the last for ResNet-style models (a
    detector's ``backbone.body`` alike: those at or below its CAM layer); otherwise the CAM
    layer (found on ``example``, a batch of inputs) and the input."""
    names = dict(model.named_modules())
    for prefix in ("", "backbone.", "backbone.body."):
        layers = []
        if all(f"{prefix}features.{i}" in names for i in (13, 23, 33, 43)):
            layers = [f"{prefix}features.{i}" for i in (33, 23, 13)]
        elif all(f"{prefix}{i}" in names for i in (13, 23, 33)) and prefix:
            layers = [f"{prefix}{i}" for i in (33, 23, 13)]
        elif all(f"{prefix}layer{i}" in names for i in (1, 2, 3, 4)):
            layers = [f"{prefix}layer{i}" for i in (3, 2, 1)]
        if layers and prefix:  # a dense model: the layers at or below its CAM layer
            order = list(names)
            cam = order.index(find_cam_layer(model, example))
            layers = [layer for layer in layers if order.index(layer) <= cam]
        if layers:
            return [*layers, INPUT]
    return [find_cam_layer(model, example), INPUT]


def task_target(task: str, labels: Tensor, masks: Tensor) -> TargetType:
    """What the benchmark explains in each image, from its object's class and mask:
    classification: the class; segmentation: the object class's logits over the object's
    mask (:class:`SegmentationRegion`, class 0 the background); detection: the detection of
    the object's class overlapping its box most, by IoU >= 0.5 (:class:`Detection`; ``masks``
    are the filled boxes)."""
    if task == "segmentation":
        return SegmentationRegion(labels + 1, masks)
    if task == "detection":
        return Detection(box=filled_boxes(masks), label=labels)
    return labels


def filled_boxes(masks: Tensor) -> Tensor:
    """(x1, y1, x2, y2) of filled-box masks (N x H x W), ends exclusive."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    def span(hits: Tensor) -> tuple[Tensor, Tensor]:
        index = torch.arange(hits.shape[1], device=hits.device).expand_as(hits)
        first = torch.where(hits, index, hits.shape[1]).amin(dim=1)
        return first, torch.where(hits, index, -1).amax(dim=1) + 1
    (y1, y2), (x1, x2) = span(rows), span(cols)
    return torch.stack([x1, y1, x2, y2], dim=1).float()


def _shard(data: Dataset, rank: int, world: int) -> Dataset:
    return Subset(data, range(rank, len(data), world))


def run(model: nn.Module, data: Dataset, settings: Settings, unseen: Tensor | None = None,
        extra: dict[tuple[str, str], Explainer] | None = None
        ) -> dict[tuple[str, str], dict[str, float]]:
    """Explain every image of ``data`` with every method at every layer; returns the
    reported metrics per (method, layer). ``unseen`` (H x W bool) marks the region behind the
    model's wall; with it the Unseen and Dead zone metrics are computed. ``extra``: more
    (method, layer) -> explainer pairs (a peer's method, say), measured after the registry's."""
    device = next(model.parameters()).device
    example = data[0][0][None].to(device)
    layers = list(settings.layers) or default_layers(model, example)
    rank, world = ((dist.get_rank(), dist.get_world_size()) if dist.is_initialized()
                   else (0, 1))
    pairs = explainers(model, settings.methods, layers, example, settings.rules,
                       benchmark=True) | dict(extra or {})
    sums = {pair: torch.zeros(len(SUMS), dtype=torch.float64) for pair in pairs}
    loader = DataLoader(_shard(data, rank, world), batch_size=settings.batch_size)
    from tqdm.auto import tqdm

    # one step per (batch, method-layer pair), with the ETA tqdm derives from them
    bar = tqdm(total=len(loader) * len(pairs), unit="map batch", file=sys.stderr,
               desc=f"benchmark ({len(pairs)} method-layer pairs, {len(loader)} batches)",
               disable=not (settings.progress and rank == 0) or None)
    for images, labels, masks, localisable in loader:
        images, labels = images.to(device), labels.to(device)
        masks, localisable = masks.to(device), localisable.to(device)
        target = task_target(settings.task, labels, masks)
        for (method, layer), explain in pairs.items():
            bar.set_postfix_str(f"{method} @ {layer}", refresh=False)
            maps = explain(images, target).detach()
            sums[method, layer] += _batch_sums(model, images, target, maps, masks, localisable,
                                               settings, unseen).cpu()
            bar.update()
    bar.close()
    if world > 1:
        flat = torch.stack(list(sums.values())).to(device)
        dist.all_reduce(flat)
        sums = dict(zip(sums, flat.cpu(), strict=True))
    return {pair: report(s) for pair, s in sums.items()}


def _batch_sums(model: nn.Module, images: Tensor, target: TargetType, maps: Tensor,
                masks: Tensor, localisable: Tensor, settings: Settings,
                unseen: Tensor | None) -> Tensor:
    use_softmax = settings.use_softmax and settings.task == "classification"
    common = dict(target=target, blur=settings.blur, use_softmax=use_softmax,
                  batch_size=settings.metric_batch_size)
    drop = metrics.average_drop_increase(model, images, maps, keep=settings.keep, **common)
    curves = metrics.insertion_deletion(model, images, maps, steps=settings.steps,
                                        pixels_per_step=settings.pixels_per_step, **common)
    loc = localisable.bool()
    proportion = metrics.energy_proportion(maps, masks)
    pointing = metrics.pointing_game(maps, masks).float()
    zeros = torch.zeros(len(images), device=images.device)
    hidden = metrics.unseen_mass(maps, unseen.expand_as(masks)) if unseen is not None else zeros
    dead = metrics.dead_zone(maps, unseen.expand_as(masks)) if unseen is not None else zeros
    values = [len(images), drop.drop.sum(), drop.increase.float().sum(),
              curves.insertion.sum(), curves.deletion.sum(), loc.sum(),
              proportion[loc].sum(), pointing[loc].sum(),
              0 if unseen is None else len(images), hidden.sum(), dead.sum()]
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def describe(settings: Settings) -> str:
    """The protocol of a run in one paragraph: substrate, scores, steps, ties, rules."""
    steps = (f"{settings.steps} steps" if settings.steps
             else f"{settings.pixels_per_step} pixels per step")
    scores = ("softmax" if settings.use_softmax else "logits")
    if settings.task == "segmentation":
        scores = "the object class's logits summed over the object's mask"
    elif settings.task == "detection":
        scores = ("the score of the detection of the object's class overlapping its box most "
                  "(0 where none overlaps it by IoU >= 0.5)")
    return (f"Substrate: Gaussian blur, kernel {settings.blur.kernel_size}, sigma "
            f"{settings.blur.sigma:g}; scores: {scores}; "
            f"insertion/deletion: {steps}; pixels with equal map values are taken in "
            "row-major order (stable sort; maps are upsampled bilinearly to the image first); "
            f"A.D./A.I. keep the top {settings.keep:.0%} of pixels; FG-CAM and LRP rules: "
            f"\"{settings.rules}\".")


def report(sums: Tensor) -> dict[str, float]:
    """Reported metrics from one (method, layer) sum vector (NaN where undefined)."""
    s = dict(zip(SUMS, sums.tolist(), strict=True))
    out = {}
    for name, (num, den, scale) in REPORTED.items():
        if s[den] == 0:
            out[name] = math.nan
        elif num is None:
            out[name] = (s["insertion"] - s["deletion"]) / s[den]
        else:
            out[name] = scale * s[num] / s[den]
    out["images"] = s["images"]
    return out


# -- tables -------------------------------------------------------------------------------
def write_tables(results: dict[tuple[str, str], dict[str, float]], out: Path,
                 title: str, metrics_shown: Sequence[str] | None = None,
                 notes: str = "") -> list[Path]:
    """CSV (long format), Markdown (one method x layer table per metric, ``notes`` under the
    title) and a PNG plot; each file is replaced only once its new content is complete."""
    out.mkdir(parents=True, exist_ok=True)
    shown = [m for m in (metrics_shown or REPORTED)
             if any(not math.isnan(r[m]) for r in results.values())]
    methods = list(dict.fromkeys(m for m, _ in results))
    layers = list(dict.fromkeys(layer for _, layer in results))
    csv_path = out / "results.csv"
    with written(csv_path) as partial, partial.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "layer", "metric", "value", "images"])
        for (method, layer), r in results.items():
            for metric in shown:
                writer.writerow([method, layer, metric, f"{r[metric]:.6g}", int(r["images"])])
    lines = [f"# {title}", "", *([notes, ""] if notes else [])]
    for metric in shown:
        lines += [f"## {metric} ({_better(metric)} is better)", "",
                  "| method | " + " | ".join(layers) + " |",
                  "|---|" + "---|" * len(layers)]
        for method in methods:
            cells = [_cell(results.get((method, layer)), metric) for layer in layers]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    md_path = out / "results.md"
    with written(md_path) as partial:
        partial.write_text("\n".join(lines))
    png_path = out / "results.png"
    with written(png_path) as partial:
        _plot(results, methods, layers, shown, partial, title)
    return [csv_path, md_path, png_path]


def _better(metric: str) -> str:
    return "lower" if metric in LOWER_IS_BETTER else "higher"


def _style(method: str, others: list[str]) -> dict[str, object]:
    """Line style by family: one colour per CAM weighting (FG-X shares X's), plain CAMs
    dashed with squares, FG-CAM solid with circles, denoised FG-CAM dash-dot with triangles
    (pointing down with the means kept),
    the LRP family dotted with diamonds, guided methods with crosses; ``others``, methods
    outside the registry (a peer's, run with ``extra``), solid with X markers in Dark2's
    colours."""
    import matplotlib

    if method in others:
        return {"color": matplotlib.colormaps["Dark2"](others.index(method) % 8),
                "linestyle": "-", "marker": "X"}
    family = METHODS[method].family
    base = re.sub(r"-D[KM]?$", "", method.removeprefix("FG-"))
    palette = list(dict.fromkeys(re.sub(r"-D[KM]?$", "", m.name.removeprefix("FG-"))
                                 for m in METHODS.values()))
    colour = None
    if base in palette:  # tab20's dark shades first, then its light ones: 20 distinct colours
        i = palette.index(base) % 20
        colour = matplotlib.colormaps["tab20"](2 * i % 20 + i // 10)
    if family == "LRP":
        return {"color": colour, "linestyle": ":", "marker": "D"}
    if family == "guided":
        return {"color": colour, "linestyle": ":", "marker": "P"}
    if family == "CAM":
        return {"color": colour, "linestyle": "--", "marker": "s"}
    denoised = re.search(r"-D[KM]?$", method)
    return {"color": colour, "linestyle": "-." if denoised else "-",
            "marker": "o" if not denoised else "v" if method.endswith("-DK") else "^"}


def _short(layers: list[str]) -> list[str]:
    """Tick labels: the layer names without the dotted prefix they all share
    (``encoder.layers.encoder_layer_2`` -> ``encoder_layer_2``), a bare index keeping its
    module's name (``stages.2``)."""
    named = [layer.split(".") for layer in layers if layer != INPUT]
    common = 0
    while named and all(len(n) > common + 1 and n[common] == named[0][common] for n in named):
        common += 1
    def label(layer: str) -> str:
        parts = layer.split(".")
        start = common - 1 if common and parts[common].isdigit() else common  # stages.2
        return ".".join(parts[start:])
    return [layer if layer == INPUT else label(layer) for layer in layers]


def _cell(r: dict[str, float] | None, metric: str) -> str:
    if r is None or math.isnan(r[metric]):
        return "–"
    return f"{r[metric]:.2f}" if metric in ("A.D.", "A.I.") else f"{r[metric]:.3f}"


def _plot(results: dict[tuple[str, str], dict[str, float]], methods: list[str],
          layers: list[str], shown: list[str], path: Path, title: str) -> None:
    from matplotlib.figure import Figure  # not pyplot: saved, never shown

    others = [m for m in methods if m not in METHODS]
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, metric in zip(axes.flat, shown, strict=False):
        for method in methods:
            xs = [i for i, layer in enumerate(layers) if (method, layer) in results]
            ys = [results[method, layers[i]][metric] for i in xs]
            ax.plot(xs, ys, label=method, markersize=5, **_style(method, others))
        ax.set_xticks(range(len(layers)), _short(layers), fontsize=8)
        ax.set_title(f"{metric} ({_better(metric)} is better)", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_axis_off()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(5, len(labels)),
               fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
