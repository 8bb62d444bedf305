"""A denoiser as a graph of weight layers and combine operations, and its encoding for the predictor
(paper §3.3; code.md §4)."""

from qsd.graph.denoiser_graph import DenoiserGraph, GraphNode
from qsd.graph.features import METHOD_CODES, NUMERIC_FEATURES, ROLES
from qsd.graph.subgraphs import Subgraph

__all__ = ["DenoiserGraph", "GraphNode", "METHOD_CODES", "NUMERIC_FEATURES", "ROLES", "Subgraph"]
