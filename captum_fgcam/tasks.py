"""What ``explain --task`` explains in each image, read from the model's output.

Per task, the target object (:mod:`captum_fgcam.targets`) for a batch, one summary line per
image, and what its figure outlines:

- ``classification``: the class logit of ``--target`` (default: the predicted class);
- ``multilabel``: the sum of the logits of the ``--target`` classes (a comma-separated list;
  default: every class whose sigmoid is at least 0.5, else the top one);
- ``similarity``: the cosine between the image's embedding and ``--reference``'s;
- ``segmentation``: class c's logits summed over the pixels the model assigns to c
  (``--target`` c; default: the class, background 0 excepted, covering most pixels); the
  region is outlined;
- ``detection``: the score of the most confident detection (of class ``--target`` if
  given); its box is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .targets import (
    ClassLogit,
    Detection,
    MultiLabel,
    SegmentationRegion,
    Similarity,
    Target,
    _embedding,
    detections_of,
    scores_of,
)
from .usage import UsageError, suggest


@dataclass
class Explained:
    """A batch's target, and per image: what was explained (saved with ``--maps``), a
    summary line, and the region to outline or the box to draw."""

    target: Target
    described: list[int | str]
    summaries: list[str]
    regions: list[np.ndarray | None] = field(default_factory=list)
    boxes: list[Sequence[float] | None] = field(default_factory=list)


def class_index(spec: str, categories: Sequence[str] | None, option: str = "--target") -> int:
    """A class index from ``spec``: an index (0 or more) or, with class names, a name."""
    if spec.lstrip("-").isdigit():
        index = int(spec)
        if index < 0:
            raise UsageError(f"{option} {spec}: a class index is 0 or more; pass an index "
                             "or, with --weights, a class name")
        return index
    if categories is None:
        raise UsageError(f"class name {spec!r} needs the model's class names, which only "
                         "torchvision --weights and the zoo provide; pass a class index")
    lowered = [c.lower() for c in categories]
    if spec.lower() not in lowered:
        raise UsageError(f"unknown class name {spec!r}{suggest(spec, list(categories))} "
                         f"(or pass a class index, 0 to {len(categories) - 1})")
    return lowered.index(spec.lower())


def class_indices(spec: str | None, categories: Sequence[str] | None, task: str
                  ) -> list[int] | None:
    """``--target`` as class indices (None: chosen per image), checked without the model;
    several (comma-separated) only for ``multilabel``."""
    if spec is None:
        return None
    parts = [p.strip() for p in spec.split(",")] if task == "multilabel" else [spec]
    if not all(parts):
        raise UsageError(f"--target {spec!r}: give class indices or names separated by commas")
    if task == "similarity":
        raise UsageError("--task similarity explains the similarity to --reference; "
                         "leave --target out")
    return list(dict.fromkeys(class_index(p, categories) for p in parts))


def check_classes(indices: list[int] | None, classes: int) -> None:
    """Refuse a class index the model (``classes`` scores) does not have."""
    for index in indices or ():
        if index >= classes:
            raise UsageError(f"class index {index} is out of range: the model has {classes} "
                             f"classes; pass --target 0 to {classes - 1}")


def output_classes(output: Any, task: str) -> int | None:
    """The number of classes of one output (None for detectors and embeddings), checked
    to be what ``task`` reads; a model of another task is refused naming the right one."""
    if task == "detection":
        if detections_of(output) is None:
            raise UsageError(f"--task detection reads a torchvision detector's output (a list "
                             f"of dicts with boxes, scores, labels); the model returned "
                             f"{_kind(output)}")
        return None
    if task == "similarity":
        embedding_of(output)
        return None
    scores = scores_of(output, strict=False)
    if scores is None:
        hint = "; pass --task detection" if detections_of(output) is not None else ""
        raise UsageError(f"--task {task} reads a score tensor; the model returned "
                         f"{_kind(output)}{hint}")
    dims = 4 if task == "segmentation" else 2
    if scores.dim() != dims:
        hint = {4: "; pass --task segmentation", 2: "; pass --task classification"}.get(
            scores.dim(), "")
        want = "N x classes x H x W" if dims == 4 else "N x classes"
        raise UsageError(f"--task {task} reads scores of shape {want}; the model returned "
                         f"{tuple(scores.shape)}{hint}")
    return scores.shape[1]


def embedding_of(output: Any) -> Tensor:
    """The embeddings (N x D) in a model's output (for ``--reference``), checked."""
    try:
        embedding = _embedding(output)
    except TypeError as err:
        raise UsageError(f"--task similarity: {err}") from err
    if embedding.dim() != 2:
        raise UsageError(f"--task similarity reads embeddings of shape N x D; the model "
                         f"returned {tuple(embedding.shape)}")
    if not bool(torch.isfinite(embedding).all()) or not bool(embedding.any(dim=1).all()):
        raise UsageError("--task similarity: the embedding is zero or not finite, so no "
                         "cosine is defined; check the model and the image")
    return embedding


