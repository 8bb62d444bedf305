"""Data-flow trace of a denoiser's forward pass: which weight layers and parameter-free operations feed which
(paper §3.3, "denoiser as a DAG"; code.md §4).

The released code wrote one builder per model with hard-coded node orders. Here the graph is recorded from
one real forward pass, so it works for any denoiser: every tensor carries the set of graph nodes it was
computed from (its *frontier*). A torch-function mode sees every tensor operation; forward hooks on the
quantizable layers (`qsd.layers`) turn each layer call into one weight node per unit, with edges from the
frontier of its input. An operation becomes a *combine* node when it merges two different frontiers
(add, scale-shift-gate products, attention matmuls, concatenations) or normalises (norms); every other
operation (reshapes, activations, softmax, operations with constants or parameters) passes the frontier
through. Two rules keep the graph close to the paper's: `x·(1 + scale) + shift` folds into one modulate node
(a combine op whose extra operands already feed the node it extends), and a layer whose input is a
concatenation split into two units (`<name>:skip`) gets two weight nodes read by one add node (a linear map
of a concatenation is the sum of the two halves' maps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from qsd.errors import QsdError
from qsd.layers import Unit, quantizable_units
from qsd.models.base import denoiser_arguments
from qsd.quantize import units_by_module

COMBINE_OPS = {
    **dict.fromkeys(("add", "iadd", "radd", "sub", "isub", "rsub"), "add"),
    **dict.fromkeys(("mul", "imul", "rmul", "div", "truediv", "rtruediv", "itruediv", "addcmul"), "modulate"),
    **dict.fromkeys(("matmul", "rmatmul", "bmm", "baddbmm", "einsum", "scaled_dot_product_attention"), "attention"),
    **dict.fromkeys(("layer_norm", "group_norm", "rms_norm", "batch_norm", "instance_norm"), "norm"),
    **dict.fromkeys(("cat", "concat", "concatenate", "stack"), "concat"),
}
"""Torch function name (underscores stripped) → combine kind."""
FOLDING_KINDS = ("add", "modulate")


@dataclass
class TracedNode:
    """One node of the traced graph: a weight unit, a combine operation or a denoiser input."""

    kind: str
    """`weight`, `combine` or `input`."""
    name: str
    """Weight: the unit name (`qsd.layers`); combine: the kind (add, modulate, attention, norm, concat); input:
    the forward argument's name (nested keys joined with '.')."""
    preds: set[int] = field(default_factory=set)
    scope: str = ""
    """The innermost module whose forward created the node ('' = the denoiser's own forward)."""


@dataclass
class Trace:
    """What one forward pass recorded."""

    nodes: list[TracedNode]
    outputs: frozenset[int]
    """The nodes the denoiser's output was computed from."""
    module_order: list[str]
    """Quantized modules in the order they first ran (modules that never ran are absent)."""
    units: list[Unit]


