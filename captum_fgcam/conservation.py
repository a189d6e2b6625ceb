r"""Conservation report: where FG-CAM's relevance goes, stage by stage, from the CAM layer to
the pixels.

FG-CAM propagates the CAM components E from the CAM layer to the image. With conserving rules
the relevance R^{(l)} passing each stage l keeps the CAM total,

    share_l = \sum R^{(l)} / \sum E = 1,

except for what constants take on the way: biases, position embeddings, a ViT's class and
register tokens (learned tokens prepended to the sequence: relevance reaching them never
reaches a pixel), and what a rule drops (the "reference" preset's 0/0 quotients, an epsilon).
:func:`conservation_report` reads every stage in one propagation
(:meth:`~captum_fgcam.propagation.upsampler.FineGrainedUpsampler.propagate_with_taps`) and
gives one :class:`ConservationReport` per image: a row per stage, and the split of \sum E into
what reaches the pixels, what the prefix tokens keep and what the rest absorbs.

A stage is a module whose output every path of relevance from the CAM layer to the input
passes through (elsewhere its sum would be a part of the total): :func:`_cuts` finds those
outputs in the recorded graph, :func:`_default_stages` picks the blocks among them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.fx as fx
from torch import Tensor, nn

from .arguments import TargetType
from .attr.fg_cam import ComponentPropagation
from .propagation.capture import Capture
from .propagation.graph import descendants, relevance_inputs, relevance_path
from .propagation.layers import LayerError, LayerRef, Rules, module_output, qualified_name
from .propagation.tokens import TOKENS, TokenLayout, as_grid
from .propagation.upsampler import Span
from .weightings import Weighting

__all__ = ["ConservationReport", "ConservationStage", "conservation_report"]

#: the name of the last row: the model's input
PIXELS = "input"
#: blocks are split into their own stages while there are fewer stages than this
MIN_STAGES = 4


@dataclass(frozen=True)
class ConservationStage:
    """One row of a :class:`ConservationReport`: the relevance passing ``layer``'s output
    (``"input"``: the model's input, the pixels), shares as fractions of \\sum E."""

    layer: str
    #: one image's relevance there, in the layer's own layout (C x h x w, L x C tokens, ...)
    shape: tuple[int, ...]
    #: class / register tokens in front of a token grid (0: no token sequence, or none)
    prefix_tokens: int
    #: \sum R at this stage
    total: float
    #: total / \sum E
    share: float
    #: the share the prefix tokens hold here
    prefix_share: float
    #: the share the row above held in prefix tokens that end before this row (what they keep)
    to_prefix: float
    #: the rest of the share lost since the row above (biases, constants, what rules drop)
    absorbed: float


@dataclass(frozen=True)
class ConservationReport:
    """Where one image's FG-CAM relevance goes: ``stages`` from the CAM layer (share 1) to the
    pixels (the last row); :attr:`pixels` + :attr:`prefix` + :attr:`absorbed` = 1."""

    image: int
    cam_layer: str
    cam_total: float  # \sum E
    stages: tuple[ConservationStage, ...]

    @property
    def pixels(self) -> float:
        """The share that reaches the pixels."""
        return self.stages[-1].share

    @property
    def prefix(self) -> float:
        """The share class and register tokens keep (it never reaches the pixels)."""
        return math.fsum(s.to_prefix for s in self.stages)

    @property
    def absorbed(self) -> float:
        """The share biases, constants and rules absorb on the way."""
        return math.fsum(s.absorbed for s in self.stages)

    def to_markdown(self) -> str:
        """The report as a Markdown table (the prefix-token columns only where a stage has
        prefix tokens), with the split of \\sum E below it."""
        tokens = any(s.prefix_tokens for s in self.stages)
        head = ["stage", "relevance shape", "sum R", "share of sum E",
                *(["in prefix tokens", "kept by prefix tokens"] if tokens else []),
                "absorbed since the row above"]
        lines = [f"Conservation of FG-CAM relevance, image {self.image}: sum E = "
                 f"{self.cam_total:.6g} at the CAM layer {self.cam_layer!r}", "",
                 f"| {' | '.join(head)} |", "|---|---|" + "---:|" * (len(head) - 2)]
        for i, stage in enumerate(self.stages):
            above = self.stages[i - 1] if i else None
            name = (f"{stage.layer} (CAM layer)" if above is None else "input (pixels)"
                    if i == len(self.stages) - 1 else stage.layer)
            shape = " x ".join(map(str, stage.shape))
            if stage.prefix_tokens:
                patches = stage.shape[0] - stage.prefix_tokens
                shape += f" ({stage.prefix_tokens} prefix + {patches} tokens)"
            cells = [name, shape, f"{stage.total:.6g}", _percent(stage.share)]
            if tokens:
                cells += [_percent(stage.prefix_share) if stage.prefix_tokens else "",
                          _percent(stage.to_prefix) if above and above.prefix_tokens else ""]
            cells.append(_percent(stage.absorbed) if above else "")
            lines.append(f"| {' | '.join(cells)} |")
        lines += ["", f"pixels {_percent(self.pixels)} + prefix tokens {_percent(self.prefix)}"
                      f" + absorbed {_percent(self.absorbed)} = "
                      f"{_percent(self.pixels + self.prefix + self.absorbed)} of sum E"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def _percent(share: float) -> str:
    return f"{round(100 * share, 2) + 0.0:.2f} %"  # + 0.0: no "-0.00"


def conservation_report(model: nn.Module, inputs: Tensor | tuple[Tensor, ...],
                        target: TargetType = None, *, cam_layer: LayerRef | None = None,
                        stages: Sequence[LayerRef] | None = None,
                        weighting: str | Weighting | Any = "grad_cam", rules: Rules = None,
                        fold_batchnorm: bool = False,
                        additional_forward_args: Any = None) -> list[ConservationReport]:
    """Where FG-CAM's relevance goes from the CAM layer to the pixels, stage by stage: one
    :class:`ConservationReport` per image of ``inputs`` (per image, not averaged over the
    batch; ``print`` one for a Markdown table).

    The other arguments are :class:`~captum_fgcam.FGCam`'s and its ``attribute``'s.
    ``stages``: modules (or dotted names) between the CAM layer and the input whose output all
    relevance passes (no skip connection or other branch goes by it), in any order; the rows
    follow the relevance, deepest first. Default: the outermost such modules that are blocks
    (with submodules), single layers that downsample, and the first module after class or
    register tokens are prepended (where their share is read), blocks split into theirs while
    there are fewer than four: VGG's max pools; ResNet's ``layer1`` to ``layer3``, ``layer4``'s
    blocks before the CAM layer, ``maxpool``, ``conv1``; a ViT's encoder blocks, embedding
    dropout and patch projection; Swin's stages and patch merges.
    """
    report = _Report(model, model, weighting=weighting, cam_layer=cam_layer, rules=rules,
                     fold_batchnorm=fold_batchnorm)
    return report.reports(inputs, target, additional_forward_args, stages)


class _Report(ComponentPropagation):
    """FG-CAM from the CAM layer to the model's input, read at the stages on the way."""

    def reports(self, inputs: Tensor | tuple[Tensor, ...], target: TargetType,
                additional_forward_args: Any, stages: Sequence[LayerRef] | None
                ) -> list[ConservationReport]:
        return self._attribute(inputs, target, additional_forward_args, None, True, False, 0,
                               lambda span, e, cam: self._rows(span, e, cam, stages))

    def _rows(self, span: Span, components: Tensor, cam_layer: str,
              stages: Sequence[LayerRef] | None) -> list[ConservationReport]:
        cap = span.capture
        names = (_default_stages(span, self.module, cam_layer) if stages is None
                 else self._checked(span, [qualified_name(self.module, s) for s in stages],
                                    cam_layer))
        pixels, tapped = self.upsampler.propagate_with_taps(span, components, names, grid=False)
        assert isinstance(pixels, Tensor)  # one stop: the model's input
        image = cap.values[cap.image]
        rows = [(cam_layer, components), *zip(names, tapped, strict=True), (PIXELS, pixels)]
        prefixes = [0 if name == PIXELS else _prefix(r, image, cap.grids) for name, r in rows]
        return [_report(i, cam_layer, [(name, r[i], p) for (name, r), p in zip(rows, prefixes,
                                                                              strict=True)])
                for i in range(components.shape[0])]

    def _checked(self, span: Span, names: list[str], cam_layer: str) -> list[str]:
        """``names`` in the order relevance passes them (deepest first, one per output),
        each refused unless all relevance passes it."""
        cap, cuts = span.capture, _cuts(span)
        nodes = {name: module_output(cap, name) for name in names}
        first = min(cap.position[s] for s in span.stops)
        for name, node in nodes.items():
            if not first < cap.position[node] <= cap.position[span.start]:
                raise LayerError(f"stage {name!r} is not between the CAM layer and the input; "
                                 "relevance passes only the modules in between")
            if node not in cuts:
                raise LayerError(
                    f"stage {name!r} is not on every path from the input to the CAM layer (a "
                    "skip connection or another branch passes by it): its sum would be a part "
                    "of the total; choose the output of a whole block, e.g. one of "
                    f"{_default_stages(span, self.module, cam_layer)}")
        return _in_order(cap.position, {n: node for n, node in nodes.items()
                                        if node is not span.start})


def _prefix(relevance: Tensor, image: Tensor, grids: frozenset[tuple[int, int]]) -> int:
    layout = TokenLayout.of(relevance, image, grids)
    return layout.prefix if layout.kind == TOKENS else 0


def _report(image: int, cam_layer: str, rows: list[tuple[str, Tensor, int]]
            ) -> ConservationReport:
    """One image's report from (layer, relevance, prefix tokens) per row, the CAM layer's
    first."""
    cam_total = float(rows[0][1].double().sum())
    stages: list[ConservationStage] = []
    for name, r, prefix in rows:
        total = float(r.double().sum())
        share = total / cam_total if cam_total else math.nan
        held = float(r[:prefix].double().sum()) / cam_total if cam_total and prefix else 0.0
        kept = lost = 0.0
        if stages:
            above = stages[-1]
            kept = above.prefix_share - held if prefix < above.prefix_tokens else 0.0
            lost = above.share - share - kept
        stages.append(ConservationStage(name, tuple(r.shape), prefix, total, share, held, kept,
                                        lost))
    return ConservationReport(image, cam_layer, cam_total, tuple(stages))


def _cuts(span: Span) -> set[fx.Node]:
    """The nodes between the stops and the start that every path of relevance from the start
    to the stops passes through: no edge of the path jumps over them (nodes are recorded in
    the order they ran, so a path avoiding a node has an edge from before it to after it)."""
    cap = span.capture
    position = cap.position
    on_path = relevance_path(cap.values, span.start) & set().union(
        *map(descendants, span.stops))
    jumps = [0] * (len(cap.nodes) + 1)  # +1 where an edge starts jumping, -1 where it lands
    for node in on_path:
        for source in relevance_inputs(cap.values, node):
            if source in on_path and position[node] - position[source] > 1:
                jumps[position[source] + 1] += 1
                jumps[position[node]] -= 1
    cuts, over = set(), 0
    for i, node in enumerate(cap.nodes):
        over += jumps[i]
        if over == 0 and node in on_path:
            cuts.add(node)
    return cuts


def _default_stages(span: Span, model: nn.Module, cam_layer: str) -> list[str]:
    """The default stages of ``span`` (from the CAM layer ``cam_layer`` to the input; see
    :func:`conservation_report`), deepest first."""
    cap = span.capture
    cuts, image = _cuts(span), cap.values[cap.image]
    first = min(cap.position[s] for s in span.stops)

    def output(name: str) -> fx.Node | None:
        calls = cap.calls.get(name, [])
        node = calls[0].output if len(calls) == 1 else None
        return node if node in cuts and first < cap.position[node] < cap.position[
            span.start] else None

    outputs = {name: node for name in cap.calls if (node := output(name)) is not None}
    prefixed = [n for n in outputs.values() if _prefix(cap.values[n], image, cap.grids)]
    first_prefixed = min(prefixed, key=cap.position.__getitem__, default=None)

    def rows(name: str) -> list[str]:
        picked: list[str] = []
        for child, module in model.get_submodule(name).named_children():
            full = f"{name}.{child}" if name else child
            node = outputs.get(full)
            if node is None or full == cam_layer or cam_layer.startswith(f"{full}."):
                picked += rows(full)
            elif _is_block(module) or node is first_prefixed or _downsamples(cap, full):
                picked.append(full)
        return picked

    picked = rows("")
    while len(picked) < MIN_STAGES:
        split = {name: inner for name in picked if _is_block(model.get_submodule(name))
                 and len(inner := rows(name)) > 1}
        if not split:
            break
        picked = [n for name in picked for n in split.get(name, [name])]
    return _in_order(cap.position, {name: outputs[name] for name in picked})


def _in_order(position: dict[fx.Node, int], nodes: dict[str, fx.Node]) -> list[str]:
    """The names deepest first, the first (outermost) of those sharing an output."""
    unique = {node: name for name, node in reversed(nodes.items())}
    return [unique[node] for node in sorted(unique, key=position.__getitem__, reverse=True)]


def _is_block(module: nn.Module) -> bool:
    return next(module.children(), None) is not None


def _downsamples(cap: Capture, name: str) -> bool:
    """Whether module ``name``'s output has fewer positions than its input (as grids)."""
    call, image = cap.calls[name][0], cap.values[cap.image]
    if not call.inputs:
        return False
    before, after = (as_grid(cap.values[n], image, cap.grids) for n in (call.inputs[0],
                                                                         call.output))
    return before.dim() == after.dim() > 2 and after.shape[2:].numel() < before.shape[2:].numel()


