r"""Targets as objects: what is explained, as one score per example y_n = t(output)_n.

Captum's targets (an int, a tuple of indices, one per example) select entries of a score
tensor; they keep working everywhere. A target object generalises them to any task: it reads
whatever the model returns (a tensor, torchvision's segmentation ``{"out": ...}``, a Hugging
Face output, a detector's list of dicts) and returns one score per example. Every method
explains y = \sum_n y_n; a plain function ``output -> scores`` is accepted as well.

Ready targets, under the names users of the peers look for:

- :class:`ClassLogit`: y_n = z_{n, c_n} (the default meaning of an int target)
- :class:`ClassProbability`: y_n = softmax(z_n)_{c_n} or sigmoid(z_{n, c_n})
- :class:`MultiLabel`: y_n = \sum_{c \in S} z_{n,c} (or their sigmoids)
- :class:`SegmentationRegion`: y_n = \sum_{ij} M_{n,ij} z_{n,c,ij}, M a given mask or the
  pixels the model assigns to c (argmax)
- :class:`Detection`: the score of one detection of a torchvision detector, chosen by index
  or by the box it overlaps most
- :class:`Similarity`: y_n = cos(e_n, r_n), e the embedding, r a reference embedding
- :class:`Regression`: y_n = o_n (or o_{n, k})

Each object checks, on the real input's output and before any map is computed, that it
selects something (:meth:`Target.check`); on other inputs (Score-CAM's masked images, the
metrics' perturbed ones) it scores what it finds, 0 where its object is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


def scores_of(output: Any, strict: bool = True) -> Tensor | None:
    """The score tensor in a model's output: the tensor, a Hugging Face ``.logits``, or
    torchvision's segmentation ``{"out": ...}``; None (``strict=False``) or an error else."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict):
        found = output.get("logits", output.get("out"))
    else:
        found = getattr(output, "logits", None)
    if isinstance(found, Tensor) or not strict:
        return found if isinstance(found, Tensor) else None
    kind = ("a list of dicts (a detector's detections)" if detections_of(output) is not None
            else type(output).__name__)
    raise TypeError(
        f"the model returned {kind}; a class index selects a score in a tensor, a Hugging "
        "Face .logits or a {'out': ...} dict. Pass a target object that reads this output "
        "(captum_fgcam.targets: Detection for detectors, or any function output -> one score "
        "per example)")


def with_scores(output: Any, scores: Tensor) -> Any:
    """``output`` with its score tensor (:func:`scores_of`) replaced by ``scores``."""
    if isinstance(output, Tensor):
        return scores
    if isinstance(output, dict):  # Hugging Face outputs are dicts too
        key = "logits" if "logits" in output else "out"
        copy = type(output)(output) if type(output) is dict else output.__class__(**output)
        copy[key] = scores
        return copy
    raise TypeError(f"cannot replace the scores in {type(output).__name__}")


class Target:
    """A target object: ``target(output)`` is one score per example (a tensor of shape (N,)).

    Subclasses define :meth:`scores`; :meth:`check` refuses, on the real input's output, a
    target that selects nothing; :meth:`take` keeps per-example data (masks, boxes, reference
    embeddings) for some examples, as batches are split.
    """

    def scores(self, output: Any) -> Tensor:
        raise NotImplementedError

    def check(self, output: Any) -> None:
        """Raise if this target selects nothing in ``output`` (the real input's)."""

    def check_model(self, model: Any) -> None:
        """Raise if ``model`` cannot give what this target reads, before it runs."""

    def take(self, index: slice | Tensor) -> Target:
        """The target for the examples ``index`` (shared data stays shared)."""
        return self

    def __call__(self, output: Any) -> Tensor:
        """:meth:`scores`, checked: one float score per example, as a tensor of shape (N,)."""
        scores = self.scores(output)
        if not isinstance(scores, Tensor) or not scores.is_floating_point() \
                or not (scores.dim() == 1 or (scores.dim() == 2 and scores.shape[1] == 1)):
            raise ValueError(
                f"the target {self!r} returned {type(scores).__name__} of shape "
                f"{tuple(getattr(scores, 'shape', ()))}; a target returns one float score per "
                "example, shape (N,)")
        return scores.reshape(-1)


