"""Node- and subgraph-level sensitivity scores of every quantization variant of every candidate (paper §3.4, Eq. 4;
code.md §6 "Score").

A candidate is a weight layer (node level) or a subgraph (`qsd.graph.subgraphs`). Each variant — one option per layer
of the candidate — is encoded as the candidate's isolated graph (its layers, every node on their paths to the anchor,
the anchor; another candidate's layer on such a path stays float, as the released code fixed its combine nodes) and
scored by every fold predictor k:

    s_k = ρ_k^(h) · (‖e_k^(h)[anchor]‖₁ − μ_k^(h)) / σ_k^(h),        s = Σ_k s_k

Notation: h = the candidate's hop (0 at node level), capped at the predictor's depth M; e_k^(h) the fold predictor's
hop-h node embeddings; μ_k^(h), σ_k^(h) its node-norm moments on its training graphs (`hop_moments`); ρ_k^(h) the
test Spearman of its hop-h graph embedding (stage 03's metrics), so hops that rank well weigh more and a hop
that ranks backwards flips its sign. Higher = better for the target the predictors learnt. A candidate whose hop
exceeds M is read at hop M, so its layers further than M edges from the anchor do not move its score (the released code
had the same horizon); raise the predictor's `hops` for such models.

Levels: `node` scores each weight layer alone (6 variants), `subgraph` all 6^k combinations of a subgraph of k
layers. All variants of a candidate go through the predictor in batched forward passes over one template subgraph
whose weight-node features are gathered per variant (the released code deep-copied a networkx graph per variant
and scored them one at a time).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import Data
from tqdm.auto import tqdm

from qsd.config import QuantConfig, QuantSpec, option_key, option_method, parse_option
from qsd.errors import InvalidSettingError
from qsd.graph import DenoiserGraph
from qsd.graph.encode import COLUMN, METHOD_CODES, encode_configs, option_lookup
from qsd.graph.subgraphs import Subgraph
from qsd.predictor.model import l1_norms
from qsd.predictor.training import TrainedPredictor

LEVELS = ("node", "subgraph")
SEPARATOR = "|"
"""Joins a variant's layers and options in the score table."""
BATCH_VARIANTS = 4096


@dataclass(frozen=True)
class FoldScorer:
    """One fold predictor and the test Spearman ρ^(m) of each of its hop embeddings."""

    predictor: TrainedPredictor
    hop_quality: Sequence[float]

    def __post_init__(self) -> None:
        expected = self.predictor.model_settings.hops + 1
        if len(self.hop_quality) != expected or len(self.predictor.hop_moments) != expected:
            raise InvalidSettingError(f"a fold scorer needs {expected} hop qualities and moments (hops 0..M); got "
                                      f"{len(self.hop_quality)} and {len(self.predictor.hop_moments)}")


@dataclass(frozen=True)
class Candidate(Subgraph):
    """A layer or subgraph to score (`Subgraph`: layers, type, block, anchor, hop) with the node set of its isolated
    graph."""

    nodes: tuple[int, ...] = ()


def candidates(graph: DenoiserGraph, level: str) -> list[Candidate]:
    """The candidates scored at `level`: every weight layer alone (node) or every subgraph (subgraph)."""
    if level not in LEVELS:
        raise InvalidSettingError(f"level {level!r} is not one of {LEVELS}")
    if level == "node":
        subgraph_of = {layer: s for s in graph.subgraphs for layer in s.layers}
        return [Candidate(name, subgraph_of[name].type, graph.nodes[i].block, (name,), i, 0, nodes=(i,))
                for name, i in graph.weight_node.items()]
    preds = graph.predecessors()
    return [Candidate(s.name, s.type, s.block, s.layers, s.anchor, s.hop,
                      nodes=tuple(sorted(_between([graph.weight_node[layer] for layer in s.layers], s.anchor, preds))))
            for s in graph.subgraphs]


def _between(sources: list[int], anchor: int, preds: list[set[int]]) -> set[int]:
    """`sources`, the anchor and every node on a path from a source to the anchor."""
    ancestors, stack = {anchor}, [anchor]
    while stack:
        for p in preds[stack.pop()]:
            if p not in ancestors:
                ancestors.add(p)
                stack.append(p)
    succs: dict[int, set[int]] = {}
    for node, ps in enumerate(preds):
        for p in ps:
            succs.setdefault(p, set()).add(node)
    reached, stack = set(sources), list(sources)
    while stack:
        for s in succs.get(stack.pop(), ()):
            if s not in reached and s in ancestors:
                reached.add(s)
                stack.append(s)
    return (reached & ancestors) | set(sources) | {anchor}


def induced_graph(graph: DenoiserGraph, nodes: Sequence[int]) -> DenoiserGraph:
    """The induced graph on `nodes` (same block numbering, no subgraphs)."""
    index = {old: new for new, old in enumerate(nodes)}
    edges = [(index[a], index[b]) for a, b in graph.edges if a in index and b in index]
    return DenoiserGraph([graph.nodes[i] for i in nodes], edges, [], graph.block_names, graph.model_class)


def unit_options(option_table: pd.DataFrame, layer: str) -> list[QuantSpec | None]:
    """The choices of `layer` in the option table's order (None: kept float, in the extended space)."""
    rows = option_table[option_table["unit"] == layer]
    if rows.empty:
        raise InvalidSettingError(f"the option table has no rows for layer {layer!r}; was it built for this model?")
    return [parse_option(key) for key in rows["option"]]


