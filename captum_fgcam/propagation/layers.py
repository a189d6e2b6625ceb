"""Layers in the captured graph: names, module inputs and outputs, and the default layers.

A layer argument is a module of the model or its dotted name. Where it sits in the graph is
read from a :class:`~.capture.Capture` of the real input: the node of the module's output, or
of its input. ``find_cam_layer`` / ``find_input_layer`` / ``find_output_layer`` read the same
capture (of an example input, synthesised from the first layer when none is given), recorded
with the rules the explainer will use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .._state import usable
from ..targets import detections_of, scores_of
from . import ops
from .capture import Capture, capture, unwrap
from .graph import ancestors, relevance_path, site
from .presets import RuleMap, resolve_rules
from .selectors import Site
from .tokens import TOKENS, TokenLayout
from .views import LINEAR_LAYERS

LayerRef = nn.Module | str
Rules = None | str | RuleMap | Mapping[Any, Any]


class LayerError(ValueError):
    """A layer argument that does not name a usable place in the model."""


#: the names wrappers give the wrapped model: DataParallel / DDP, torch.compile
WRAPPER_NAMES = ("module", "_orig_mod")


def qualified_name(model: nn.Module, layer: LayerRef) -> str:
    """The dotted name of ``layer`` in ``model`` ("features.13"), checking it exists once.

    ``model`` is the model with its wrappers looked through (:func:`~.capture.unwrap`); the
    wrappers' own names are accepted for the same modules: ``"module.features.13"``
    (DataParallel, DDP), ``"_orig_mod.features.13"`` (``torch.compile``), ``"module"`` or
    the wrapper object itself for the model.
    """
    if isinstance(layer, str):
        name = layer
        while True:
            try:
                model.get_submodule(name)
                return name
            except AttributeError as err:
                if name.split(".")[0] not in WRAPPER_NAMES:
                    raise LayerError(
                        f"the model has no submodule named {layer!r}; use a name from "
                        "model.named_modules(), e.g. 'features.13'") from err
                name = name.partition(".")[2]
    if not isinstance(layer, nn.Module):
        raise LayerError(f"layer must be a module of the model or its dotted name; got "
                         f"{type(layer).__name__}")
    if unwrap(layer) is model:  # the model, or a wrapper around it
        return ""
    names = [name for name, module in model.named_modules(remove_duplicate=False)
             if module is layer]
    if not names:
        raise LayerError(
            f"layer {type(layer).__name__} is not a submodule of the model; pass a module "
            "taken from this model (e.g. model.features[13]) or its name ('features.13')"
        )
    if len(names) > 1:
        raise LayerError(
            f"layer {type(layer).__name__} is registered in the model under several names "
            f"{names}; a layer used in several places has no single output to explain"
        )
    return names[0]


def require_module(model: object) -> None:
    """Refuse what FG-CAM cannot record: a plain function, a TorchScript module."""
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            "FG-CAM cannot look inside a TorchScript module (torch.jit.script / trace): its "
            "operations do not run in Python. Pass the original nn.Module")
    if not isinstance(model, nn.Module):
        raise TypeError(
            "FG-CAM needs the model as an nn.Module (it records the operations the model "
            f"runs); got {type(model).__name__}. Pass the model itself rather than a function.")


def resolve_module(model: nn.Module, layer: LayerRef) -> nn.Module:
    """The module ``layer`` refers to in ``model`` (wrappers looked through; validated as in
    :func:`qualified_name`)."""
    model = unwrap(model)
    return model.get_submodule(qualified_name(model, layer))


def module_output(cap: Capture, name: str) -> fx.Node:
    """The node whose value is the output of the module ``name`` (of a module returning a tuple
    or list, its first element: Hugging Face layers' and stages' hidden states)."""
    if name == "":
        raise LayerError(
            "layer is the model itself, whose output is the class scores, not a map; pass "
            "attribute_to_layer_input=True for a map of the model's input (the image), or one "
            "of its submodules, e.g. 'features.13' or 'layer2'")
    calls = cap.calls.get(name, [])
    if not calls:
        raise LayerError(
            f"layer {name!r} is never called in the model's forward pass (or does not read "
            "the input); choose a layer that runs (see print(model))")
    if len(calls) > 1:
        raise LayerError(
            f"layer {name!r} is called {len(calls)} times in one forward pass, so it has no "
            "single output; choose a module that runs once")
    node = calls[0].output if calls[0].output is not None else calls[0].first
    if node is None:
        raise LayerError(
            f"layer {name!r} does not return a tensor computed from the input (nor a tuple or "
            "list whose first element is one); choose a module with one output")
    return node


def module_inputs(cap: Capture, name: str) -> tuple[fx.Node, ...]:
    """The nodes feeding the module ``name`` (its tensor inputs computed from the image, in
    order of first use)."""
    if name == "":  # the model itself: its input is the image
        return (cap.image,)
    module_output(cap, name)  # validates that the layer runs once with one output
    inputs = tuple(dict.fromkeys(cap.calls[name][0].inputs))
    if not inputs:
        raise LayerError(f"layer {name!r} has no input computed from the model's input")
    return inputs


def example_input(model: nn.Module) -> Tensor:
    """One input shaped for the model's first convolution or linear layer (224 px images,
    224-sample signals, 16 x 112 x 112 volumes)."""
    first = next((m for m in model.modules()
                  if isinstance(m, LINEAR_LAYERS)), None)
    if first is None:
        raise LayerError(f"{type(model).__name__} has no convolution or linear layer; pass an "
                         "example input")
    p = first.weight
    if isinstance(first, nn.Linear):
        shape: tuple[int, ...] = (first.in_features,)
    else:
        shape = (first.in_channels, *{1: (224,), 2: (224, 224), 3: (16, 112, 112)}[p.dim() - 2])
    return torch.randn(1, *shape, dtype=p.dtype, device=p.device)


def record_example(model: nn.Module, inputs: Tensor | Sequence[Tensor] | None,
                   rules: Rules = None) -> Capture:
    """One recorded forward pass of ``model`` on ``inputs`` (default: a random input shaped
    for its first layer) with the operations ``rules`` records (see
    :meth:`~.presets.RuleMap.is_leaf`), training flags restored; also inside
    ``torch.inference_mode()`` (the pass runs outside it, on copies of inference tensors)."""
    module = unwrap(model)
    require_module(module)
    synthetic = inputs is None
    training = {m: m.training for m in module.modules()}
    try:
        with torch.inference_mode(False), torch.no_grad():  # inference tensors: no versions
            if inputs is None:
                inputs = (example_input(module),)
            elif isinstance(inputs, Tensor):
                inputs = (inputs,)
            inputs = tuple(usable(x) for x in inputs)
            return capture(module, inputs, is_leaf=resolve_rules(rules).bind(module).is_leaf)
    except (RuntimeError, ValueError) as err:
        if not synthetic:
            raise
        raise LayerError(
            f"{type(module).__name__} does not run on a random input of shape "
            f"{tuple(inputs[0].shape)} ({err}); pass an example input, e.g. "
            "find_cam_layer(model, x)") from err
    finally:
        for m, mode in training.items():
            m.training = mode


def producing_module(cap: Capture, node: fx.Node | None,
                     skip: Callable[[str], bool] = lambda name: False) -> str | None:
    """The innermost module, run exactly once, whose output is ``node``'s value (leaving out
    modules for which ``skip`` is true)."""
    if node is None or node.op == "placeholder":
        return None
    candidates = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
    for name in reversed(candidates):
        if skip(name):
            continue
        calls = cap.calls.get(name, [])
        if len(calls) == 1 and calls[0].output is node:
            return name
    return None


def _global(cap: Capture, node: fx.Node) -> bool:
    """Whether ``node`` pools a spatial map down to one value per channel."""
    value, source = cap.values.get(node), node.all_input_nodes[:1]
    if not isinstance(value, Tensor) or not source:
        return False
    before = cap.values.get(source[0])
    return (isinstance(before, Tensor) and before.dim() >= 3 and before.shape[2:].numel() > 1
            and (value.dim() == 2 or (value.dim() >= 3 and value.shape[2:].numel() == 1)))


def _moves_only(cap: Capture) -> Callable[[str], bool]:
    """Whether a module only moves elements (a ``Permute``, a window departition): every
    operation recorded inside it routes."""
    def test(name: str) -> bool:
        inside = [n for n in cap.nodes if name in n.meta.get("nn_module_stack", {})]
        return bool(inside) and all(n.op == "call_function"
                                    and ops.kind_of(n.target) == ops.ROUTE for n in inside)
    return test


def _class_token_layer(cap: Capture, model: nn.Module,
                       kinds: list[tuple[fx.Node, Site]]) -> fx.Node | None:
    """For a transformer that reads its class token (no global pooling): the last
    normalisation feeding the last attention, whose tokens that attention mixes into the class
    token (the last block's own output reaches the head through the class token alone)."""
    attention = [n for n, s in kinds if s.kind == ops.ATTENTION or s.op_name == ops.SOFTMAX]
    if not attention:
        return None
    feeding = ancestors(attention[-1])
    norms = [n for n, s in kinds if n in feeding and s.op_name in NORMALISATIONS
             and producing_module(cap, n) is not None]
    return norms[-1] if norms else None


#: the normalisations a transformer block starts with (modules, and functions inside modules
#: such as timm's ``LayerNorm``)
NORMALISATIONS = frozenset(["LayerNorm", "GroupNorm", "RMSNorm", "BatchNorm1d", "layer_norm",
                            "rms_norm", "group_norm", "batch_norm"])


def cam_layer_in(cap: Capture, model: nn.Module) -> str:
    """The module whose output feeds the classifier head's global pooling (see
    :func:`find_cam_layer`)."""
    stage = _backbone_stage(cap, model)
    if stage is not None:
        return stage
    kinds = [(n, site(cap, model, n, False)) for n in cap.nodes
             if n.op in ("call_module", "call_function")]
    pools = [n for n, s in kinds if s.kind in (ops.SUM, ops.MAX)
             and (s.op_name.lower().startswith("adaptive") or _global(cap, n))]
    flattens = [n for n, s in kinds
                if s.op_name in ("flatten", "view", "reshape", "Flatten", "linear", "Linear")]
    feature = None
    if pools:
        feature = pools[-1].all_input_nodes[0] if pools[-1].all_input_nodes else None
    else:
        feature = _class_token_layer(cap, model, kinds)
        if feature is None and flattens and flattens[0].all_input_nodes:
            feature = flattens[0].all_input_nodes[0]
    name = producing_module(cap, feature, skip=_moves_only(cap))
    while name is None and feature is not None and feature.op == "call_function" \
            and len(feature.all_input_nodes) == 1 \
            and (not feature.meta.get("nn_module_stack")
                 or ops.kind_of(feature.target) == ops.ROUTE):
        feature = feature.all_input_nodes[0]  # (Swin: the norm behind a Permute module)
        name = producing_module(cap, feature, skip=_moves_only(cap))
    if name is None or feature is None:
        raise LayerError(
            f"could not find a CAM layer in {type(model).__name__} (the module whose output "
            "feeds the classifier's global pooling); pass cam_layer= explicitly")
    path = relevance_path(cap.values, feature)
    unsupported = [s for n, s in kinds if s.kind == ops.UNSUPPORTED and n in path]
    if unsupported:
        what = unsupported[0]
        raise LayerError(
            f"{type(model).__name__} runs {what.op_name} ({what.kind} operation) before its "
            f"candidate CAM layer {name!r}: {ops.UNSUPPORTED_REASON}")
    return name


def _backbone_stage(cap: Capture, model: nn.Module) -> str | None:
    """For a dense prediction (an N x C x H x W output: segmentation; or a detector's list of
    detections), a stage of the model's ``backbone`` (``backbone.body`` under a feature
    pyramid and ``backbone.features`` in SSD, as torchvision builds them) or of its encoder
    (Hugging Face: ``segformer.encoder`` or ``.stages``), among its children that ran once and
    returned one image-shaped tensor: the shallowest one whose output is read outside the
    backbone (the finest level of a feature pyramid, LR-ASPP's low-level branch). The stages
    run one after the other, so every path from the image to every head passes through it:
    the CAM accounts for the whole score, not for the paths through the last stage only.
    Where no output is seen leaving (a Hugging Face encoder collects them in its own
    forward), the last stage. An error naming the fix where there is none; None for other
    models."""
    scores = scores_of(cap.output, strict=False)
    if not ((scores is not None and scores.dim() >= 4) or detections_of(cap.output)):
        return None  # scores, an embedding: not a dense prediction
    names = dict(model.named_modules())
    encoders = [n for n in names if n.rsplit(".", 1)[-1] in ("stages", "encoder")]
    root = next((n for n in ("backbone.body", "backbone.features", "backbone", *encoders)
                 if n in names), None)
    stages = [] if root is None else [f"{root}.{child}"
                                      for child, _ in names[root].named_children()]
    ran = [n for n in stages if len(cap.calls.get(n, [])) == 1
           and isinstance(cap.values.get(cap.calls[n][0].output), Tensor)
           and cap.values[cap.calls[n][0].output].dim() == 4]
    if not ran:
        raise LayerError(
            f"{type(model).__name__} makes a dense prediction (an output of shape "
            f"{tuple(scores.shape) if scores is not None else 'detections'}) and has no "
            "backbone or encoder stages to take a CAM layer from; pass cam_layer= (the "
            "encoder's last stage)")
    read = [n for n in ran if _read_outside(cap.calls[n][0].output, root)]
    if read:
        return min(read, key=lambda n: cap.position[cap.calls[n][0].output])
    return max(ran, key=lambda n: cap.position[cap.calls[n][0].output])


def _read_outside(node: fx.Node, root: str) -> bool:
    """Whether an operation outside module ``root`` reads ``node``."""
    for user in node.users:
        stack = list(user.meta.get("nn_module_stack", {}).values())
        inner = stack[-1][0] if stack else ""
        if not (inner == root or inner.startswith(f"{root}.")):
            return True
    return False


def check_cam_layer(name: str, value: Tensor | None = None, image: Tensor | None = None,
                    grids: Collection[tuple[int, int]] = (), gradient: Tensor | None = None,
                    positions: int = 1, suggest: Callable[[], str] | None = None) -> None:
    """Refuse a CAM layer that cannot give a CAM, before any weighting runs, naming one that
    can (``suggest()``: :func:`cam_layer_in`'s choice, where an input is at hand). The one
    validation of CAM layers, used by FG-CAM, multi-scale FG-CAM, the plain CAMs, the
    registry and the commands. Refused:

    - the model itself (``name`` ""; checked at construction): its output is the scores;
    - a layer whose output ``value`` has no spatial positions (N x C: flattened or pooled
      features, a linear layer): a CAM would be one number per example;
    - fewer than ``positions`` positions (multi-scale FG-CAM's and RefineCAM's min-max
      normalised 1 x 1 map is 0 everywhere, and so would be their product);
    - a token layer none of whose grid positions reaches the score (``gradient``, dy/dA, is 0
      at all of them but not at the prefix tokens: a ViT that reads its class token after
      this layer's last attention; every map from it would be 0).
    """
    problem = None
    if name == "":
        problem = "is the model itself, whose output is the class scores, not a feature map"
    elif value is not None and image is not None:
        layout = TokenLayout.of(value, image, grids)
        grid = layout.to_grid(value)
        size = tuple(grid.shape[2:])
        if not size:
            problem = (f"has no spatial positions (output shape {tuple(value.shape)}: "
                       "flattened or pooled features, or a linear layer's); a CAM there "
                       "would be one number per example")
        elif math.prod(size) < positions:
            problem = (f"has a single position ({' x '.join(map(str, size))}) at this input "
                       "size; multi-scale FG-CAM and RefineCAM min-max normalise each map, "
                       "which makes a 1-position map 0 and their product all zero (give a "
                       "larger input)")
        elif gradient is not None and layout.kind == TOKENS and layout.prefix \
                and not bool(gradient[:, layout.prefix:].any()) \
                and bool(gradient[:, :layout.prefix].any()):
            problem = ("reaches the score through its prefix (class) tokens only: its grid "
                       "tokens' gradient is 0 (the model reads its class token after this "
                       "layer's last attention), so every map from it would be 0")
    if problem is None:
        return
    try:
        better = suggest() if suggest is not None else None
    except (LayerError, RuntimeError, TypeError, ValueError):  # only a hint
        better = None
    hint = (f"use {better!r} (find_cam_layer's choice)" if better and better != name
            else "find_cam_layer(model, x) names a layer that can (FG-CAM: leave cam_layer="
            "None to use it)")
    raise LayerError(f"the CAM layer {name!r} {problem}; {hint}")


def find_cam_layer(model: nn.Module, inputs: Tensor | Sequence[Tensor] | None = None,
                   rules: Rules = None) -> str:
    """The default CAM layer: the module whose output feeds the classifier head's pooling;
    for a dense prediction (segmentation, detection), the backbone stage every head reads through.

    The head's pooling is the *last* global pooling (adaptive pooling, ``mean``, ``amax``) the
    model runs, which skips the pools inside squeeze-excitation blocks; a model without one
    uses its first flatten or linear operation. For torchvision VGG this gives
    ``features.43`` (the last MaxPool), for ResNet ``layer4.1`` (the last block). When the
    pooled value comes from a function outside any module (DenseNet's final ``F.relu``), the
    search walks back through such single-input operations; among the modules producing the
    value, the innermost one that runs exactly once is chosen. The model runs once on
    ``inputs`` (default: a random input shaped for its first layer, see
    :func:`example_input`). Transformers: a token grid that is averaged (Swin, MaxViT, ViTs
    with average pooling) is found the same way (Swin: the final ``norm``); a ViT that reads
    its class token gives the last normalisation before the last attention (torchvision:
    ``encoder.layers.encoder_layer_11.ln_1``, timm: ``blocks.11.norm1``), whose tokens that
    attention mixes into the class token. Segmentation models and detectors (an output with
    spatial dimensions, or a list of detections) with a ``backbone`` (torchvision's, or
    ``backbone.body`` under a feature pyramid) give its shallowest stage read outside the
    backbone (``backbone.layer4`` of FCN, ``backbone.4`` of LR-ASPP's low-level branch,
    ``backbone.body.layer2`` of RetinaNet's pyramid): every path to every head passes through
    it (SegFormer's decoder reads every encoder stage: ``segformer.stages.0``). ``rules``:
    those of the explainer that will use the answer (they decide how finely the graph is
    recorded; default: the conserving preset).
    """
    module = unwrap(model)
    return cam_layer_in(record_example(module, inputs, rules), module)


def find_output_layer(model: nn.Module, inputs: Tensor | Sequence[Tensor] | None = None,
                      rules: Rules = None) -> str:
    """The module whose output is the model's output (the logits), e.g. ``fc``."""
    cap = record_example(model, inputs, rules)
    result = next((n for n in cap.nodes if n.op == "output"), None)
    name = producing_module(cap, result.args[0] if result is not None else None)
    if name is None:
        raise LayerError(
            f"could not find the module producing {type(model).__name__}'s output (the "
            "logits); pass output_layer= explicitly")
    return name


def input_layer_in(cap: Capture, model: nn.Module) -> str:
    """The outermost module whose input is the model's input (see :func:`find_input_layer`)."""
    for name, _ in model.named_modules():
        calls = cap.calls.get(name, [])
        if name and len(calls) == 1 and calls[0].inputs[:1] == [cap.image] \
                and calls[0].output is not None:
            return name
    return ""  # the image is changed (e.g. normalised) before any submodule: the model


def find_input_layer(model: nn.Module, inputs: Tensor | Sequence[Tensor] | None = None,
                     rules: Rules = None) -> str:
    """The outermost module that takes the model's input (the image) as its input.

    Attributing to this module's input (``attribute_to_layer_input=True``) gives a map in
    pixel space: ``features`` for torchvision VGG, ``conv1`` for ResNet, a model's own
    masking or cropping module when it has one in front of its first convolution, and ""
    (the model itself, whose input is the image) when the model changes the image before any
    submodule sees it (normalisation in ``forward``).
    """
    module = unwrap(model)
    return input_layer_in(record_example(module, inputs, rules), module)
