"""The GNN predictor (paper §3.3; code.md §5): shapes, hop readouts, training, save/load, determinism, settings.

Graphs are synthetic and follow the `qsd.graph` contract: one fixed denoiser topology, per-configuration features.
"""

import numpy as np
import pytest
import torch
from margins import above, below
from torch_geometric.data import Batch, Data
from torch_geometric.nn import global_mean_pool

from qsd.errors import CorruptFileError, InvalidSettingError, MissingFileError
from qsd.graph.features import COMBINE_ROLES, METHOD_CODES, NUMERIC_FEATURES, ROLES, WEIGHT_ROLES
from qsd.predictor.losses import RANK_LOSSES
from qsd.predictor.metrics import spearman
from qsd.predictor.model import GraphPredictor, PredictorSettings, l1_norms
from qsd.predictor.training import TrainedPredictor, TrainSettings, train_predictor

ERROR = NUMERIC_FEATURES.index("error")
SMALL = PredictorSettings(hops=2, hidden=32, node_dim=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def topology(n_weight=10, n_combine=20, seed=0):
    """A random data-flow DAG: node 0 the input, each later node fed by one or two of the four before it."""
    g = torch.Generator().manual_seed(seed)
    n = n_weight + n_combine
    is_weight = torch.zeros(n, dtype=torch.bool)
    is_weight[1 + torch.randperm(n - 1, generator=g)[:n_weight]] = True
    role = torch.where(is_weight, torch.randint(0, len(WEIGHT_ROLES), (n,), generator=g),
                       len(WEIGHT_ROLES) + torch.randint(0, len(COMBINE_ROLES), (n,), generator=g))
    role[0] = ROLES.index("input-x")
    edges = sorted({(max(0, i - 1 - int(torch.randint(0, 4, (1,), generator=g))), i)
                    for i in range(1, n) for _ in range(2)})
    return is_weight, role, torch.tensor(edges).T


def configuration(g, is_weight, role, edge_index, hops):
    """One random configuration of the topology; y = −(sum of the weight layers' errors) + noise."""
    n = len(role)
    bits = torch.randint(0, 3, (n,), generator=g)  # 4 bit, 3 bit, float
    x = torch.zeros(n, len(NUMERIC_FEATURES))
    x[:, 0] = is_weight.float()
    x[:, 1] = torch.tensor([4 / 16, 3 / 16, 1.0])[bits] * is_weight
    x[:, ERROR] = torch.rand(n, generator=g) * torch.tensor([0.2, 0.6, 0.0])[bits] * is_weight
    method = torch.where(bits == 2, METHOD_CODES.index("float"), torch.randint(2, len(METHOD_CODES), (n,), generator=g))
    anchor = torch.zeros(n, hops + 1, dtype=torch.bool)
    anchor[:, 0] = is_weight
    anchor[1::3, 1:hops] = True  # hop `hops` has no anchors: the mean over all nodes
    y = -x[:, ERROR].sum() + 0.02 * torch.randn((), generator=g)
    return Data(x=x, method=torch.where(is_weight, method, 0), role=role, edge_index=edge_index, anchor=anchor,
                y=y.reshape(1))


def dataset(n, hops=2, seed=0, **shape):
    is_weight, role, edge_index = topology(**shape)
    g = torch.Generator().manual_seed(seed)
    return [configuration(g, is_weight, role, edge_index, hops) for _ in range(n)]


@pytest.fixture(scope="module")
def trained():
    return train_predictor(dataset(40), SMALL, TrainSettings(loss="hybrid", epochs=3, batch_size=16))


def test_shapes_of_forward_node_embeddings_and_hop_norms():
    settings = PredictorSettings()
    batch = Batch.from_data_list(dataset(5, hops=settings.hops))
    model = GraphPredictor(settings).eval()
    prediction, pooled = model(batch)
    widths = [settings.node_dim] + [settings.hidden] * settings.hops
    assert prediction.shape == (5,)
    assert [tuple(h.shape) for h in pooled] == [(5, w) for w in widths]
    assert [tuple(h.shape) for h in model.node_embeddings(batch)] == [(batch.num_nodes, w) for w in widths]
    norms = model.hop_norms(batch)
    assert norms.shape == (5, settings.hops + 1) and bool((norms >= 0).all())
    torch.testing.assert_close(norms, l1_norms(pooled))


def test_a_lone_graph_is_one_graph():
    graph = dataset(1)[0]
    model = GraphPredictor(SMALL).eval()
    torch.testing.assert_close(model(graph)[0], model(Batch.from_data_list([graph]))[0])


def test_anchor_readout_pools_the_anchors_and_falls_back_to_all_nodes():
    graphs = dataset(4)
    graphs[1].anchor[:, 1] = False  # graph 1 has no hop-1 anchors: its h_G^1 is the mean over all its nodes
    batch = Batch.from_data_list(graphs)
    torch.manual_seed(0)
    anchors = GraphPredictor(SMALL).eval()
    everything = GraphPredictor(PredictorSettings(hops=2, hidden=32, node_dim=16, readout="all")).eval()
    everything.load_state_dict(anchors.state_dict())
    nodes = anchors.node_embeddings(batch)
    pooled_anchors, pooled_all = anchors(batch)[1], everything(batch)[1]
    for hop, h in enumerate(nodes):
        torch.testing.assert_close(pooled_all[hop], global_mean_pool(h, batch.batch))
        mask = batch.anchor[:, hop]
        if hop < SMALL.hops:
            assert not torch.allclose(pooled_anchors[hop], pooled_all[hop])
            torch.testing.assert_close(pooled_anchors[hop][0], h[(batch.batch == 0) & mask].mean(0))
    torch.testing.assert_close(pooled_anchors[1][1], pooled_all[1][1])  # the fall-back
    torch.testing.assert_close(pooled_anchors[SMALL.hops], pooled_all[SMALL.hops])  # an all-False column


def test_graphs_that_break_the_contract_are_refused():
    model = GraphPredictor(PredictorSettings(hops=3))
    with pytest.raises(InvalidSettingError, match="anchor mask"):
        model(Batch.from_data_list(dataset(2, hops=2)))
    graph = dataset(1, hops=3)[0]
    with pytest.raises(InvalidSettingError, match="role codes"):
        model(Data(**{**graph.to_dict(), "role": graph.role + len(ROLES)}))
    with pytest.raises(InvalidSettingError, match="x must be"):
        model(Data(**{**graph.to_dict(), "x": graph.x[:, :2]}))


@pytest.mark.comparison
@pytest.mark.parametrize("kind", RANK_LOSSES)
def test_training_learns_a_feature_dependent_target(kind):
    graphs = dataset(160, seed=1)
    train, test = graphs[:120], graphs[120:]
    predictor = train_predictor(train, SMALL, TrainSettings(loss=kind, epochs=30, batch_size=30, lr=1e-2))
    y = np.array([float(g.y) for g in test])
    above(spearman(predictor.predict(test), y), 0.8, 0.05, "held-out Spearman vs 0.8")
    assert len(predictor.history) == 30
    below(predictor.history[-1]["total"], predictor.history[0]["total"], 0.5, "last epoch's loss vs the first's")
    if kind != "mse":  # the hop norms learn the order too (under MSE alone they are free, here anti-correlated)
        above(min(spearman(norms, y) for norms in predictor.hop_norms(test).T), 0.5, 0.2,
              "worst hop norm's Spearman vs 0.5")


def test_predictions_are_in_target_units(trained):
    y = np.array([float(g.y) for g in dataset(40)])
    assert trained.y_mean == pytest.approx(y.mean()) and trained.y_std == pytest.approx(y.std(), rel=1e-5)
    assert abs(trained.predict(dataset(40)).mean() - y.mean()) < 3 * y.std()


def test_hop_moments_describe_node_norms(trained):
    assert len(trained.hop_moments) == SMALL.hops + 1
    assert all(mean > 0 and std > 0 for mean, std in trained.hop_moments)
    assert trained.hop_norms(dataset(3)).shape == (3, SMALL.hops + 1)


def test_save_and_load_round_trip(trained, tmp_path):
    graphs = dataset(10, seed=5)
    loaded = TrainedPredictor.load(trained.save(tmp_path / "fold_0.safetensors"))
    np.testing.assert_array_equal(loaded.predict(graphs), trained.predict(graphs))
    np.testing.assert_array_equal(loaded.hop_norms(graphs), trained.hop_norms(graphs))
    assert loaded.state() == trained.state()


def test_loading_a_bad_file_is_refused(trained, tmp_path):
    with pytest.raises(MissingFileError):
        TrainedPredictor.load(tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CorruptFileError):
        TrainedPredictor.load(garbage)
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, other)
    with pytest.raises(CorruptFileError, match="not a saved qsd predictor"):
        TrainedPredictor.load(other)


