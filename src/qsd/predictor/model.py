"""The GNN predictor of a configuration's quality with hop-level graph embeddings (paper §3.3; code.md §5).

    h⁰_v   = MLP(Emb(method_v) ‖ Emb(role_v) ‖ Linear(x_v))                            (node_dim wide, ≥ 0)
    h^m_v  = ReLU(BN(GATv2(h^{m−1})_v)) [+ h^{m−1}_v when the widths match],  m = 1..M  (hidden wide, ≥ 0)
    h_G^m  = mean of h^m over hop m's anchor nodes ("anchors") or over all nodes ("all")
    y′     = MLP(h_G^M)

Every h is non-negative (it ends in a ReLU), so the hop scalar ‖h_G^m‖₁ that the ranking loss orders
(`qsd.predictor.losses`) is the sum of its activations. GATv2Conv runs with PyG's defaults, as in the released
code: one head, self-loops, messages along the data flow (predecessor → node).

Where this differs from the released code (code.md §5):
  * the node features are a family-independent vocabulary (`qsd.graph.features`: method, role, numeric columns)
    instead of per-model position codes, so one predictor reads every denoiser;
  * the node MLP is Linear → BN → ReLU → Linear → BN → ReLU (the original also put BN → ReLU in front, which
    zeroes half of the raw embeddings);
  * the residual is added on every layer whose input and output widths match (the original: layers ≥ 2, which is
    the same thing when node_dim ≠ hidden, the default);
  * anchors come with each graph (`Data.anchor`, a column per hop) instead of hard-coded node-index lists; a graph
    whose column is all False falls back to the mean over all its nodes (the original's `None` entries);
  * the head is Linear → ReLU → Linear → ReLU → Linear (the original stacked linears without activations between).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.nn import GATv2Conv
from torch_geometric.utils import scatter

from qsd.errors import InvalidSettingError
from qsd.graph.features import METHOD_CODES, NUMERIC_FEATURES, ROLES

READOUTS = ("anchors", "all")
"""How h_G^m pools the nodes: the mean over hop m's anchor nodes (the paper's), or over all nodes."""


def settings_from_json(cls: type, data: dict[str, Any]) -> Any:
    """`cls(**data)` for a settings dataclass, refusing names it does not have."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InvalidSettingError(f"{cls.__name__} has no setting(s) {unknown}; known: {sorted(names)}")
    return cls(**data)


