"""Subgraphs: the paper's groups of layers whose quantization choices are scored and chosen together (paper §3.4;
code.md §6 "candidate units").

Derived from roles and module structure instead of hand-written lists: inside a block, the layers of one
owner (a transformer block, a resnet, a U-Net `Transformer2DModel`) form one subgraph per kind — SA (Q, K, V, Out,
plus the block's own adaLN layer as in DiT), CA, FF, res (convs, time projection, shortcut), skip (the skip
halves of concatenation-fed layers), proj-in, proj-out, up/down-sample, and the context stream of joint
attention (SD3). Outside blocks the
layers form t-embed (with the adaLN layer that runs before the blocks), c-embed, pos-embed and output subgraphs.
A subgraph that would hold more than `max_layers` layers (e.g. two attentions directly under one U-Net block) is
split by module path, so subgraph-level scoring stays tractable (6^k variants; the paper's largest has 6^5).
Each subgraph's *anchor* is its output node (`subgraph_anchor`) and its *hop* the longest path (in edges) from one
of its layers to the anchor: a subgraph scored at hop m (capped at the predictor's depth when encoding) reads the
anchor's m-th GNN embedding, which has then seen the whole subgraph.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

MAX_SUBGRAPH_LAYERS = 5
SUBGRAPH_OF_ROLE = {
    "SA-Q": "SA", "SA-K": "SA", "SA-V": "SA", "SA-Out": "SA",
    "CA-Q": "CA", "CA-K": "CA", "CA-V": "CA", "CA-Out": "CA",
    "ctx-Q": "ctx-attn", "ctx-K": "ctx-attn", "ctx-V": "ctx-attn", "ctx-Out": "ctx-attn",
    "FF-1": "FF", "FF-2": "FF", "ctx-FF-1": "ctx-FF", "ctx-FF-2": "ctx-FF",
    "res-conv": "res", "time-proj": "res", "res-skip": "res",
    "t-embed": "t-embed", "c-embed": "c-embed", "pos-embed": "pos-embed", "conv-in": "pos-embed",
    "output": "output", "conv-out": "output",
    "skip": "skip", "proj-in": "proj-in", "proj-out": "proj-out", "up-sample": "up-sample",
    "down-sample": "down-sample",
}
"""Role → subgraph type (roles not listed form a subgraph of their own type: `other`)."""
SUBGRAPH_TYPES = ("t-embed", "c-embed", "pos-embed", "SA", "CA", "ctx-attn", "FF", "ctx-FF", "res", "skip",
              "proj-in", "proj-out", "up-sample", "down-sample", "adaLN", "output", "other")


@dataclass(frozen=True)
class Subgraph:
    """One subgraph: its layers (unit names of `qsd.layers`), type, block, anchor node and hop."""

    name: str
    type: str
    block: int
    layers: tuple[str, ...]
    anchor: int
    hop: int


def subgraph_type(role: str, block: int, is_context: bool, before_blocks: bool, in_block_sa: bool) -> str:
    """Subgraph type of a layer with `role`. adaLN layers join their block's SA subgraph (DiT's `norm1.linear`) or the
    context stream's; outside blocks they belong to t-embed before the blocks and to output after them."""
    if role == "adaLN":
        if block >= 0:
            return "ctx-attn" if is_context else ("SA" if in_block_sa else "adaLN")
        return "t-embed" if before_blocks else "output"
    if role == "skip" and block < 0:
        return "other"
    return SUBGRAPH_OF_ROLE.get(role, "other")


def group_layers(keys: dict[str, tuple[str, str]], max_layers: int = MAX_SUBGRAPH_LAYERS) -> dict[str, list[str]]:
    """Subgraph name → layers, from each layer's (subgraph type, scope) key (scope '' outside blocks); oversized groups
    are split by the layers' module paths, one path segment at a time."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for layer, key in keys.items():
        groups[key].append(layer)
    subgraphs: dict[str, list[str]] = {}
    for (kind, scope), layers in groups.items():
        for part, members in _split(layers, max_layers, depth=1).items():
            name = f"{part}:{kind}" if part else (f"{scope}:{kind}" if scope else kind)
            subgraphs[name] = members
    return subgraphs


def _split(layers: list[str], max_layers: int, depth: int) -> dict[str, list[str]]:
    if len(layers) <= max_layers:
        return {"": layers}
    by_prefix: dict[str, list[str]] = defaultdict(list)
    for layer in layers:
        by_prefix[".".join(layer.split(".")[:depth])].append(layer)
    if len(by_prefix) == 1 and depth >= max(len(x.split(".")) for x in layers):
        return {next(iter(by_prefix)): layers}
    out = {}
    for prefix, members in by_prefix.items():
        for sub, part in _split(members, max_layers, depth + 1).items():
            out[sub or prefix] = part
    return out


def subgraph_anchor(layer_nodes: list[int], preds: list[set[int]], order: list[int], combines: set[int]) -> int:
    """The subgraph's output node: its last layer in data-flow order, or, where its layers end in parallel branches
    (split halves, a resnet's conv2 and shortcut, parallel embedders), the first combine node all of them reach."""
    rank = {n: i for i, n in enumerate(order)}
    members = set(layer_nodes)
    reaches = {n: set() for n in members}
    for node in order:  # which members each member reaches
        for m in members:
            if node != m and (m in preds[node] or reaches[m] & preds[node]):
                reaches[m].add(node)
    sinks = [m for m in members if not reaches[m] & members]
    if len(sinks) > 1:
        common = [n for n in order if n in combines and all(n in reaches[s] for s in sinks)]
        if common:
            return common[0]
    return max(members, key=rank.__getitem__)


def subgraph_hop(layer_nodes: list[int], anchor: int, preds: list[set[int]], order: list[int], cap: int) -> int:
    """Longest path (edges) from any of the subgraph's layer nodes to its anchor (`order`: the nodes in topological
    order), capped at `cap`."""
    longest = dict.fromkeys(layer_nodes, 0)
    for node in order:
        steps = [longest[p] + 1 for p in preds[node] if p in longest]
        if steps:
            longest[node] = max(steps + [longest.get(node, 0)])
        if node == anchor:
            break
    return min(longest.get(anchor, 0), cap)
