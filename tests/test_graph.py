"""Denoiser graphs (qsd.graph): traced automatically from any diffusers denoiser, with roles, blocks and subgraphs."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from qsd.config import QuantConfig, QuantSpec
from qsd.errors import CorruptFileError, MissingLayerError, QsdError
from qsd.graph import NUMERIC_FEATURES, DenoiserGraph
from qsd.graph.draw import draw_block
from qsd.graph.features import METHOD_CODES, ROLES, WEIGHT_ROLES
from qsd.layers import quantizable_units
from qsd.models import load_model
from qsd.models.random_init import RANDOM_ARCHITECTURES, example_inputs, random_denoiser
from qsd.multiquant import DEFAULT_OPTIONS, MultiQuantizer

EMBEDDED = ("tiny_pixart", "tiny_dit", "tiny_sd")


@pytest.fixture(scope="module")
def graphs() -> dict[str, tuple[nn.Module, DenoiserGraph]]:
    built = {}
    for arch in RANDOM_ARCHITECTURES:
        model = random_denoiser(arch)
        built[arch] = model, DenoiserGraph.from_model(model, inputs=example_inputs(arch, batch=1))
    for model_id in EMBEDDED:
        model = load_model(model_id)
        built[model_id] = model.denoiser, DenoiserGraph.from_diffusion_model(model)
    return built


def descendants(graph: DenoiserGraph, sources: list[int]) -> set[int]:
    g = graph.to_networkx()
    return set().union(*(nx.descendants(g, s) for s in sources)) if sources else set()


@pytest.mark.parametrize("name", RANDOM_ARCHITECTURES + EMBEDDED)
def test_every_quantizable_layer_is_one_node_and_the_graph_is_a_dag(graphs, name):
    model, graph = graphs[name]
    units = [u.name for u in quantizable_units(model)]
    assert sorted(graph.unit_names) == sorted(units)  # each exactly once
    assert nx.is_directed_acyclic_graph(graph.to_networkx())
    assert sorted(layer for s in graph.subgraphs for layer in s.layers) == sorted(units)  # a partition of the layers
    assert all(graph.nodes[graph.weight_node[name]].role in WEIGHT_ROLES for name in units)
    isolated = [n for n in graph.unit_names if not any(graph.weight_node[n] in e for e in graph.edges)]
    assert not isolated, f"layers outside the data flow: {isolated}"


@pytest.mark.parametrize("name", RANDOM_ARCHITECTURES + EMBEDDED)
def test_time_embedding_reaches_every_block_and_captions_reach_every_cross_attention(graphs, name):
    _, graph = graphs[name]
    t_embed = [i for i, n in enumerate(graph.nodes) if n.role == "t-embed"]
    assert t_embed and graph.n_blocks >= 2
    reached = descendants(graph, t_embed)
    assert {graph.nodes[i].block for i in reached} >= set(range(graph.n_blocks))
    cross_kv = [i for i, n in enumerate(graph.nodes) if n.role in ("CA-K", "CA-V")]
    captions = [i for i, n in enumerate(graph.nodes) if n.role == "input-c"]
    assert set(cross_kv) <= descendants(graph, captions)
    if name in ("pixart", "tiny_pixart"):  # through the caption projection, as in the paper's PixArt graph
        assert set(cross_kv) <= descendants(graph, [i for i, n in enumerate(graph.nodes) if n.role == "c-embed"])


@pytest.mark.parametrize("name", ["sd15_unet", "sdxl_unet", "tiny_sd"])
def test_unet_skip_connections_are_edges(graphs, name):
    _, graph = graphs[name]
    down = {i for i, b in enumerate(graph.block_names) if b.startswith("down_blocks")}
    up = {i for i, b in enumerate(graph.block_names) if b.startswith("up_blocks")}
    long_edges = [(s, d) for s, d in graph.edges if graph.nodes[s].block in down and graph.nodes[d].block in up]
    assert long_edges and all(graph.nodes[d].role == "concat" for _, d in long_edges)
    preds = graph.predecessors()
    concats_in_up = [i for i, n in enumerate(graph.nodes) if n.role == "concat" and n.block in up]
    split_resnets = [n for n in graph.unit_names if n.endswith("conv1:skip")]
    assert len(concats_in_up) == len(split_resnets)  # one concatenation per skip connection
    for concat in concats_in_up:  # each reads one skip: from a down block, or conv_in's output for the first
        assert any(graph.nodes[p].block in down or graph.nodes[p].role == "conv-in" for p in preds[concat])


def test_pixart_roles_subgraphs_and_folded_modulation(graphs):
    _, graph = graphs["pixart"]
    roles = {n.name: n.role for n in graph.nodes if n.kind == "weight"}
    assert roles["transformer_blocks.0.attn1.to_q"] == "SA-Q" and roles["transformer_blocks.0.attn2.to_k"] == "CA-K"
    assert roles["transformer_blocks.1.ff.net.2"] == "FF-2" and roles["adaln_single.linear"] == "adaLN"
    assert roles["caption_projection.linear_1"] == "c-embed" and roles["pos_embed.proj"] == "pos-embed"
    subgraphs = {s.name: s for s in graph.subgraphs}
    assert set(subgraphs["transformer_blocks.0:SA"].layers) == {f"transformer_blocks.0.attn1.{p}"
                                                               for p in ("to_q", "to_k", "to_v", "to_out.0")}
    assert subgraphs["t-embed"].layers[-1] == "adaln_single.linear" and len(subgraphs["t-embed"].layers) == 3
    assert graph.nodes[subgraphs["transformer_blocks.0:FF"].anchor].role == "FF-2"
    assert subgraphs["transformer_blocks.0:FF"].hop == 1 and subgraphs["transformer_blocks.0:SA"].hop == 2
    # x·(1 + scale) + shift is one modulate node fed by the norm and the adaLN layer
    adaln = graph.weight_node["adaln_single.linear"]
    preds = graph.predecessors()
    q = graph.weight_node["transformer_blocks.0.attn1.to_q"]
    (modulate,) = preds[q]
    assert graph.nodes[modulate].role == "modulate"
    assert {graph.nodes[p].role for p in preds[modulate]} == {"norm", "adaLN"} and adaln in preds[modulate]


def test_dit_attention_subgraph_holds_its_adaln_layer_as_in_the_paper(graphs):
    _, graph = graphs["dit"]
    sa = {s.name: s for s in graph.subgraphs}["transformer_blocks.0:SA"]
    assert "transformer_blocks.0.norm1.linear" in sa.layers and len(sa.layers) == 5


def test_unet_split_halves_are_parallel_nodes_merged_by_an_add(graphs):
    _, graph = graphs["sd15_unet"]
    main = graph.weight_node["up_blocks.0.resnets.0.conv1"]
    skip = graph.weight_node["up_blocks.0.resnets.0.conv1:skip"]
    preds = graph.predecessors()
    assert preds[main] == preds[skip]
    merge = [d for s, d in graph.edges if s == main]
    assert len(merge) == 1 and preds[merge[0]] == {main, skip} and graph.nodes[merge[0]].role == "add"
    assert graph.nodes[skip].role == "skip" and graph.nodes[skip].fqn == "up_blocks.0.resnets.0.conv1"


def test_unknown_denoisers_get_generic_roles_not_errors():
    from diffusers import SanaTransformer2DModel, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8).eval()
    graph = DenoiserGraph.from_model(unet, inputs={"sample": torch.randn(1, 3, 8, 8), "timestep": torch.tensor([10])})
    assert sorted(graph.unit_names) == sorted(u.name for u in quantizable_units(unet))
    assert max(len(s.layers) for s in graph.subgraphs) <= 5  # two attentions under one up block: split by module path
    sana = SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                  num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=16,
                                  cross_attention_dim=32, caption_channels=24, sample_size=8, patch_size=1).eval()
    inputs = {"hidden_states": torch.randn(1, 4, 8, 8), "timestep": torch.tensor([1]),
              "encoder_hidden_states": torch.randn(1, 5, 24)}
    graph = DenoiserGraph.from_model(sana, inputs=inputs)
    roles = {n.name: n.role for n in graph.nodes if n.kind == "weight"}
    assert roles["transformer_blocks.0.ff.conv_depth"] == "conv"  # Sana's conv feed-forward: no rule, generic role
    assert roles["transformer_blocks.0.attn2.to_k"] == "CA-K"


class _Odd(nn.Module):
    """A denoiser no rule knows: odd names, a weight used outside its module, an unused layer."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Linear(4, 8)
        self.beta = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.gamma = nn.Linear(8, 4)
        self.unused = nn.Linear(3, 3)

    def forward(self, hidden_states, timestep):
        h = self.alpha(hidden_states) * timestep[:, None]
        for layer in self.beta:
            h = h + layer(torch.nn.functional.silu(h))
        return torch.nn.functional.linear(h, self.gamma.weight)