class TargetFunction(Target):
    """A plain function ``output -> scores`` as a target."""

    def __init__(self, function: Callable[[Any], Tensor]) -> None:
        self.function = function

    def scores(self, output: Any) -> Tensor:
        return self.function(output)

    def __repr__(self) -> str:
        return f"TargetFunction({self.function!r})"


def _take(value: Tensor | None, index: slice | Tensor, batched: bool) -> Tensor | None:
    return value[index] if value is not None and batched else value


def _classes(classes: int | Sequence[int] | Tensor, name: str) -> Tensor:
    """Class indices as a 0-d (shared) or 1-d (one per example) int64 tensor."""
    if isinstance(classes, bool) or (isinstance(classes, Tensor)
                                     and (classes.is_floating_point()
                                          or classes.dtype == torch.bool)):
        raise TypeError(f"{name}: class indices must be integers; got {classes!r}")
    index = torch.as_tensor(classes)
    if isinstance(classes, Sequence) and not len(classes):
        return index.long()  # no class: the caller says whether that is allowed
    if index.is_floating_point() or index.dtype == torch.bool or index.dim() > 1:
        raise TypeError(f"{name}: pass a class index (an int) or one per example (a 1-d "
                        f"sequence of ints); got {classes!r}")
    if index.numel() and int(index.min()) < 0:
        raise ValueError(f"{name}: class {int(index.min())} is negative; indices count from 0")
    return index.long()


def _logits(output: Any, name: str, dims: int | None = 2) -> Tensor:
    scores = scores_of(output)
    if dims is not None and scores.dim() != dims:
        raise ValueError(f"{name} reads scores of shape (N, classes); the model returned shape "
                         f"{tuple(scores.shape)}")
    return scores


def _column(scores: Tensor, classes: Tensor, name: str) -> Tensor:
    """scores[n, c_n] (or scores[:, c] for a shared c), with the index checked."""
    k = scores.shape[1]
    if classes.numel() and int(classes.max()) >= k:
        raise ValueError(f"{name}: class {int(classes.max())} is out of range: the model has "
                         f"{k} classes (0 to {k - 1})")
    if classes.dim() == 0:
        return scores[:, int(classes)]
    if classes.shape[0] != scores.shape[0]:
        raise ValueError(f"{name} has {classes.shape[0]} classes for {scores.shape[0]} "
                         "examples; give one per example, or a single class for all")
    return scores.gather(1, classes.to(scores.device)[:, None])[:, 0]


class ClassLogit(Target):
    """y_n = z_{n, c_n}: a class's logit (what an int target means); ``classes`` an int or
    one per example."""

    def __init__(self, classes: int | Sequence[int] | Tensor) -> None:
        self.classes = _classes(classes, "ClassLogit")

    def scores(self, output: Any) -> Tensor:
        return _column(_logits(output, "ClassLogit"), self.classes, "ClassLogit")

    def take(self, index: slice | Tensor) -> ClassLogit:
        return ClassLogit(_take(self.classes, index, self.classes.dim() == 1))

    def __repr__(self) -> str:
        return f"ClassLogit({self.classes.tolist()})"