def test_training_is_deterministic_for_a_seed(trained):
    graphs = dataset(40)
    settings = TrainSettings(loss="hybrid", epochs=3, batch_size=16)
    again = train_predictor(graphs, SMALL, settings)
    np.testing.assert_array_equal(again.predict(graphs), trained.predict(graphs))
    assert again.history == trained.history
    other = train_predictor(graphs, SMALL, TrainSettings(loss="hybrid", epochs=3, batch_size=16, seed=1))
    assert not np.array_equal(other.predict(graphs), trained.predict(graphs))


def test_training_leaves_the_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    train_predictor(dataset(8), SMALL, TrainSettings(epochs=1, batch_size=4))
    torch.testing.assert_close(torch.rand(3), expected)


def test_training_needs_targets():
    graphs = dataset(4)
    del graphs[2].y
    with pytest.raises(InvalidSettingError, match="target y"):
        train_predictor(graphs, SMALL, TrainSettings(epochs=1))
    with pytest.raises(InvalidSettingError, match="at least one graph"):
        train_predictor([], SMALL, TrainSettings(epochs=1))


@pytest.mark.parametrize("make", [
    lambda: PredictorSettings(hops=0),
    lambda: PredictorSettings(hidden=1.5),
    lambda: PredictorSettings(node_dim=True),
    lambda: PredictorSettings(readout="sum"),
    lambda: PredictorSettings.from_json({"hops": 2, "layers": 3}),
    lambda: TrainSettings(loss="ndcg"),
    lambda: TrainSettings(epochs=0),
    lambda: TrainSettings(lr=0.0),
    lambda: TrainSettings(lr=float("nan")),
    lambda: TrainSettings(batch_size=0),
    lambda: TrainSettings(grad_clip=-1.0),
    lambda: TrainSettings(rank_weight=-0.5),
    lambda: TrainSettings(seed=-1),
    lambda: TrainSettings.from_json({"loss": "srcc", "epoch": 3}),
])
def test_bad_settings_are_refused(make):
    with pytest.raises(InvalidSettingError):
        make()


def test_settings_round_trip_through_json():
    model, train = PredictorSettings(hops=3, readout="all"), TrainSettings(loss="srcc", epochs=7, seed=3)
    assert PredictorSettings.from_json(model.to_json()) == model
    assert TrainSettings.from_json(train.to_json()) == train


def test_fine_tuning_starts_from_the_given_predictor(trained):
    graphs = dataset(12, seed=9)
    zero_steps = TrainSettings(epochs=1, batch_size=12, lr=1e-12)  # one step that barely moves the weights
    tuned = train_predictor(graphs, SMALL, zero_steps, init=trained)
    fresh = train_predictor(graphs, SMALL, zero_steps)
    start = dict(trained.model.state_dict())
    assert all(torch.allclose(v.float(), start[k].float(), atol=1e-6) for k, v in tuned.model.state_dict().items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert not torch.equal(next(iter(fresh.model.parameters())), next(iter(trained.model.parameters())))
    with pytest.raises(InvalidSettingError, match="same PredictorSettings"):
        train_predictor(graphs, PredictorSettings(hops=2, hidden=16), zero_steps, init=trained)
