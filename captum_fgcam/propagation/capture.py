"""Graph capture: the operations that actually ran, recorded while the model runs eagerly.

FG-CAM needs the order in which operations ran (functional ones such as ``+``,
``torch.chunk`` or ``F.batch_norm`` included) and the value each produced. Instead of tracing
the model symbolically (``torch.fx`` fails on shape checks, dataclass outputs, ``DataParallel``
and many Hugging Face models), we run the real model once on the real input and record, with a
``TorchFunctionMode`` and process-wide module hooks that are active for this thread and this
model only:

- every call of a built-in ``torch.nn`` module without submodules that the rule map knows
  (``nn.Conv2d``, ``nn.BatchNorm2d``, ...), as one ``call_module`` node;
- every other torch function or tensor method that reads an activation (a tensor computed from
  the input), as a ``call_function`` node; parameters, buffers and tensors computed from them
  only are constants, not nodes, and so are tensors built from an activation's shape alone
  (``x.new_zeros``, ``torch.ones_like``: Swin's shifted-window mask);
- the input and output of every module of the model (for ``layer`` arguments).

The result is an ``fx.Graph`` of the operations this input ran through, with their values.
Python control flow is simply executed; the user's forward, its hooks and its side effects run
exactly as in ``model(x)``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils import hooks as torch_hooks

from ..targets import scores_of
from .detectors import recordable
from .ops import CONSTANT_FACTORIES, is_inplace, op_name, out_of_place
from .tokens import grids_of

#: ``grad_from`` when the layer is not known before the pass: autograd runs from the input on,
#: and every module's output is kept (those the model changes in place afterwards dropped)
ANY_LAYER = "*"


class CaptureError(TypeError):
    """The model ran an operation whose effect on activations cannot be recorded."""


@dataclass
class ModuleCall:
    """One call of a module: the nodes of its tensor inputs and of its output; ``first``: of
    the first element of the tuple or list it returns instead (Hugging Face's layers and
    stages return ``(hidden_states, ...)``, ``nn.MultiheadAttention`` ``(output, weights)``),
    where that element is a tensor computed from the input."""

    inputs: list[fx.Node]
    output: fx.Node | None
    first: fx.Node | None = None


@dataclass
class Capture:
    """The recorded forward pass of one batch."""

    graph: fx.Graph
    values: dict[fx.Node, Any]
    output: Any
    calls: dict[str, list[ModuleCall]]
    image: fx.Node
    #: the ``grad_from`` module's output, the root of an autograd graph to the scores
    live: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nodes: list[fx.Node] = list(self.graph.nodes)
        self.position = {node: i for i, node in enumerate(self.nodes)}
        #: the spatial sizes of the recorded 4-D values (to read token sequences)
        self.grids = grids_of(self.values.values())


def _finite(value: Any) -> bool:
    if isinstance(value, Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, tuple):
        return all(_finite(v) for v in value)
    return True


def where_non_finite(cap: Capture, model: nn.Module) -> str:
    """Where NaN or Inf first appears in the recorded pass: the operation, its module, and that
    module's non-finite parameters or buffers (a diagnosis, run only when something is wrong)."""
    for node in cap.nodes:
        if node.op == "placeholder" or _finite(cap.values.get(node)):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        name = next(reversed(stack), "")
        place = f"in module {name!r}" if name else "in the model's own forward"
        owner = model.get_submodule(name)
        bad = [n for n, t in [*owner.named_parameters(), *owner.named_buffers()]
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        cause = (f"; its {'/'.join(bad)} hold NaN or Inf" if bad else
                 " from finite inputs (an overflow, or a division by zero)")
        return f"NaN or Inf first appears at {node.name!r} {place}{cause}"
    return "the recorded forward pass is finite: the weighting produced NaN or Inf"


def refuse_non_finite(value: Tensor, what: str, locate: Callable[[], str]) -> None:
    """Refuse NaN or Inf in ``value`` (the model's scores, components, a map), also where
    weights and inputs are finite (an overflow: no map explains an infinite score), saying
    where it first appears (``locate()``, run only then: e.g. :func:`where_non_finite`)."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"NaN or Inf in {what}: {locate()}")


def unwrap(model: nn.Module) -> nn.Module:
    """The module that does the work inside ``DataParallel``, DDP and ``torch.compile``; for a
    torchvision detector, its recordable view (:mod:`.detectors`)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return recordable(model)


class _Recorder(TorchFunctionMode):
    """Builds the graph while the model runs; see the module docstring."""

    def __init__(self, model: nn.Module, is_leaf: Callable[[nn.Module, str], bool],
                 reads_values: Callable[[Any], bool], grad_from: str | None) -> None:
        super().__init__()
        self.graph = fx.Graph()
        self.values: dict[fx.Node, Any] = {}
        self.nodes_of: dict[int, tuple[Tensor, fx.Node]] = {}  # id(tensor) -> (tensor, node)
        self.names: dict[int, str] = {}
        self.modules: dict[str, nn.Module] = {}
        for name, module in model.named_modules(remove_duplicate=False):
            self.names.setdefault(id(module), name)
            self.modules[name] = module
        self.is_leaf = is_leaf
        self.reads_values = reads_values
        self.grad_from = grad_from
        self.live: dict[str, Tensor] = {}
        self.versions: dict[str, int] = {}  # of the live outputs when they were made
        self.calls: dict[str, list[ModuleCall]] = {}
        self.stack: list[tuple[str, nn.Module, bool, list[fx.Node], Any]] = []
        self.inside_leaf = 0
        self.muted = False  # our own bookkeeping in the module hooks is not recorded
        self.thread = threading.get_ident()
        self.counts: dict[str, int] = {}
        self.batch = -1  # the image batch's size

    # -- bookkeeping -------------------------------------------------------------------
    def module_stack(self) -> dict[str, tuple[str, type]]:
        """The modules running now, outermost first (the model itself left out, as fx does)."""
        return {n: (n, type(m)) for n, m, *_ in self.stack if n}

    def node_of(self, value: Any) -> fx.Node | None:
        if isinstance(value, Tensor):
            entry = self.nodes_of.get(id(value))
            if entry is not None and entry[0] is value:
                return entry[1]
        return None

    def bind(self, value: Tensor, node: fx.Node) -> None:
        self.nodes_of[id(value)] = (value, node)
        self.values[node] = value.detach()

    def placeholder(self, value: Tensor, index: int) -> fx.Node:
        if index == 0:
            self.batch = value.shape[0] if value.dim() else -1
        node = self.graph.placeholder(f"input_{index}")
        node.meta["nn_module_stack"] = {}
        self.bind(value, node)
        return node

    def _map(self, obj: Any) -> Any:
        """Activations -> their nodes, everything else (constants) as is."""
        if isinstance(obj, Tensor):
            node = self.node_of(obj)
            return obj if node is None else node
        if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
            return type(obj)(self._map(o) for o in obj)
        if isinstance(obj, dict):
            return {k: self._map(v) for k, v in obj.items()}
        return obj

    def _live(self, obj: Any) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg(self._map(obj), found.append)
        return found

    def _protect(self, nodes: list[fx.Node], op: Any) -> None:
        """Copy recorded values an in-place operation ``op`` is about to overwrite, where its
        rule or the rule of an operation that already read them needs the values."""
        for node in nodes:
            readers = [op] + [self._op(user) for user in node.users]
            if any(self.reads_values(r) for r in readers):
                self.values[node] = self.values[node].clone()

    def _op(self, node: fx.Node) -> Any:
        return self.modules[str(node.target)] if node.op == "call_module" else node.target

    # -- torch functions ---------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if self.inside_leaf or self.muted or threading.get_ident() != self.thread:
            return func(*args, **kwargs)
        live = self._live((args, kwargs))
        name = op_name(func)
        if not live or name in CONSTANT_FACTORIES:
            return func(*args, **kwargs)
        target = self.node_of(args[0]) if args else None
        if is_inplace(func, kwargs) and target is not None:
            self._protect([target], func)
        versions = [self.values[n]._version for n in live if isinstance(self.values[n], Tensor)]
        mapped_args = self._map(args)  # before the call: in-place ops rebind their output
        mapped_kwargs = self._map(kwargs)
        output = func(*args, **kwargs)
        if not isinstance(output, (Tensor, tuple, list)) or (
                isinstance(output, (tuple, list))
                and not any(isinstance(o, Tensor) for o in output)):
            changed = [v for n, v in zip(live, versions, strict=False)
                       if isinstance(self.values[n], Tensor) and self.values[n]._version != v]
            if changed and not is_inplace(func, kwargs):
                raise CaptureError(
                    f"the model changes an activation in place with {name} (e.g. "
                    "x[...] = y); FG-CAM cannot tell which values the following operations "
                    "saw. Write it out of place (torch.where, torch.cat)")
            return output
        self._record_function(func, mapped_args, mapped_kwargs, output, name)
        return output

    def _record_function(self, func: Any, args: Any, kwargs: Any, output: Any,
                         name: str) -> None:
        count = self.counts.get(name, 0)
        self.counts[name] = count + 1
        func, kwargs = out_of_place(func, kwargs)
        node = self.graph.create_node("call_function", func, args, kwargs,
                                      name=name if count == 0 else f"{name}_{count}")
        node.meta["nn_module_stack"] = self.module_stack()
        self._bind_output(node, output)

    def _bind_output(self, node: fx.Node, output: Any) -> None:
        if isinstance(output, Tensor):
            self.bind(output, node)
            return
        self.values[node] = tuple(o.detach() if isinstance(o, Tensor) else o for o in output)
        for i, o in enumerate(output):
            if isinstance(o, Tensor):
                item = self.graph.create_node("call_function", item_of, (node, i), {},
                                              name=f"{node.name}_item{i}")
                item.meta["nn_module_stack"] = node.meta["nn_module_stack"]
                self.bind(o, item)

    # -- modules -----------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.names.get(id(module)) is None or threading.get_ident() != self.thread:
            return
        self.muted = True
        try:
            self._enter(module, args)
        finally:
            self.muted = False

    def post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if self.names.get(id(module)) is None or threading.get_ident() != self.thread \
                or not self.stack or self.stack[-1][1] is not module:
            return None
        self.muted = True
        try:
            return self._leave(module, output)
        finally:
            self.muted = False

    def _enter(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        name = self.names[id(module)]
        inputs = self._live(args)
        leaf = (not self.inside_leaf and bool(inputs) and self.is_leaf(module, name))
        if leaf:
            if getattr(module, "inplace", False):
                self._protect(inputs, module)
            self.inside_leaf += 1
        self.stack.append((name, module, leaf, inputs, self._map(args)))

    def _leave(self, module: nn.Module, output: Any) -> Any:
        name = self.names[id(module)]
        _, _, leaf, inputs, mapped_args = self.stack.pop()
        if leaf:
            self.inside_leaf -= 1
            node = self.graph.create_node("call_module", name, mapped_args, {},
                                          name=name.replace(".", "_") or "model")
            node.meta["nn_module_stack"] = self.module_stack()
            node.meta["nn_module_stack"][name] = (name, type(module))
            self._bind_output(node, output)
        out = self.node_of(output) if isinstance(output, Tensor) else None
        if out is None and inputs and isinstance(output, Tensor) and output.is_floating_point() \
                and output.dim() > 0 and output.shape[0] == self.batch:
            raise CaptureError(
                f"module {name!r} ({type(module).__name__}) returned a tensor computed from the "
                "input by operations FG-CAM cannot see (a C++/CUDA extension, TorchScript, or "
                "an operation that bypasses torch functions); relevance cannot follow them. "
                "Replace that part by PyTorch operations, or explain a layer before it")
        first = (self.node_of(output[0]) if out is None and isinstance(output, (tuple, list))
                 and output else None)
        self.calls.setdefault(name, []).append(ModuleCall(inputs, out, first))
        if out is None and first is None:
            return None
        value = output if out is not None else output[0]  # the tensor a layer name means
        if self.grad_from == ANY_LAYER:
            self.live[name], self.versions[name] = value, value._version
        elif name == self.grad_from:
            # from here on the forward pass builds an autograd graph, rooted at this output
            torch.set_grad_enabled(True)
            root = value.detach().requires_grad_(True)
            value = root.clone()  # not a leaf: the model may change it in place
            self.nodes_of[id(value)] = (value, out if out is not None else first)
            self.live[name] = root
            return value if out is not None else _with_first(output, value)
        return None


def _with_first(output: tuple[Any, ...] | list[Any], value: Tensor) -> Any:
    """``output`` (a tuple, named tuple or list) with ``value`` as its first element."""
    items = [value, *output[1:]]
    return type(output)(*items) if hasattr(output, "_fields") else type(output)(items)


def item_of(values: tuple[Any, ...], index: int) -> Any:
    """Element ``index`` of a multi-output operation (``torch.chunk``, ``split``)."""
    return values[index]


_lock = threading.Lock()


@contextlib.contextmanager
def _module_hooks(recorder: _Recorder) -> Iterator[None]:
    with _lock:
        pre = nn.modules.module.register_module_forward_pre_hook(recorder.pre_hook)
        post = nn.modules.module.register_module_forward_hook(recorder.post_hook)
    try:
        yield
    finally:
        with _lock:
            for handle in (pre, post):
                if isinstance(handle, torch_hooks.RemovableHandle):
                    handle.remove()


def capture(model: nn.Module, inputs: Sequence[Tensor], extra: Sequence[Any] = (),
            is_leaf: Callable[[nn.Module, str], bool] = lambda m, n: False,
            reads_values: Callable[[Any], bool] = lambda op: True,
            grad_from: str | None = None) -> Capture:
    """Run ``model(*inputs, *extra)`` once, without autograd (but see ``grad_from``), and
    record its operations on ``inputs``.

    ``is_leaf(module, name)`` says which modules are recorded as one node (their inside is not
    recorded); ``reads_values(op)`` whether the rule of a module or function reads the values
    of its inputs (an in-place operation then copies the value it overwrites). With
    ``grad_from``, the output of that module is the root of an autograd graph through the
    rest of the forward pass, kept in ``Capture.live`` (for gradient CAM weightings: dy/dA,
    as Captum's layer attributions compute it). With ``grad_from=ANY_LAYER`` (the layer is
    found in the recording itself) autograd runs from the input, and ``Capture.live`` keeps
    every module's output that the model did not change in place afterwards.
    """
    any_layer = grad_from == ANY_LAYER
    if any_layer:  # a non-leaf copy: the model may change its input in place
        inputs = [x.detach().requires_grad_(True).clone() if x.is_floating_point() else x
                  for x in inputs]
    recorder = _Recorder(model, is_leaf, reads_values, grad_from)
    placeholders = [recorder.placeholder(x, i) for i, x in enumerate(inputs)]
    with torch.set_grad_enabled(any_layer), _module_hooks(recorder), recorder:
        output = model(*inputs, *extra)
    scores = scores_of(output, strict=False)  # a detector's list of dicts: no score node
    result = None if scores is None else recorder.node_of(scores)
    if result is not None:
        recorder.graph.output(result)
    live = ({n: t for n, t in recorder.live.items() if t._version == recorder.versions[n]}
            if any_layer else recorder.live)
    return Capture(recorder.graph, recorder.values, output, recorder.calls, placeholders[0],
                   live)