class CandidateVariants:
    """All variants of one candidate as batched predictor inputs over one template graph."""

    def __init__(self, graph: DenoiserGraph, candidate: Candidate, option_table: pd.DataFrame, hops: int) -> None:
        self.candidate = candidate
        self.local = induced_graph(graph, candidate.nodes)
        self.anchor = candidate.nodes.index(candidate.anchor)
        self.specs = [unit_options(option_table, layer) for layer in candidate.layers]
        self.fixed = {layer: None for layer in self.local.unit_names if layer not in candidate.layers}
        first = QuantConfig(self.fixed | {layer: specs[0] for layer, specs in zip(candidate.layers, self.specs,
                                                                                  strict=True)})
        self.template = encode_configs(self.local, [first], option_table, hops)[0]
        lookup = option_lookup(option_table)
        self.positions = [self.local.weight_node[layer] for layer in candidate.layers]
        self.method_table = [torch.tensor([METHOD_CODES.index(option_method(s)) for s in specs])
                             for specs in self.specs]
        self.feature_table = [torch.tensor([lookup[layer, option_key(s)] for s in specs], dtype=torch.float32)
                              for layer, specs in zip(candidate.layers, self.specs, strict=True)]
        self.choices = torch.tensor(list(itertools.product(*[range(len(s)) for s in self.specs])), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.choices)

    def variant(self, index: int) -> QuantConfig:
        """Variant `index` as a configuration of the local graph's layers (another candidate's layer on a path:
        float)."""
        row = self.choices[index].tolist()
        return QuantConfig(self.fixed | {layer: self.specs[j][c]
                                         for j, (layer, c) in enumerate(zip(self.candidate.layers, row, strict=True))})

    def batch(self, start: int, stop: int) -> Data:
        """Variants start..stop-1 as one disconnected batch graph."""
        choices = self.choices[start:stop]
        count, n = len(choices), self.template.num_nodes
        x = self.template.x.repeat(count, 1, 1)
        method = self.template.method.repeat(count, 1)
        columns = [COLUMN["bits"], COLUMN["compression"], COLUMN["error"]]
        for j, position in enumerate(self.positions):
            x[:, position, columns] = self.feature_table[j][choices[:, j]]
            method[:, position] = self.method_table[j][choices[:, j]]
        edges = self.template.edge_index
        offsets = (torch.arange(count) * n).repeat_interleave(edges.shape[1])
        return Data(x=x.reshape(count * n, -1), method=method.reshape(-1), role=self.template.role.repeat(count),
                    edge_index=edges.repeat(1, count) + offsets, anchor=self.template.anchor.repeat(count, 1),
                    num_nodes=count * n)


@torch.no_grad()
def anchor_score(scorers: Sequence[FoldScorer], data: Data, anchors: torch.Tensor, hop: int) -> np.ndarray:
    """Σ_k ρ_k^(h)·(‖e_k^(h)[anchor]‖₁ − μ_k^(h))/σ_k^(h) for the anchor node of each graph in `data`."""
    total = torch.zeros(len(anchors), dtype=torch.float64)
    for scorer in scorers:
        model = scorer.predictor.model.eval()
        h = min(hop, model.settings.hops)
        norms = l1_norms([model.node_embeddings(data)[h][anchors]])[:, 0].double()
        mean, std = scorer.predictor.hop_moments[h]
        total += scorer.hop_quality[h] * (norms - mean) / (std if std > 0 else 1.0)
    return total.numpy()


def score_candidate(scorers: Sequence[FoldScorer], variants: CandidateVariants,
                    batch_variants: int = BATCH_VARIANTS) -> np.ndarray:
    """The score of every variant in `variants`, in `variants.choices` order, in batches of `batch_variants`."""
    n = variants.template.num_nodes
    scores = []
    for start in range(0, len(variants), batch_variants):
        stop = min(start + batch_variants, len(variants))
        anchors = torch.arange(stop - start) * n + variants.anchor
        scores.append(anchor_score(scorers, variants.batch(start, stop), anchors, variants.candidate.hop))
    return np.concatenate(scores)


def score_variants(graph: DenoiserGraph, scorers: Sequence[FoldScorer], option_table: pd.DataFrame, level: str,
                   progress: bool = False) -> pd.DataFrame:
    """One row per (candidate, variant): level, unit (the candidate's name), type, block, hop, layers, roles, options
    (joined by '|'), size_bits, n_weights, error (summed relative error), score."""
    if not scorers:
        raise InvalidSettingError("scoring needs at least one fold predictor")
    hops = scorers[0].predictor.model_settings.hops
    table = option_table.set_index(["unit", "option"])
    frames = []
    for candidate in tqdm(candidates(graph, level), desc=f"{level} scores", disable=not progress):
        variants = CandidateVariants(graph, candidate, option_table, hops)
        choices = variants.choices.numpy()
        keys = [np.array([option_key(s) for s in specs], dtype=object) for specs in variants.specs]
        columns = {}
        for column in ("size_bits", "n_weights", "error"):
            per_layer = [table.loc[[(layer, key) for key in keys[j]], column].to_numpy(dtype=float)
                         for j, layer in enumerate(candidate.layers)]
            columns[column] = sum(values[choices[:, j]] for j, values in enumerate(per_layer))
        frames.append(pd.DataFrame({
            "level": level, "unit": candidate.name, "type": candidate.type, "block": candidate.block,
            "hop": candidate.hop, "layers": SEPARATOR.join(candidate.layers),
            "roles": SEPARATOR.join(graph.nodes[graph.weight_node[layer]].role for layer in candidate.layers),
            "options": [SEPARATOR.join(keys[j][c] for j, c in enumerate(row)) for row in choices],
            **columns, "score": score_candidate(scorers, variants)}))
    return pd.concat(frames, ignore_index=True)