def _kind(output: Any) -> str:
    if isinstance(output, Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    return type(output).__name__


def _name(c: int, categories: Sequence[str] | None) -> str:
    return f"{c} {categories[c]!r}" if categories and c < len(categories) else str(c)


def explained(task: str, output: Any, classes: list[int] | None,
              categories: Sequence[str] | None, paths: Sequence[Any],
              reference: Tensor | None = None) -> Explained:
    """The batch's target and per-image descriptions, from the model's ``output`` on it."""
    if task == "detection":
        return _detection(output, classes, categories, paths)
    if task == "segmentation":
        return _segmentation(scores_of(output), classes, categories, paths)
    if task == "similarity":
        embedding = embedding_of(output)
        cosine = torch.nn.functional.cosine_similarity(embedding, reference, dim=1)
        text = [f"cosine similarity to the reference {float(c):.3f}" for c in cosine]
        return Explained(Similarity(reference.expand_as(embedding)), text, text)
    scores = scores_of(output)
    if task == "multilabel":
        return _multilabel(scores, classes, categories)
    probabilities = scores.softmax(dim=1)
    chosen = scores.argmax(dim=1).tolist() if classes is None else classes * len(scores)
    summaries = []
    for p, c in zip(probabilities, chosen, strict=True):
        predicted = int(p.argmax())
        text = f"class {_name(c, categories)} (p = {float(p[c]):.2f})"
        summaries.append(f"{text}, predicted" if c == predicted else
                         f"{text}; predicted {_name(predicted, categories)} "
                         f"(p = {float(p[predicted]):.2f})")
    return Explained(ClassLogit(chosen), list(chosen), summaries)


def _multilabel(scores: Tensor, classes: list[int] | None,
                categories: Sequence[str] | None) -> Explained:
    p = scores.sigmoid()
    if classes is None:
        selection = p >= 0.5
        top = torch.nn.functional.one_hot(p.argmax(dim=1), p.shape[1]).bool()
        selection = torch.where(selection.any(dim=1, keepdim=True), selection, top)
    else:
        selection = torch.zeros_like(p, dtype=torch.bool)
        selection[:, classes] = True
    described, summaries = [], []
    for row, chosen in zip(p, selection, strict=True):
        picked = chosen.nonzero().flatten().tolist()
        described.append(",".join(map(str, picked)))
        summaries.append("classes " + ", ".join(
            f"{_name(c, categories)} (sigmoid {float(row[c]):.2f})" for c in picked))
    return Explained(MultiLabel(selection.cpu()), described, summaries)


def _segmentation(z: Tensor, classes: list[int] | None, categories: Sequence[str] | None,
                  paths: Sequence[Any]) -> Explained:
    predicted = z.argmax(dim=1)
    chosen = []
    for n, labels in enumerate(predicted):
        counts = torch.bincount(labels.flatten(), minlength=z.shape[1])
        if classes is not None:
            c = classes[0]
            if counts[c] == 0:
                raise UsageError(f"{paths[n]}: the model assigns no pixel to class "
                                 f"{_name(c, categories)}; pass another --target (or leave "
                                 "it out: the class covering most pixels)")
        else:
            counts[0] = 0  # background
            if not bool(counts.any()):
                raise UsageError(f"{paths[n]}: the model assigns every pixel to class "
                                 f"{_name(0, categories)} (background); pass --target CLASS "
                                 "to explain a class's score over the image anyway")
            c = int(counts.argmax())
        chosen.append(c)
    regions = [(labels == c).cpu().numpy() for labels, c in zip(predicted, chosen, strict=True)]
    summaries = [f"class {_name(c, categories)} on {r.mean():.1%} of the pixels"
                 for c, r in zip(chosen, regions, strict=True)]
    return Explained(SegmentationRegion(chosen), [str(c) for c in chosen], summaries,
                     regions=regions)


def _detection(output: Any, classes: list[int] | None, categories: Sequence[str] | None,
               paths: Sequence[Any]) -> Explained:
    boxes, labels, described, summaries = [], [], [], []
    for n, d in enumerate(detections_of(output)):
        keep = (torch.ones_like(d["scores"], dtype=torch.bool) if classes is None
                else d["labels"] == classes[0])
        if not bool(keep.any()):
            kind = "" if classes is None else f" of class {_name(classes[0], categories)}"
            raise UsageError(f"{paths[n]}: the detector made no detection{kind} above its "
                             "score threshold; pass another --target, or lower the threshold "
                             "(torchvision: score_thresh / box_score_thresh when building it)")
        k = int(torch.where(keep, d["scores"], -torch.inf).argmax())
        box, label = d["boxes"][k].tolist(), int(d["labels"][k])
        boxes.append(box)
        labels.append(label)
        corners = ", ".join(f"{v:.0f}" for v in box)
        described.append(f"{label}: {corners}")
        summaries.append(f"detection {k} of {len(d['scores'])}: class "
                         f"{_name(label, categories)}, score {float(d['scores'][k]):.2f}, "
                         f"box ({corners})")
    target = Detection(box=torch.tensor(boxes), label=labels, iou=0.999)
    return Explained(target, described, summaries, boxes=boxes)