@dataclass(frozen=True)
class PredictorSettings:
    """Shape of the GNN. Defaults follow the released code: M = 4 GATv2 layers of 64, a 16-d hop-0 embedding."""

    hops: int = 4
    """M, the number of message-passing layers: hop levels 0..M."""
    hidden: int = 64
    """Width of h¹..h^M (and of the MLPs)."""
    node_dim: int = 16
    """Width of the hop-0 node embedding h⁰."""
    readout: str = "anchors"
    """One of READOUTS."""
    role_dim: int = 8
    """Width of the role embedding."""
    method_dim: int = 4
    """Width of the quantization-method embedding."""

    def __post_init__(self) -> None:
        for name in ("hops", "hidden", "node_dim", "role_dim", "method_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidSettingError(f"PredictorSettings.{name} must be an integer >= 1, got {value!r}")
        if self.readout not in READOUTS:
            raise InvalidSettingError(f"PredictorSettings.readout {self.readout!r} is not one of {READOUTS}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> PredictorSettings:
        return settings_from_json(cls, data)


def l1_norms(embeddings: list[torch.Tensor]) -> torch.Tensor:
    """‖e^m‖₁ of each row of each hop's embeddings, stacked to [rows, M+1] (the paper's hop scalar)."""
    return torch.stack([e.abs().sum(dim=-1) for e in embeddings], dim=-1)


def _graph_index(batch: Data) -> tuple[torch.Tensor, int]:
    """Each node's graph and the number of graphs (a lone `Data` is one graph)."""
    if getattr(batch, "batch", None) is None:
        return torch.zeros(batch.num_nodes, dtype=torch.long, device=batch.x.device), 1
    return batch.batch, batch.num_graphs


class GraphPredictor(nn.Module):
    """y′ and the hop-level graph embeddings h_G^0..h_G^M of a batch of encoded configurations."""

    def __init__(self, settings: PredictorSettings = PredictorSettings()) -> None:
        super().__init__()
        self.settings = s = settings
        self.method_embedding = nn.Embedding(len(METHOD_CODES), s.method_dim)
        self.role_embedding = nn.Embedding(len(ROLES), s.role_dim)
        self.numeric = nn.Linear(len(NUMERIC_FEATURES), s.node_dim)
        self.node_mlp = nn.Sequential(
            nn.Linear(s.method_dim + s.role_dim + s.node_dim, s.hidden), nn.BatchNorm1d(s.hidden), nn.ReLU(),
            nn.Linear(s.hidden, s.node_dim), nn.BatchNorm1d(s.node_dim), nn.ReLU(),
        )
        widths = [s.node_dim] + [s.hidden] * s.hops
        self.convs = nn.ModuleList(GATv2Conv(w_in, w_out) for w_in, w_out in zip(widths[:-1], widths[1:], strict=True))
        self.norms = nn.ModuleList(nn.BatchNorm1d(w) for w in widths[1:])
        self.head = nn.Sequential(nn.Linear(s.hidden, s.hidden), nn.ReLU(), nn.Linear(s.hidden, s.hidden), nn.ReLU(),
                                  nn.Linear(s.hidden, 1))

    def _check(self, batch: Data) -> None:
        if batch.x.dim() != 2 or batch.x.shape[1] != len(NUMERIC_FEATURES):
            raise InvalidSettingError(f"graphs' x must be [N, {len(NUMERIC_FEATURES)}] ({', '.join(NUMERIC_FEATURES)})"
                                      f", got {list(batch.x.shape)}; encode them with qsd.graph")
        for name, vocabulary in (("method", METHOD_CODES), ("role", ROLES)):
            codes = getattr(batch, name)
            if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= len(vocabulary)):
                raise InvalidSettingError(f"graphs' {name} codes must lie in [0, {len(vocabulary)}), got "
                                          f"[{int(codes.min())}, {int(codes.max())}]")
        if self.settings.readout == "anchors":
            anchor = getattr(batch, "anchor", None)
            if anchor is None or anchor.dim() != 2 or anchor.shape[1] != self.settings.hops + 1:
                got = "none" if anchor is None else list(anchor.shape)
                raise InvalidSettingError(f"readout='anchors' with hops={self.settings.hops} needs graphs with an "
                                          f"anchor mask [N, {self.settings.hops + 1}], got {got}; encode the graphs "
                                          f"for {self.settings.hops} hops or use readout='all'")

    def node_embeddings(self, batch: Data) -> list[torch.Tensor]:
        """h⁰..h^M of every node: M+1 tensors [N, node_dim], [N, hidden], ..."""
        self._check(batch)
        h = self.node_mlp(torch.cat([self.method_embedding(batch.method), self.role_embedding(batch.role),
                                     self.numeric(batch.x)], dim=-1))
        embeddings = [h]
        for conv, norm in zip(self.convs, self.norms, strict=True):
            new = torch.relu(norm(conv(h, batch.edge_index)))
            h = new + h if new.shape == h.shape else new
            embeddings.append(h)
        return embeddings

    def _readout_weights(self, batch: Data, hop: int, graph: torch.Tensor, num_graphs: int) -> torch.Tensor:
        """[N] weight of each node in h_G^hop: 1 on anchors (on all nodes of a graph without anchors), else 0."""
        if self.settings.readout == "all":
            return torch.ones_like(graph, dtype=batch.x.dtype)
        anchors = batch.anchor[:, hop].to(batch.x.dtype)
        has_anchors = scatter(anchors, graph, dim=0, dim_size=num_graphs, reduce="sum") > 0
        return torch.where(has_anchors[graph], anchors, 1.0)

    def graph_embeddings(self, batch: Data, embeddings: list[torch.Tensor]) -> list[torch.Tensor]:
        """h_G^0..h_G^M [B, d_m] from the node embeddings, per the readout setting."""
        graph, num_graphs = _graph_index(batch)
        pooled = []
        for hop, h in enumerate(embeddings):
            weight = self._readout_weights(batch, hop, graph, num_graphs)
            total = scatter(h * weight[:, None], graph, dim=0, dim_size=num_graphs, reduce="sum")
            pooled.append(total / scatter(weight, graph, dim=0, dim_size=num_graphs, reduce="sum")[:, None])
        return pooled

    def forward(self, batch: Data) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(y′ [B], [h_G^0 [B, node_dim], h_G^1 [B, hidden], ..., h_G^M])."""
        pooled = self.graph_embeddings(batch, self.node_embeddings(batch))
        return self.head(pooled[-1]).squeeze(-1), pooled

    def hop_norms(self, batch: Data) -> torch.Tensor:
        """‖h_G^m‖₁ per graph and hop: [B, M+1]."""
        return l1_norms(self(batch)[1])