class ClassProbability(Target):
    """y_n = softmax(z_n)_{c_n} (``activation="softmax"``, single-label) or
    sigmoid(z_{n, c_n}) (``"sigmoid"``, multi-label heads)."""

    ACTIVATIONS = ("softmax", "sigmoid")

    def __init__(self, classes: int | Sequence[int] | Tensor, activation: str = "softmax"
                 ) -> None:
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"ClassProbability: activation must be one of {self.ACTIVATIONS}; "
                             f"got {activation!r}")
        self.classes = _classes(classes, "ClassProbability")
        self.activation = activation

    def scores(self, output: Any) -> Tensor:
        z = _logits(output, "ClassProbability")
        p = z.softmax(dim=1) if self.activation == "softmax" else z.sigmoid()
        return _column(p, self.classes, "ClassProbability")

    def take(self, index: slice | Tensor) -> ClassProbability:
        return ClassProbability(_take(self.classes, index, self.classes.dim() == 1),
                                self.activation)

    def __repr__(self) -> str:
        return f"ClassProbability({self.classes.tolist()}, {self.activation!r})"


class MultiLabel(Target):
    """y_n = \\sum_{c \\in S_n} z_{n,c} over a set S of classes (``activation="sigmoid"``:
    of their sigmoids, the probabilities of a multi-label head). ``classes``: the class
    indices of a set shared by all examples, or a boolean N x classes tensor whose row n
    selects S_n."""

    def __init__(self, classes: Sequence[int] | Tensor, activation: str | None = None) -> None:
        self.selection = None
        if isinstance(classes, Tensor) and classes.dtype == torch.bool and classes.dim() == 2:
            empty = (~classes.any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"MultiLabel: the selection is empty for example(s) {empty}; "
                                 "select at least one class per example")
            self.selection, classes = classes, classes.nonzero()[:, 1]
        self.classes = _classes(classes, "MultiLabel").flatten()
        if not self.classes.numel():
            raise ValueError("MultiLabel: the set of classes is empty; pass at least one class")
        if activation not in (None, "sigmoid"):
            raise ValueError(f"MultiLabel: activation must be None or 'sigmoid'; got "
                             f"{activation!r}")
        self.activation = activation

    def scores(self, output: Any) -> Tensor:
        z = _logits(output, "MultiLabel")
        if self.selection is not None and self.selection.shape != z.shape:
            raise ValueError(f"MultiLabel: the selection has shape "
                             f"{tuple(self.selection.shape)}; the model's scores "
                             f"{tuple(z.shape)}: give one row per example, one column per class")
        if self.activation == "sigmoid":
            z = z.sigmoid()
        if self.selection is None:
            return sum(_column(z, c, "MultiLabel") for c in self.classes.unique())
        return (z * self.selection.to(z.device, z.dtype)).sum(dim=1)

    def take(self, index: slice | Tensor) -> MultiLabel:
        if self.selection is None:
            return self
        return MultiLabel(self.selection[index], self.activation)

    def __repr__(self) -> str:
        classes = self.classes.tolist() if self.selection is None else "per example"
        return f"MultiLabel({classes}, activation={self.activation!r})"


