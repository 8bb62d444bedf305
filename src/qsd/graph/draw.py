"""Drawing one block of a denoiser graph: nodes by data-flow depth, weight layers labelled with their role and
coloured by subgraph type, combine operations as small grey nodes (paper Fig. 2)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import networkx as nx

from qsd.graph.denoiser_graph import DenoiserGraph
from qsd.graph.subgraphs import SUBGRAPH_TYPES
from qsd.plotting import new_figure


def draw_block(graph: DenoiserGraph, block: int, title: str | None = None) -> plt.Figure:
    """Figure of block `block`'s subgraph (its nodes and the edges between them), left to right in data-flow
    order; one colour per subgraph type, the legend naming them."""
    sub = graph.block_subgraph(block)
    for layer, generation in enumerate(nx.topological_generations(sub)):
        for node in generation:
            sub.nodes[node]["layer"] = layer
    pos = nx.multipartite_layout(sub, subset_key="layer")
    subgraph_type = {s.name: s.type for s in graph.subgraphs}
    palette = dict(zip(SUBGRAPH_TYPES, plt.get_cmap("tab20").colors, strict=False))
    depth = max((d["layer"] for _, d in sub.nodes(data=True)), default=0) + 1
    fig, ax = new_figure(min(max(8.0, 0.9 * depth), 18.0), 5.5)
    weights = [n for n, d in sub.nodes(data=True) if d["kind"] == "weight"]
    others = [n for n in sub.nodes if n not in weights]
    nx.draw_networkx_edges(sub, pos, ax=ax, arrowsize=10, edge_color="0.55", node_size=900,
                           connectionstyle="arc3,rad=0.12")
    nx.draw_networkx_nodes(sub, pos, nodelist=others, ax=ax, node_size=260, node_color="0.85", edgecolors="0.4")
    kinds = [subgraph_type[sub.nodes[n]["unit"]] for n in weights]
    nx.draw_networkx_nodes(sub, pos, nodelist=weights, ax=ax, node_size=900,
                           node_color=[palette[k] for k in kinds], edgecolors="0.2")
    nx.draw_networkx_labels(sub, pos, {n: sub.nodes[n]["role"] for n in sub.nodes}, ax=ax, font_size=7)
    for kind in dict.fromkeys(kinds):
        ax.scatter([], [], s=80, color=palette[kind], edgecolors="0.2", label=f"{kind} unit")
    ax.scatter([], [], s=40, color="0.85", edgecolors="0.4", label="combine operation")
    ax.legend(loc="upper left", fontsize=8, frameon=False, bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title or f"{graph.model_class}: block {block} ({graph.block_names[block]}), "
                          f"{len(weights)} weight layers, {len(others)} combine operations")
    ax.set_axis_off()
    return fig