def test_any_module_traces_with_generic_roles():
    model = _Odd()
    graph = DenoiserGraph.from_model(model, inputs={"hidden_states": torch.randn(2, 4), "timestep": torch.ones(2)})
    roles = {n.name: n.role for n in graph.nodes if n.kind == "weight"}
    assert roles == dict.fromkeys(("alpha", "beta.0", "beta.1", "gamma", "unused"), "linear")
    preds = graph.predecessors()
    assert preds[graph.weight_node["gamma"]]  # read through F.linear(h, gamma.weight): still in the data flow
    assert graph.block_names == ["beta.0", "beta.1"]
    with pytest.raises(QsdError, match="exactly one of"):
        DenoiserGraph.from_model(model)


def test_networkx_view_save_load_and_the_block_figure(graphs, tmp_path):
    _, graph = graphs["tiny_pixart"]
    g = graph.to_networkx()
    weights = [n for n, d in g.nodes(data=True) if d["kind"] == "weight"]
    assert {g.nodes[n]["fqn"] for n in weights} == {u.split(":")[0] for u in graph.unit_names}
    path = graph.save(tmp_path / "graph.json")
    loaded = DenoiserGraph.load(path)
    assert loaded.nodes == graph.nodes and loaded.edges == graph.edges and loaded.subgraphs == graph.subgraphs
    assert loaded.block_names == graph.block_names
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CorruptFileError):
        DenoiserGraph.load(tmp_path / "bad.json")
    fig = draw_block(graph, 0)
    assert fig.axes[0].get_title().startswith("PixArtTransformer2DModel: block 0")