class SegmentationRegion(Target):
    """y_n = \\sum_{ij} M_{n,ij} z_{n,c_n,ij}: class ``category``'s logits summed over a
    region of the segmentation output z (N x classes x H x W: a tensor, ``{"out": ...}`` or
    ``.logits``). ``category``: an int, or one per example. ``mask`` (H x W, or N x H x W, of
    the output's size; boolean or weights in [0, 1]); None: the pixels the model assigns to
    the class (argmax over classes).
    """

    def __init__(self, category: int | Sequence[int] | Tensor, mask: Tensor | None = None
                 ) -> None:
        self.category = _classes(category, "SegmentationRegion")
        if self.category.dim() == 1 and not len(self.category):
            raise ValueError("SegmentationRegion: no class given; pass a class index")
        if mask is not None:
            mask = _checked_mask(mask)
        self.mask = mask

    def region(self, z: Tensor) -> Tensor:
        """M: N x H x W weights (the mask, or argmax(z) == c_n)."""
        if self.mask is None:
            category = self.category.to(z.device).reshape(-1, 1, 1)
            return (z.argmax(dim=1) == category).to(z.dtype)
        if self.mask.shape[-2:] != z.shape[-2:] or (self.mask.dim() == 3
                                                     and self.mask.shape[0] != z.shape[0]):
            raise ValueError(
                f"SegmentationRegion: the mask has shape {tuple(self.mask.shape)}; the "
                f"model's output is {tuple(z.shape)} (N x classes x H x W): pass a mask of "
                f"shape {tuple(z.shape[-2:])} or {(z.shape[0], *z.shape[-2:])} (resize it "
                "with F.interpolate(mask[None, None].float(), size, mode='nearest'))")
        return self.mask.to(z.device, z.dtype).expand(z.shape[0], *z.shape[-2:])

    def scores(self, output: Any) -> Tensor:
        z = _logits(output, "SegmentationRegion", dims=4)
        region = (z * self.region(z).detach()[:, None]).sum(dim=(2, 3))
        return _column(region, self.category, "SegmentationRegion")

    def check(self, output: Any) -> None:
        z = _logits(output, "SegmentationRegion", dims=4)
        _column(z[:, :, 0, 0], self.category, "SegmentationRegion")
        empty = (self.region(z).flatten(1).sum(dim=1) == 0).nonzero().flatten().tolist()
        if empty:
            what = ("the mask" if self.mask is not None
                    else f"the pixels the model assigns to class {self.category.tolist()}")
            raise ValueError(f"SegmentationRegion: {what} is empty for example(s) {empty}: "
                             "nothing to explain; pass a mask that covers the region, or "
                             "another class")

    def take(self, index: slice | Tensor) -> SegmentationRegion:
        batched = self.mask is not None and self.mask.dim() == 3
        return SegmentationRegion(_take(self.category, index, self.category.dim() == 1),
                                  _take(self.mask, index, batched))

    def __repr__(self) -> str:
        mask = "argmax" if self.mask is None else f"mask {tuple(self.mask.shape)}"
        return f"SegmentationRegion({self.category.tolist()}, {mask})"


def _checked_mask(mask: Any) -> Tensor:
    mask = torch.as_tensor(mask)
    if mask.dim() not in (2, 3):
        raise ValueError(f"SegmentationRegion: the mask has shape {tuple(mask.shape)}; pass "
                         "H x W (shared) or N x H x W (one per example)")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise TypeError(f"SegmentationRegion: the mask has dtype {mask.dtype}; pass a boolean "
                        "mask or weights in [0, 1]")
    weights = mask.double()
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) \
            or bool((weights > 1).any()):
        raise ValueError("SegmentationRegion: the mask holds values outside [0, 1] (or NaN); "
                         "pass a boolean mask or weights in [0, 1] (a label map: "
                         "labels == category)")
    return mask.float()


