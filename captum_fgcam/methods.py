"""The attribution methods every command and the API know: one registry, one name each.

Each :class:`Method` has a canonical name (the label the paper's tables use), aliases
(matched ignoring case, ``-``, ``_`` and spaces: ``fg-grad-cam``, ``FG_GradCAM`` and
``fggradcam`` are all FG-Grad-CAM), the places it gives maps (intermediate layers and/or the
image), and its display policy: plain CAMs are ReLU'd as in their papers; FG-CAM and the LRP
family are signed relevance. ``explain``, ``benchmark``, ``demo`` and :func:`explainers`
read only this table.

The layer ``"input"`` means the image: attribution to the input of
:func:`~captum_fgcam.find_input_layer`'s module.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from captum.attr import GuidedBackprop, GuidedGradCam
from torch import Tensor, nn

from ._state import usable
from .arguments import TargetType
from .attr import (
    CLRP,
    LRP,
    SGLRP,
    ConceptorCam,
    FGCam,
    GradCam,
    GradCamPlusPlus,
    HiResCam,
    LayerCam,
    MultiScaleFGCam,
    RefineCam,
    ScoreCam,
    XGradCam,
)
from .attr.refine import find_refine_layers
from .attr.validation import as_target, check_target
from .propagation import TokenLayout, find_cam_layer, find_input_layer
from .propagation.capture import refuse_non_finite, unwrap, where_non_finite
from .propagation.layers import (
    cam_layer_in,
    check_cam_layer,
    module_output,
    qualified_name,
    record_example,
    resolve_module,
)
from .targets import Target, scores_of

INPUT = "input"

#: (images, targets) -> one map per image, detached
Explainer = Callable[[Tensor, TargetType], Tensor]
#: (model, layer name, to_input, rule preset, example input) -> explainer
Builder = Callable[[nn.Module, str, bool, str, Tensor | None], Explainer]


class MethodError(ValueError):
    """An unknown method name, or a method asked for where it gives no map."""


@dataclass(frozen=True)
class Method:
    """A named attribution method and where it gives maps."""

    name: str
    family: str  # "CAM", "FG-CAM", "guided" or "LRP"
    build: Builder
    at_layers: bool  # maps at intermediate layers
    at_input: bool  # maps at the image
    relu: bool  # maps are >= 0: ReLU'd (plain CAMs, as in their papers) or [0, 1] scores
    aliases: tuple[str, ...] = ()
    benchmarked_at_layers: bool = True  # the paper reports LRP at the input only
    scores: bool = False  # normalised [0, 1] scores (a product of maps), not relevance
    cam_at_layer: bool = False  # the layer is the method's CAM layer (plain CAMs)
    weighting: str | None = None  # an FG-CAM method's CAM weighting (get_weighting's name)

    def supports(self, layer: str) -> bool:
        return self.at_input if layer == INPUT else self.at_layers

    def where(self) -> str:
        return {(True, True): "at layers and at the input", (True, False): "at layers only",
                (False, True): "at the input only"}[self.at_layers, self.at_input]


def _plain(name: str, make: Callable[[nn.Module, nn.Module], object],
           aliases: tuple[str, ...]) -> Method:
    """A plain CAM, at layers only, ReLU'd as in its paper (``relu_attributions=method.relu``)."""
    def build(model: nn.Module, layer: str, to_input: bool, rules: str,
              example: Tensor | None) -> Explainer:
        cam = make(model, resolve_module(model, layer))
        return lambda x, t: cam.attribute(x, t, relu_attributions=method.relu).detach()
    method = Method(name, "CAM", build, True, False, True, aliases, cam_at_layer=True)
    return method