def test_encode_features_follow_the_configuration(graphs):
    model, graph = graphs["pixart"]
    mq = MultiQuantizer.build(model, progress=False)
    option_table = mq.search_space()
    config = mq.sample(0)
    mixed = QuantConfig({**dict(config), "proj_out": None})
    data = graph.encode([mixed, mq.uniform(QuantSpec("uaq", 3))], option_table, hops=4, targets=[1.0, 2.0])
    assert len(data) == 2 and data[1].y.item() == 2.0
    col = {name: i for i, name in enumerate(NUMERIC_FEATURES)}
    for unit in ("transformer_blocks.0.attn1.to_q", "proj_out"):
        node, spec = graph.weight_node[unit], mixed[unit]
        x = data[0].x[node]
        if spec is None:
            assert METHOD_CODES[data[0].method[node]] == "float" and x[col["bits"]] == 1 and x[col["error"]] == 0
        else:
            row = option_table[(option_table.unit == unit) & (option_table.option == spec.key)].iloc[0]
            assert METHOD_CODES[data[0].method[node]] == spec.method
            assert x[col["bits"]] == pytest.approx(spec.w_bits / 16)
            assert x[col["error"]] == pytest.approx(row.error)
            assert x[col["compression"]] == pytest.approx(row.n_weights / row.size_bits, rel=1e-6)
    assert (data[1].x[:, col["bits"]][data[1].x[:, col["is_weight"]] == 1] == pytest.approx(3 / 16))
    combine = [i for i, n in enumerate(graph.nodes) if n.kind != "weight"]
    assert (data[0].method[combine] == 0).all() and (data[0].x[combine, col["bits"]] == 0).all()
    assert data[0].anchor[:, 0].sum() == len(graph.unit_names) and data[0].anchor.shape[1] == 5
    assert [ROLES[r] for r in data[0].role[:3].tolist()] == [n.role for n in graph.nodes[:3]]
    with pytest.raises(MissingLayerError):
        graph.encode([QuantConfig({"proj_out": None})], option_table)


def test_encode_rejects_a_foreign_option_table(graphs):
    model, graph = graphs["pixart"]
    option_table = pd.DataFrame({"unit": ["x"], "option": ["uaq-4"], "w_bits": [4], "n_weights": [1], "size_bits": [4],
                                 "error": [0.1]})
    config = QuantConfig(dict.fromkeys(graph.unit_names, DEFAULT_OPTIONS[0]))
    with pytest.raises(QsdError, match="no row"):
        graph.encode([config], option_table)
    with pytest.raises(QsdError, match="lacks column"):
        graph.encode([config], option_table.drop(columns="error"))
    assert np.isfinite(graph.encode([QuantConfig(dict.fromkeys(graph.unit_names))], option_table)[0].x.numpy()).all()
