"""`DenoiserGraph`: a denoiser as a DAG of weight layers and combine operations (paper §3.3, Fig. 2; code.md §4).

Built automatically from one traced forward pass (`qsd.graph.trace`) for any diffusers denoiser, with roles and
blocks (`qsd.graph.roles`) and subgraphs (`qsd.graph.subgraphs`). Saved as JSON (no pickle), drawn or inspected through
`to_networkx()`, and turned into predictor inputs by `encode` (`qsd.graph.encode`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import networkx as nx
import pandas as pd
import torch
from torch import nn

from qsd.config import QuantConfig
from qsd.errors import CorruptFileError, MissingFileError, QsdError
from qsd.files import write_json
from qsd.graph.roles import block_of, block_prefixes, input_role, owner_of, unit_role
from qsd.graph.subgraphs import (
    MAX_SUBGRAPH_LAYERS,
    Subgraph,
    group_layers,
    subgraph_anchor,
    subgraph_hop,
    subgraph_type,
)
from qsd.graph.trace import Trace, trace_dataflow
from qsd.layers import SKIP_SUFFIX

FILE_FORMAT = "qsd.DenoiserGraph"
FILE_VERSION = 1
UNCAPPED_HOPS = 64


@dataclass(frozen=True)
class GraphNode:
    """One node. `name`: the unit name for weight nodes (`qsd.layers`; `<module>:skip` for skip halves), the
    combine kind, or the input argument. `block`: block index in execution order, −1 outside blocks. `unit`: the
    name of the weight node's subgraph (`qsd.graph.subgraphs`)."""

    kind: str
    role: str
    name: str
    block: int
    unit: str | None = None
    numel: int = 0

    @property
    def fqn(self) -> str | None:
        """The layer's module name (weight nodes only)."""
        return self.name.removesuffix(SKIP_SUFFIX) if self.kind == "weight" else None