def _fine_grained(weighting: str, denoise: bool | str, multiscale: bool = False) -> Builder:
    """FG-CAM with ``weighting`` (denoised: True, the paper's, or "keep-mean"), or multi-scale
    FG-CAM with ``multiscale``."""
    def build(model: nn.Module, layer: str, to_input: bool, rules: str,
              example: Tensor | None) -> Explainer:
        fg = (MultiScaleFGCam if multiscale else FGCam)(model, layer, weighting=weighting,
                                                         rules=rules)
        return lambda x, t: fg.attribute(x, t, attribute_to_layer_input=to_input,
                                         denoise=denoise).detach()
    return build


def _lrp(cls: type) -> Builder:
    def build(model: nn.Module, layer: str, to_input: bool, rules: str,
              example: Tensor | None) -> Explainer:
        lrp = cls(model, layer, rules=rules)
        return lambda x, t: lrp.attribute(x, t, attribute_to_layer_input=to_input).detach()
    return build


def _refine(model: nn.Module, layer: str, to_input: bool, rules: str,
            example: Tensor | None) -> Explainer:
    refine = RefineCam(model, find_refine_layers(model, None if to_input else layer, example))

    def explain(x: Tensor, t: Tensor) -> Tensor:
        return refine.attribute(x, t, size=x.shape[2:] if to_input else None)
    return explain


@contextlib.contextmanager
def _quiet_relu_hooks() -> Iterator[None]:
    """Captum's guided backpropagation announces its ReLU hooks on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        warnings.filterwarnings("ignore", message="Input Tensor 0 did not already")
        yield


@contextlib.contextmanager
def _finite_scores(model: nn.Module) -> Iterator[None]:
    """Refuse NaN or Inf in the scores of the model's passes in the block (Captum's classes run
    it themselves), saying where they first appear."""
    module, seen = unwrap(model), []
    handle = module.register_forward_hook(lambda m, args, out: seen.append((args, out)))
    try:
        yield
    finally:
        handle.remove()
    for args, out in seen:
        scores = scores_of(out, strict=False)
        if scores is not None:
            refuse_non_finite(scores, "the model's scores", lambda a=args: where_non_finite(
                record_example(module, a), module))


def _guided(fine_grained: bool) -> Builder:
    """Guided backpropagation times a CAM at the image: Grad-CAM upsampled bilinearly (Captum's
    ``GuidedGradCam``), or the FG-Grad-CAM input map in its place."""
    def build(model: nn.Module, layer: str, to_input: bool, rules: str,
              example: Tensor | None) -> Explainer:
        explain = _build(model, layer, to_input, rules, example)

        def run(x: Tensor, t: TargetType) -> Tensor:
            if isinstance(t, Target):
                raise MethodError(
                    "Guided backpropagation runs Captum's GuidedBackprop, which takes class "
                    f"indices, not the target object {t!r}; use FG-Grad-CAM to the input")
            return explain(x, t)
        return run

    def _build(model: nn.Module, layer: str, to_input: bool, rules: str,
               example: Tensor | None) -> Explainer:
        if not fine_grained:
            cam_layer = find_cam_layer(model, example)
            scores = []  # the model's scores for one image, recorded once
            if example is not None:  # refused before any map is computed
                scores.append(_refuse_token_grid(model, cam_layer, example))
            guided = GuidedGradCam(model, resolve_module(model, cam_layer))

            def explain(x: Tensor, t: TargetType) -> Tensor:
                if not scores:  # once, on the first batch
                    scores.append(_refuse_token_grid(model, cam_layer, x))
                check_target(t, None, scores[0])  # Captum's class checks no target
                with _quiet_relu_hooks(), _finite_scores(model):
                    return guided.attribute(x, t, interpolate_mode="bilinear").sum(
                        dim=1, keepdim=True).detach()
            return explain
        backprop, fg = GuidedBackprop(model), FGCam(model, layer, rules=rules)

        def explain(x: Tensor, t: Tensor) -> Tensor:
            with _quiet_relu_hooks():
                gradient = backprop.attribute(x, t).detach()
            cam = fg.attribute(x, t, attribute_to_layer_input=True).detach()
            return (gradient * cam).sum(dim=1, keepdim=True)
        return explain
    return build


def _refuse_token_grid(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    """Captum's ``GuidedGradCam`` sums a layer's axis 1 as channels; refuse a token grid.
    Returns the model's scores for the first image (recorded to look)."""
    cap = record_example(model, x[:1])
    value = cap.values[cap.calls[layer][0].output]
    if TokenLayout.of(value, x, cap.grids) != TokenLayout():
        raise MethodError(
            f"Guided Grad-CAM (Captum's GuidedGradCam) reads {layer!r} as channels-first, but "
            f"{type(model).__name__} keeps its tokens channels-last there (shape "
            f"{tuple(value.shape)}); use Guided FG-Grad-CAM, or Grad-CAM (which reshapes)")
    return scores_of(cap.output)