def _tensors(obj: object, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}.{i}" if prefix else str(i))
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        yield from _tensors({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, prefix)
    elif hasattr(obj, "to_tuple"):  # diffusers BaseOutput
        yield from _tensors(obj.to_tuple(), prefix)


class _Recorder(TorchFunctionMode):
    def __init__(self, units: list[Unit]) -> None:
        super().__init__()
        self.nodes: list[TracedNode] = []
        self._frontier: dict[int, frozenset[int]] = {}
        self._alive: list[torch.Tensor] = []  # keeps ids unique while tracing
        self._depth = 0
        self._groups = dict(units_by_module(units))
        self._weight_owner: dict[int, str] = {}
        """id(weight parameter) → module name, filled in by `trace_dataflow`."""
        self._unit_nodes: dict[str, int] = {}
        self.module_order: list[str] = []
        self.scopes: list[str] = [""]

    # -------------------------------------------------------------- frontiers
    def frontier(self, tensor: torch.Tensor) -> frozenset[int]:
        return self._frontier.get(id(tensor), frozenset())

    def set_frontier(self, obj: object, nodes: frozenset[int]) -> None:
        for _, tensor in _tensors(obj):
            self._frontier[id(tensor)] = nodes
            self._alive.append(tensor)

    def add_node(self, kind: str, name: str, preds: frozenset[int]) -> int:
        self.nodes.append(TracedNode(kind, name, set(preds), self.scopes[-1]))
        return len(self.nodes) - 1

    # -------------------------------------------------------------- operations
    def __torch_function__(self, func: Callable, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self._depth:
            return result
        operands = [t for _, t in _tensors((args, kwargs))]
        fronts = list(dict.fromkeys(f for t in operands if (f := self.frontier(t))))
        used = list(dict.fromkeys(m for t in operands if (m := self._weight_owner.get(id(t)))))
        if used:  # a layer's weight read directly, outside its module's forward
            inputs = frozenset().union(*fronts)
            self.module_order.extend(m for m in used if m not in self.module_order)
            self.set_frontier(result, frozenset(self._layer_node(m, inputs) for m in used))
            return result
        if not fronts:
            return result
        kind = COMBINE_OPS.get(getattr(func, "__name__", "").strip("_"))
        if kind == "norm" or (kind is not None and len(fronts) >= 2):
            out = frozenset({self._combine(kind, fronts)})
        else:
            out = frozenset().union(*fronts)
        self.set_frontier(result, out)
        return result

    def _combine(self, kind: str, fronts: list[frozenset[int]]) -> int:
        if kind in FOLDING_KINDS:
            for front in fronts:
                (node, *more) = front
                if more or self.nodes[node].kind != "combine" or self.nodes[node].name not in FOLDING_KINDS:
                    continue
                others = frozenset().union(*(f for f in fronts if f is not front))
                if others <= self.nodes[node].preds:
                    return node
        return self.add_node("combine", kind, frozenset().union(*fronts))

    def leave_scope(self) -> None:
        self.scopes.pop()

    # -------------------------------------------------------------- quantized layers
    def layer_started(self, module_name: str, inputs: tuple) -> None:
        if self._depth == 0:
            self._pending = frozenset().union(*(self.frontier(t) for _, t in _tensors(inputs)))
        self._depth += 1

    def layer_finished(self, module_name: str, output: torch.Tensor) -> None:
        self._depth -= 1
        if self._depth:
            return
        if module_name not in self.module_order:
            self.module_order.append(module_name)
        self.set_frontier(output, frozenset({self._layer_node(module_name, self._pending)}))

    def _layer_node(self, module_name: str, preds: frozenset[int]) -> int:
        """The node a call of `module_name` outputs: its unit's weight node, or the add of its split halves."""
        nodes = []
        for unit in self._groups[module_name]:
            if unit.name in self._unit_nodes:
                node = self._unit_nodes[unit.name]
                self.nodes[node].preds |= preds
            else:
                node = self._unit_nodes[unit.name] = self.add_node("weight", unit.name, preds)
            nodes.append(node)
        return nodes[0] if len(nodes) == 1 else self.add_node("combine", "add", frozenset(nodes))

    def missing_units(self) -> list[str]:
        return [u for units in self._groups.values() for u in (x.name for x in units) if u not in self._unit_nodes]


def trace_dataflow(denoiser: nn.Module, run: Callable[[], object], split_concat_inputs: bool = True) -> Trace:
    """Record the data flow of `denoiser` during `run()` (a call that runs the denoiser's forward once, directly
    or through a model wrapper). Input nodes are the denoiser's forward arguments that are tensors."""
    units = quantizable_units(denoiser, split_concat_inputs)
    recorder = _Recorder(units)
    names = {module: name for name, module in denoiser.named_modules()}
    handles = []
    outputs: list[frozenset[int]] = []
    calls: list[None] = []

    def denoiser_started(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if outputs or calls:  # only the first call is traced (guidance may call the denoiser twice)
            calls.append(None)
            return
        calls.append(None)
        recorder.__enter__()
        for name, tensor in _tensors(denoiser_arguments(module, args, kwargs)):
            if not recorder.frontier(tensor):
                recorder.set_frontier(tensor, frozenset({recorder.add_node("input", name, frozenset())}))

    def denoiser_finished(module: nn.Module, args: tuple, output: object) -> None:
        if outputs or len(calls) > 1:
            return
        outputs.append(frozenset().union(*(recorder.frontier(t) for _, t in _tensors(output))))
        recorder.__exit__(None, None, None)

    handles.append(denoiser.register_forward_pre_hook(denoiser_started, with_kwargs=True))
    handles.append(denoiser.register_forward_hook(denoiser_finished))
    for name, module in denoiser.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda m, args, name=name: recorder.scopes.append(name)))
            handles.append(module.register_forward_hook(lambda m, args, out: recorder.leave_scope()))
    for module_name, _ in units_by_module(units):
        module = denoiser.get_submodule(module_name)
        recorder._weight_owner[id(module.weight)] = module_name
        handles.append(module.register_forward_pre_hook(
            lambda m, args, name=names[module]: recorder.layer_started(name, args)))
        handles.append(module.register_forward_hook(
            lambda m, args, out, name=names[module]: recorder.layer_finished(name, out)))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    if not outputs:
        raise QsdError(f"the traced call never ran {type(denoiser).__name__}.forward; pass a call that does")
    for unit_name in recorder.missing_units():  # layers the forward never used: isolated nodes
        recorder.add_node("weight", unit_name, frozenset())
    return Trace(recorder.nodes, outputs[0], recorder.module_order, units)