class DenoiserGraph:
    """Nodes (weight layers, combine operations, inputs), data-flow edges, subgraphs and the block count."""

    def __init__(self, nodes: Sequence[GraphNode], edges: Sequence[tuple[int, int]], subgraphs: Sequence[Subgraph],
                 block_names: Sequence[str], model_class: str) -> None:
        self.nodes = list(nodes)
        self.edges = sorted(set(map(tuple, edges)))
        self.subgraphs = list(subgraphs)
        self.block_names = list(block_names)
        """Module path of each block (`transformer_blocks.3`, `up_blocks.1`, `mid_block`), by block index."""
        self.n_blocks = len(self.block_names)
        self.model_class = model_class
        self.weight_node = {n.name: i for i, n in enumerate(self.nodes) if n.kind == "weight"}
        """Unit name → node index."""

    # ------------------------------------------------------------------ building
    @classmethod
    def from_model(cls, denoiser: nn.Module, inputs: Mapping | None = None, run: Callable[[], object] | None = None,
                   split_concat_inputs: bool = True, max_subgraph_layers: int = MAX_SUBGRAPH_LAYERS) -> DenoiserGraph:
        """Trace `denoiser(**inputs)` — or `run()`, any call that runs the denoiser once (e.g. a model wrapper's
        noise prediction) — into a graph. Units follow `split_concat_inputs` as the multiquantizer does."""
        if (inputs is None) == (run is None):
            raise QsdError("DenoiserGraph.from_model needs exactly one of inputs= (forward keyword arguments) or run= "
                           "(a call that runs the denoiser), e.g. inputs=qsd.models.random_init.example_inputs(arch)")
        trace = trace_dataflow(denoiser, run or (lambda: denoiser(**inputs)), split_concat_inputs)
        return cls._from_trace(denoiser, trace, max_subgraph_layers)

    @classmethod
    def from_diffusion_model(cls, model, **kwargs) -> DenoiserGraph:
        """The graph of a loaded `qsd.models.DiffusionModel`, traced through its own noise prediction on one
        protocol prompt (so the denoiser sees exactly the inputs sampling gives it)."""
        device = next(model.denoiser.parameters()).device
        prompts, _ = model.protocol_prompts(1)
        latents = torch.randn(1, *model.latent_shape, generator=torch.Generator().manual_seed(0)).to(device)
        timestep = torch.full((1,), model.make_scheduler(sampler=False).config.num_train_timesteps // 2, device=device)
        return cls.from_model(model.denoiser, run=lambda: model.predict_noise(latents, timestep,
                                                                              model.condition(prompts)), **kwargs)

    @classmethod
    def _from_trace(cls, denoiser: nn.Module, trace: Trace, max_subgraph_layers: int) -> DenoiserGraph:
        traced = _prune(trace)
        index = {old: new for new, old in enumerate(traced)}
        preds = [{index[p] for p in trace.nodes[old].preds if p in index} for old in traced]
        digraph = nx.DiGraph([(p, n) for n, ps in enumerate(preds) for p in ps])
        digraph.add_nodes_from(range(len(traced)))
        if not nx.is_directed_acyclic_graph(digraph):
            raise QsdError(f"the traced graph of {type(denoiser).__name__} has a cycle (a layer called twice in one "
                           "forward pass with data from its own output); this denoiser is not supported")
        order = list(nx.topological_sort(digraph))
        modules = dict(denoiser.named_modules())
        units_by_name = {u.name: u for u in trace.units}
        blocks = block_prefixes(denoiser)
        ran = [b for m in trace.module_order if (b := block_of(m, blocks)) is not None]
        block_index = {b: i for i, b in enumerate(dict.fromkeys(ran))}
        first_block_module = next((i for i, m in enumerate(trace.module_order) if block_of(m, blocks)), None)
        position = {m: i for i, m in enumerate(trace.module_order)}
        weight_of = {trace.nodes[old].name: new for new, old in enumerate(traced) if trace.nodes[old].kind == "weight"}

        def self_attention(unit_name: str) -> bool | None:
            scope = unit_name.rsplit(".", 2 if unit_name.endswith("to_out.0") else 1)[0]
            q, k = weight_of.get(f"{scope}.to_q"), weight_of.get(f"{scope}.to_k")
            return None if q is None or k is None else preds[q] == preds[k]

        roles = {name: unit_role(name, modules[units_by_name[name].module], self_attention(name)) for name in weight_of}
        owners = {name: owner_of(units_by_name[name].module, denoiser) for name in weight_of}
        owners_with_sa = {owners[name] for name, role in roles.items() if role.startswith("SA-")}
        nodes: list[GraphNode] = []
        keys: dict[str, tuple[str, str]] = {}
        for old in traced:
            node = trace.nodes[old]
            if node.kind == "input":
                nodes.append(GraphNode("input", input_role(node.name), node.name, -1))
                continue
            if node.kind == "combine":
                block = block_index.get(block_of(node.scope, blocks), -1)
                nodes.append(GraphNode("combine", node.name, node.name, block))
                continue
            unit = units_by_name[node.name]
            block = block_index.get(block_of(unit.module, blocks), -1)
            before = first_block_module is None or position.get(unit.module, 0) < first_block_module
            owner = owners[node.name] if block >= 0 else ""
            kind = subgraph_type(roles[node.name], block, "context" in unit.module, before, owner in owners_with_sa)
            keys[node.name] = (kind, owner)
            numel = unit.weight_slice(modules[unit.module].weight).numel()
            nodes.append(GraphNode("weight", roles[node.name], node.name, block, None, numel))
        groups = group_layers(keys, max_subgraph_layers)
        subgraph_of_layer = {layer: name for name, layers in groups.items() for layer in layers}
        nodes = [GraphNode(n.kind, n.role, n.name, n.block, subgraph_of_layer.get(n.name), n.numel) for n in nodes]
        rank = {n: i for i, n in enumerate(order)}
        combines = {i for i, n in enumerate(nodes) if n.kind == "combine"}
        subgraphs = []
        for name, layers in groups.items():
            members = [weight_of[layer] for layer in layers]
            anchor = subgraph_anchor(members, preds, order, combines)
            subgraphs.append(Subgraph(name, keys[layers[0]][0], nodes[anchor].block, tuple(layers), anchor,
                                      subgraph_hop(members, anchor, preds, order, UNCAPPED_HOPS)))
        subgraphs.sort(key=lambda s: rank[s.anchor])
        edges = [(p, n) for n, ps in enumerate(preds) for p in ps]
        return cls(nodes, edges, subgraphs, list(block_index), type(denoiser).__name__)

    # ------------------------------------------------------------------ views
    @property
    def unit_names(self) -> list[str]:
        """Weight units (the multiquantizer's unit names), in node order."""
        return [n.name for n in self.nodes if n.kind == "weight"]

    def predecessors(self) -> list[set[int]]:
        preds: list[set[int]] = [set() for _ in self.nodes]
        for src, dst in self.edges:
            preds[dst].add(src)
        return preds

    def to_networkx(self) -> nx.DiGraph:
        """A `networkx.DiGraph`: node attributes kind, role, name, block, unit, numel and, on weight nodes, `fqn`
        (the layer's module name)."""
        graph = nx.DiGraph(model_class=self.model_class, block_names=self.block_names)
        for i, node in enumerate(self.nodes):
            attrs = asdict(node)
            if node.kind == "weight":
                attrs["fqn"] = node.fqn
            graph.add_node(i, **attrs)
        graph.add_edges_from(self.edges)
        return graph

    def block_subgraph(self, block: int) -> nx.DiGraph:
        """The nodes of one block (and nothing else) as a networkx subgraph."""
        graph = self.to_networkx()
        return graph.subgraph([i for i, n in enumerate(self.nodes) if n.block == block]).copy()

    def subgraph_table(self) -> pd.DataFrame:
        """One row per subgraph: name (column `unit`), type, block, layers, anchor's role, hop."""
        return pd.DataFrame([{"unit": s.name, "type": s.type, "block": s.block, "layers": len(s.layers),
                              "anchor": self.nodes[s.anchor].name, "hop": s.hop} for s in self.subgraphs])

    def check_config(self, config: QuantConfig) -> None:
        """Raise if `config` does not cover exactly this graph's weight units."""
        config.validate(self.unit_names)

    # ------------------------------------------------------------------ encoding
    def encode(self, configs: Sequence[QuantConfig], option_table: pd.DataFrame, hops: int = 4,
               targets: Sequence[float] | None = None) -> list:
        """Predictor inputs for `configs`: one torch-geometric `Data` per configuration (`qsd.graph.encode`).
        `option_table`: the multiquantizer's `search_space()` table (stage 01's `search_space.csv`)."""
        from qsd.graph.encode import encode_configs

        return encode_configs(self, configs, option_table, hops, targets)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        return write_json(path, {
            "format": FILE_FORMAT, "version": FILE_VERSION, "model_class": self.model_class,
            "block_names": self.block_names, "nodes": [asdict(n) for n in self.nodes], "edges": self.edges,
            "units": [asdict(s) for s in self.subgraphs]})

    @classmethod
    def load(cls, path: str | Path) -> DenoiserGraph:
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"no denoiser graph at {path}; build one with DenoiserGraph.from_model")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FILE_FORMAT or data.get("version") != FILE_VERSION:
                raise CorruptFileError(f"{path}: not a {FILE_FORMAT} v{FILE_VERSION} file")
            return cls([GraphNode(**n) for n in data["nodes"]], [tuple(e) for e in data["edges"]],
                       [Subgraph(**{**s, "layers": tuple(s["layers"])}) for s in data["units"]],
                       data["block_names"], data["model_class"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CorruptFileError(f"{path} is not a readable denoiser graph ({exc})") from None


def _prune(trace: Trace) -> list[int]:
    """Trace node indices to keep: weight nodes, and combine/input nodes on a path to a weight node or the
    output (operations whose results are never used by a layer are dropped)."""
    succs: list[set[int]] = [set() for _ in trace.nodes]
    for i, node in enumerate(trace.nodes):
        for p in node.preds:
            succs[p].add(i)
    useful = {i for i, n in enumerate(trace.nodes) if n.kind == "weight"} | set(trace.outputs)
    for i in range(len(trace.nodes) - 1, -1, -1):
        if succs[i] & useful:
            useful.add(i)
    return sorted(useful)