_CAMS = [  # (name, plain class, FG weighting, aliases)
    ("Grad-CAM", GradCam, "grad_cam", ()),
    ("HiResCAM", HiResCam, "hires_cam", ()),
    ("Grad-CAM++", GradCamPlusPlus, "grad_cam++", ("Grad-CAM-pp", "Grad-CAM-plus-plus")),
    ("XGrad-CAM", XGradCam, "xgrad_cam", ()),
    ("Score-CAM", ScoreCam, "score_cam", ()),
    ("Layer-CAM", LayerCam, "layer_cam", ()),
    ("Conceptor-CAM", ConceptorCam, "conceptor", ()),
]


def _registry() -> dict[str, Method]:
    methods = []
    for name, plain, weighting, aliases in _CAMS:
        methods.append(_plain(name, plain, aliases))
        fine = tuple(f"FG-{a}" for a in aliases)
        methods.append(Method(f"FG-{name}", "FG-CAM", _fine_grained(weighting, False), True,
                              True, False, fine, weighting=weighting))
        methods.append(Method(f"FG-{name}-D", "FG-CAM", _fine_grained(weighting, True), True,
                              True, False, (f"FG-{name}-denoised", *(f"{a}-D" for a in fine)),
                              weighting=weighting))
        methods.append(Method(f"FG-{name}-DK", "FG-CAM", _fine_grained(weighting, "keep-mean"),
                              True, True, False, (f"FG-{name}-denoised-keep-mean",
                                                  *(f"{a}-DK" for a in fine)), weighting=weighting))
        methods.append(Method(f"FG-{name}-DM", "FG-CAM", _fine_grained(weighting, True, True),
                              True, True, True, (f"FG-{name}-multiscale",
                                                 *(f"{a}-DM" for a in fine)), scores=True,
                              weighting=weighting))
    methods.append(Method("RefineCAM", "CAM", _refine, True, True, True, scores=True))
    methods.append(Method("Guided Grad-CAM", "guided", _guided(False), False, True, False))
    methods.append(Method("Guided FG-Grad-CAM", "guided", _guided(True), False, True, False))
    for name, cls in (("LRP", LRP), ("CLRP", CLRP), ("SGLRP", SGLRP)):
        methods.append(Method(name, "LRP", _lrp(cls), True, True, False,
                              benchmarked_at_layers=False))
    return {m.name: m for m in methods}


#: canonical name -> method, in table order
METHODS: dict[str, Method] = _registry()
#: the paper's comparison (the benchmark's and demo's default rows)
PAPER_METHODS = ("Grad-CAM", "FG-Grad-CAM", "FG-Grad-CAM-D", "Score-CAM", "FG-Score-CAM",
                 "FG-Score-CAM-D", "Layer-CAM", "LRP", "CLRP", "SGLRP")


def _key(name: str) -> str:
    return re.sub(r"[-_\s]", "", name.lower())


_BY_KEY = {_key(alias): m for m in METHODS.values() for alias in (m.name, *m.aliases)}