def detections_of(output: Any) -> list[dict[str, Tensor]] | None:
    """A torchvision detector's output (one dict with boxes, scores, labels per image)."""
    if isinstance(output, (list, tuple)) and output and all(
            isinstance(d, dict) and {"boxes", "scores"} <= set(d) for d in output):
        return list(output)
    return None


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of boxes (x1, y1, x2, y2): a (k x 4) with b (4,) -> (k,)."""
    lo = torch.maximum(a[:, :2], b[:2])
    hi = torch.minimum(a[:, 2:], b[2:])
    inter = (hi - lo).clamp(min=0).prod(dim=1)
    area = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    union = area + (b[2:] - b[:2]).clamp(min=0).prod() - inter
    return inter / union.clamp(min=torch.finfo(a.dtype).tiny)


class Detection(Target):
    """The score of one detection of a torchvision detector (a list with one dict of
    ``boxes``, ``scores``, ``labels`` per image, in the detector's eval mode).

    ``index``: the index-th detection of each image (sorted by score: 0 is the most confident);
    ``box`` (4 or N x 4, x1 y1 x2 y2 in the image's pixels): the detection overlapping it most
    (with ``label``, an int or one per image: of that class), at least ``iou``. On other
    inputs than the real one (Score-CAM's masked images, the metrics' perturbed ones) a box
    target scores the detection that overlaps it most, 0 where none reaches ``iou``.
    """

    def __init__(self, index: int | None = None, box: Any = None,
                 label: int | Sequence[int] | Tensor | None = None, iou: float = 0.5) -> None:
        if (index is None) == (box is None):
            raise ValueError("Detection: pass index= (the index-th detection) or box= (the "
                             "detection overlapping a box), one of them")
        if index is not None:
            index = int(_classes(index, "Detection index"))
        if box is not None:
            box = torch.as_tensor(box, dtype=torch.float32)
            if box.shape[-1:] != (4,) or box.dim() > 2 or not bool(torch.isfinite(box).all()):
                raise ValueError(f"Detection: box must be 4 finite numbers (x1, y1, x2, y2), or "
                                 f"N x 4; got shape {tuple(box.shape)}")
        if not 0 < iou <= 1:
            raise ValueError(f"Detection: iou must be in (0, 1]; got {iou}")
        self.index, self.box, self.iou = index, box, iou
        self.label = None if label is None else _classes(label, "Detection label")

    def _chosen(self, detections: list[dict[str, Tensor]], strict: bool
                ) -> list[int | None]:
        """Per image, the index of the explained detection (None: none)."""
        chosen: list[int | None] = []
        for n, d in enumerate(detections):
            k = d["scores"].shape[0]
            if self.index is not None:
                if self.index >= k and strict:
                    raise ValueError(f"Detection: index {self.index} is out of range: the model "
                                     f"made {k} detection(s) for image {n}; pass a smaller "
                                     "index, or lower the detector's score threshold")
                chosen.append(self.index if self.index < k else None)
                continue
            box = self.box if self.box.dim() == 1 else self.box[n]
            overlap = box_iou(d["boxes"].detach().float(), box.to(d["boxes"].device))
            label = None if self.label is None else int(
                self.label if self.label.dim() == 0 else self.label[n])
            if label is not None:
                overlap = overlap * (d["labels"] == label)
            best = int(overlap.argmax()) if k else None
            if best is None or float(overlap[best]) < self.iou:
                if strict:
                    kind = "" if label is None else f" of class {label}"
                    raise ValueError(
                        f"Detection: no detection{kind} overlaps the box {box.tolist()} by "
                        f"IoU >= {self.iou} in image {n} ({k} detections); pass another "
                        "box, a lower iou=, or lower the detector's score threshold")
                best = None
            chosen.append(best)
        return chosen

    def check_model(self, model: Any) -> None:
        if getattr(model, "training", False):
            raise ValueError("Detection: the detector is in training mode, where it returns "
                             "losses, not detections; call model.eval() first")

    def _checked(self, output: Any) -> list[dict[str, Tensor]]:
        detections = detections_of(output)
        if detections is None:
            raise TypeError(f"Detection reads a detector's output (a list of dicts with boxes, "
                            f"scores and labels); the model returned {type(output).__name__} "
                            "(a detector in training mode returns losses: call model.eval())")
        for what, value in (("boxes", self.box), ("labels", self.label)):
            if value is not None and value.dim() == (2 if what == "boxes" else 1) \
                    and value.shape[0] != len(detections):
                raise ValueError(f"Detection: {value.shape[0]} {what} for {len(detections)} "
                                 f"images; give one per image, or one for all")
        return detections

    def scores(self, output: Any) -> Tensor:
        detections = self._checked(output)
        return torch.stack([d["scores"][i] if i is not None else d["scores"].new_zeros(())
                            for d, i in zip(detections, self._chosen(detections, False),
                                            strict=True)])

    def check(self, output: Any) -> None:
        self._chosen(self._checked(output), True)

    def boxes(self, output: Any) -> Tensor:
        """The explained detections' boxes (N x 4), for figures and metrics."""
        detections = self._checked(output)
        return torch.stack([d["boxes"][i].detach() for d, i in
                            zip(detections, self._chosen(detections, True), strict=True)])

    def take(self, index: slice | Tensor) -> Detection:
        box = _take(self.box, index, self.box is not None and self.box.dim() == 2)
        label = _take(self.label, index, self.label is not None and self.label.dim() == 1)
        return Detection(self.index, box, label, self.iou)

    def __repr__(self) -> str:
        which = f"index={self.index}" if self.box is None else f"box={self.box.tolist()}"
        label = None if self.label is None else self.label.tolist()
        return f"Detection({which}, label={label}, iou={self.iou})"


def _embedding(output: Any) -> Tensor:
    """The embedding in a model's output: the tensor, or ``.image_embeds`` /
    ``.pooler_output`` (Hugging Face)."""
    if isinstance(output, Tensor):
        return output
    for name in ("image_embeds", "pooler_output"):
        value = output.get(name) if isinstance(output, dict) else getattr(output, name, None)
        if isinstance(value, Tensor):
            return value
    raise TypeError(f"Similarity reads an embedding (a tensor, or .image_embeds / "
                    f".pooler_output); the model returned {type(output).__name__}")


class Similarity(Target):
    """y_n = cos(e_n, r_n) = e_n . r_n / (|e_n| |r_n|): the cosine similarity of the model's
    embedding to a reference embedding ``reference`` (D, shared, or N x D): retrieval,
    re-identification, CLIP-style image towers."""

    def __init__(self, reference: Tensor) -> None:
        reference = torch.as_tensor(reference)
        if not reference.is_floating_point() or reference.dim() not in (1, 2):
            raise TypeError(f"Similarity: the reference must be a float embedding (D or N x D); "
                            f"got dtype {reference.dtype}, shape {tuple(reference.shape)}")
        if not bool(torch.isfinite(reference).all()):
            raise ValueError("Similarity: the reference embedding holds NaN or Inf; compute it "
                             "again from a finite input")
        if not bool((reference.flatten(1) if reference.dim() == 2 else reference).ne(0).any()):
            raise ValueError("Similarity: the reference embedding is zero; the cosine is "
                             "undefined")
        self.reference = reference.detach()

    def scores(self, output: Any) -> Tensor:
        e = _embedding(output).flatten(1)
        r = self.reference.to(e.device, e.dtype)
        if r.shape[-1] != e.shape[1] or (r.dim() == 2 and r.shape[0] != e.shape[0]):
            raise ValueError(f"Similarity: the reference has shape {tuple(r.shape)}; the model's "
                             f"embeddings have shape {tuple(e.shape)}: pass ({e.shape[1]},) or "
                             f"({e.shape[0]}, {e.shape[1]})")
        return torch.nn.functional.cosine_similarity(e, r.expand_as(e), dim=1)

    def take(self, index: slice | Tensor) -> Similarity:
        return Similarity(_take(self.reference, index, self.reference.dim() == 2))

    def __repr__(self) -> str:
        return f"Similarity(reference {tuple(self.reference.shape)})"


class Regression(Target):
    """y_n = o_n: a regression output (N or N x 1), or its column ``index`` (N x K)."""

    def __init__(self, index: int | None = None) -> None:
        self.index = None if index is None else int(_classes(index, "Regression index"))

    def scores(self, output: Any) -> Tensor:
        o = scores_of(output)
        if self.index is None:
            if o.dim() == 1 or (o.dim() == 2 and o.shape[1] == 1):
                return o.reshape(-1)
            raise ValueError(f"Regression: the model returned shape {tuple(o.shape)}; pass "
                             "index= to choose an output")
        return _column(o.flatten(1), torch.tensor(self.index), "Regression")

    def __repr__(self) -> str:
        return f"Regression({self.index})"


def target_object(target: Any) -> Target | None:
    """``target`` as a :class:`Target` if it is one or a plain function, else None."""
    if isinstance(target, Target):
        return target
    if callable(target) and not isinstance(target, (type, Tensor)):
        return TargetFunction(target)
    return None
