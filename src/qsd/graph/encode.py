"""Configurations → predictor inputs: one torch-geometric `Data` per configuration (paper §3.3 node features;
code.md §4 "node feature vector").

The graph's structure (edges, roles, blocks, sizes, hop anchors) is encoded once; each configuration only
changes its weight nodes' method, bits, compression and error, looked up in the multiquantizer's option table
(`MultiQuantizer.search_space()`, saved by stage 01 as `search_space.csv`). Unlike the released code, the layer's
size is a feature of its own and the block position is relative (see `qsd.graph.features`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import Data

from qsd.bits import FLOAT_BITS
from qsd.config import QuantConfig
from qsd.errors import InvalidSettingError
from qsd.graph.features import METHOD_CODES, NUMERIC_FEATURES, ROLES

COLUMN = {name: i for i, name in enumerate(NUMERIC_FEATURES)}


def hop_anchors(graph, hops: int) -> torch.Tensor:
    """[nodes, hops + 1] masks: hop 0 = every weight node, hop m = the anchors of the subgraphs whose hop is m, the
    last hop also those beyond it (an empty column means: all nodes; code.md §5 hop-level readout)."""
    mask = torch.zeros(len(graph.nodes), hops + 1, dtype=torch.bool)
    mask[[i for i, n in enumerate(graph.nodes) if n.kind == "weight"], 0] = True
    for subgraph in graph.subgraphs:
        if subgraph.hop >= 1:
            mask[subgraph.anchor, min(subgraph.hop, hops)] = True
    return mask


def option_lookup(option_table: pd.DataFrame) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(unit, option key) → (bits, compression, error) from a `search_space()` table."""
    needed = {"unit", "option", "w_bits", "n_weights", "size_bits", "error"}
    if missing := needed - set(option_table.columns):
        raise InvalidSettingError(f"the option table lacks column(s) {sorted(missing)}; pass the multiquantizer's "
                                  "search_space() table (stage 01's search_space.csv)")
    return {(r.unit, r.option): (r.w_bits / FLOAT_BITS, r.n_weights / r.size_bits, r.error)  # (16·n / size) / 16
            for r in option_table.itertuples()}


def encode_configs(graph, configs: Sequence[QuantConfig], option_table: pd.DataFrame, hops: int,
                   targets: Sequence[float] | None = None) -> list[Data]:
    """One `Data(x, method, role, edge_index, anchor[, y])` per configuration of `graph`'s weight units."""
    if hops < 1:
        raise InvalidSettingError(f"hops must be ≥ 1 (the predictor's GNN depth); got {hops}")
    if targets is not None and len(targets) != len(configs):
        raise InvalidSettingError(f"{len(configs)} configurations but {len(targets)} targets")
    lookup = option_lookup(option_table)
    weight_nodes = [i for i, n in enumerate(graph.nodes) if n.kind == "weight"]
    units = [graph.nodes[i].name for i in weight_nodes]
    base = np.zeros((len(graph.nodes), len(NUMERIC_FEATURES)), dtype=np.float32)
    for i, node in enumerate(graph.nodes):
        if node.block >= 0:
            base[i, COLUMN["block_position"]] = (node.block + 1) / (graph.n_blocks + 1)
        if node.kind == "weight":
            base[i, COLUMN["is_weight"]] = 1.0
            base[i, COLUMN["log_size"]] = math.log2(max(node.numel, 1)) / 32
    role = torch.tensor([ROLES.index(n.role) for n in graph.nodes], dtype=torch.long)
    edge_index = torch.tensor(graph.edges, dtype=torch.long).reshape(-1, 2).t().contiguous()
    anchor = hop_anchors(graph, hops)
    float_method = METHOD_CODES.index("float")
    data = []
    for k, config in enumerate(configs):
        config.validate(units)
        x = base.copy()
        method = np.zeros(len(graph.nodes), dtype=np.int64)
        for node, unit in zip(weight_nodes, units, strict=True):
            spec = config[unit]
            if spec is None:
                method[node] = float_method
                x[node, [COLUMN["bits"], COLUMN["compression"]]] = (1.0, 1.0 / FLOAT_BITS)
                continue
            if (unit, spec.key) not in lookup:
                raise InvalidSettingError(f"the option table has no row for {unit!r} under {spec.key!r}; was it built "
                                          "by the multiquantizer of this model?")
            method[node] = METHOD_CODES.index(spec.method)
            x[node, [COLUMN["bits"], COLUMN["compression"], COLUMN["error"]]] = lookup[unit, spec.key]
        item = Data(x=torch.from_numpy(x), method=torch.from_numpy(method), role=role, edge_index=edge_index,
                    anchor=anchor, num_nodes=len(graph.nodes))
        if targets is not None:
            item.y = torch.tensor([float(targets[k])], dtype=torch.float32)
        data.append(item)
    return data