def get_method(name: str) -> Method:
    """The method called ``name`` (canonical or alias; case, ``-``, ``_``, spaces ignored)."""
    method = _BY_KEY.get(_key(name))
    if method is None:
        close = difflib.get_close_matches(_key(name), list(_BY_KEY), n=3, cutoff=0.6)
        hint = (f"did you mean {', '.join(dict.fromkeys(_BY_KEY[c].name for c in close))}? "
                if close else "")
        raise MethodError(f"unknown method {name!r}; {hint}choose from {', '.join(METHODS)}")
    return method


def resolve(names: Iterable[str], layers: Sequence[str]) -> list[str]:
    """Canonical names of ``names`` (duplicates dropped), each checked to give a map at one
    of ``layers`` at least."""
    methods = [get_method(n) for n in names]
    for method in methods:
        if not any(method.supports(layer) for layer in layers):
            able = [m.name for m in METHODS.values() if all(m.supports(la) for la in layers)]
            raise MethodError(
                f"{method.name} gives maps {method.where()}, not at {', '.join(layers)}; "
                f"choose another layer, or a method with maps there ({', '.join(able[:6])}, "
                "...)")
    return list(dict.fromkeys(m.name for m in methods))


def explainers(model: nn.Module, methods: Sequence[str], layers: Sequence[str],
               example: Tensor | None = None, rules: str = "conserving",
               benchmark: bool = False) -> dict[tuple[str, str], Explainer]:
    """One explainer per (method, layer) pair where the method gives a map, in table order
    (``example``: an input batch, to find the image layer on; ``rules``: FG-CAM's and LRP's
    rule preset; ``benchmark``: the paper's pairs only, LRP family at the input)."""
    chosen = [METHODS[n] for n in resolve(methods, layers)]
    with torch.inference_mode(False):
        example = None if example is None else usable(example)
        image_layer = find_input_layer(model, example) if INPUT in layers else ""
        if example is not None:  # CAM layers checked before any map is computed
            _check_cam_layers(model, [layer for layer in layers if layer != INPUT and any(
                m.cam_at_layer for m in chosen)], example)
        out: dict[tuple[str, str], Explainer] = {}
        for layer in layers:
            to_input = layer == INPUT
            for method in chosen:
                if not method.supports(layer) or (benchmark and not to_input
                                                  and not method.benchmarked_at_layers):
                    continue
                out[method.name, layer] = _checked(model, method.build(
                    model, image_layer if to_input else layer, to_input, rules, example))
    return out


def _check_cam_layers(model: nn.Module, layers: Sequence[str], example: Tensor) -> None:
    """:func:`~captum_fgcam.propagation.layers.check_cam_layer` for each of ``layers`` on one
    recorded pass of ``example``."""
    module = unwrap(model)
    names = [qualified_name(module, layer) for layer in layers]
    if "" in names:
        check_cam_layer("")  # the model itself: refused before any pass
    if not names:
        return
    cap = record_example(module, example)
    for name in names:
        check_cam_layer(name, cap.values[module_output(cap, name)], cap.values[cap.image],
                        cap.grids, suggest=lambda: cam_layer_in(cap, module))


def _checked(model: nn.Module, explain: Explainer) -> Explainer:
    """``explain`` with its target normalised (:func:`~captum_fgcam.attr.validation.as_target`)
    before any work, run with autograd outside ``torch.inference_mode()`` (inputs made under
    it are copied; attribution needs gradients), its map refused if it holds NaN or Inf (the
    methods built on Captum's classes do not check their own)."""
    def run(x: Tensor, target: TargetType) -> Tensor:
        target = as_target(target, x.shape[0] if isinstance(x, Tensor) else None, model)
        if isinstance(target, Tensor) and isinstance(x, Tensor):
            target = target.to(x.device)
        with torch.inference_mode(False), torch.enable_grad():
            x = usable(x) if isinstance(x, Tensor) else x
            result = explain(x, target)
            refuse_non_finite(result, "the map", lambda: where_non_finite(
                record_example(model, x), unwrap(model)))
        return result
    return run
