"""Search (qsd.search): exact bit-budget knapsack, batched variant scores, configurations, frontiers and insights.

The scored denoiser is a hand-built graph with subgraphs of 1, 2 and 4 layers; its option table is synthetic (6 options
per layer) and the fold predictors are tiny GNNs trained for two epochs on a few encoded configurations.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from qsd.config import METHODS, QuantConfig, QuantSpec
from qsd.errors import InfeasibleBudgetError, InvalidSettingError
from qsd.graph import DenoiserGraph, GraphNode, Subgraph
from qsd.graph.encode import encode_configs
from qsd.predictor.model import PredictorSettings
from qsd.predictor.training import TrainSettings, train_predictor
from qsd.predictor.yardsticks import RidgeYardstick
from qsd.search.active import ActiveLoop, ActiveSettings, Pool
from qsd.search.construct import budget_config, error_scores, ridge_scores, rule_config
from qsd.search.insights import insights, winners
from qsd.search.knapsack import pareto_variants, solve_budget
from qsd.search.loop import (
    Candidate,
    HeldOutStream,
    LoopSettings,
    SearchLoop,
    labelled_frontier,
    random_labels_to_match,
)
from qsd.search.pareto import dominated_fraction, frontier_fid, pareto_front
from qsd.search.predictor_choice import (
    MIN_REGION,
    PREDICTORS,
    choose,
    fit_predictors,
    option_space,
    partial_dependence_scores,
)
from qsd.search.scores import (
    CandidateVariants,
    FoldScorer,
    anchor_score,
    candidates,
    score_candidate,
    score_variants,
)

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = [QuantSpec(method, bits) for method in METHODS for bits in (4, 3)]
SETTINGS = PredictorSettings(hops=2, hidden=16, node_dim=8)


# ---------------------------------------------------------------------- fixtures
def weight(role: str, name: str, block: int, numel: int) -> GraphNode:
    return GraphNode("weight", role, name, block, None, numel)


def combine(role: str, block: int) -> GraphNode:
    return GraphNode("combine", role, role, block)


def tiny_graph() -> DenoiserGraph:
    """Embeddings, one attention block (SA subgraph of 4 layers, anchor 3 hops away), two feed-forward blocks,
    output."""
    nodes = [
        GraphNode("input", "input-x", "hidden_states", -1), GraphNode("input", "input-t", "timestep", -1),
        GraphNode("input", "input-c", "encoder_hidden_states", -1),
        weight("t-embed", "time.linear_1", -1, 64), weight("t-embed", "time.linear_2", -1, 256),  # 3, 4
        weight("c-embed", "caption.linear", -1, 128), weight("pos-embed", "pos_embed.proj", -1, 32),  # 5, 6
        combine("modulate", 0),  # 7
        *(weight(f"SA-{p}", f"blocks.0.attn.to_{p.lower()}", 0, 256) for p in "QKV"),  # 8, 9, 10
        combine("attention", 0), weight("SA-Out", "blocks.0.attn.to_out.0", 0, 256), combine("add", 0),  # 11-13
        weight("FF-1", "blocks.0.ff.net.0", 0, 512), weight("FF-2", "blocks.0.ff.net.2", 0, 512),  # 14, 15
        combine("add", 0),  # 16
        weight("FF-1", "blocks.1.ff.net.0", 1, 512), weight("FF-2", "blocks.1.ff.net.2", 1, 512),  # 17, 18
        combine("add", 1), weight("output", "proj_out", -1, 64),  # 19, 20
    ]
    edges = [(0, 6), (1, 3), (3, 4), (2, 5), (6, 7), (4, 7), (5, 7), (7, 8), (7, 9), (7, 10), (8, 11), (9, 11),
             (10, 11), (11, 12), (7, 13), (12, 13), (13, 14), (14, 15), (13, 16), (15, 16), (16, 17), (17, 18),
             (16, 19), (18, 19), (19, 20)]
    subgraphs = [
        Subgraph("t-embed", "t-embed", -1, ("time.linear_1", "time.linear_2"), 4, 1),
        Subgraph("c-embed", "c-embed", -1, ("caption.linear",), 5, 0),
        Subgraph("pos-embed", "pos-embed", -1, ("pos_embed.proj",), 6, 0),
        Subgraph("blocks.0:SA", "SA", 0, tuple(nodes[i].name for i in (8, 9, 10, 12)), 13, 3),
        Subgraph("blocks.0:FF", "FF", 0, ("blocks.0.ff.net.0", "blocks.0.ff.net.2"), 16, 2),
        Subgraph("blocks.1:FF", "FF", 1, ("blocks.1.ff.net.0", "blocks.1.ff.net.2"), 19, 2),
        Subgraph("output", "output", -1, ("proj_out",), 20, 0),
    ]
    return DenoiserGraph(nodes, edges, subgraphs, ["blocks.0", "blocks.1"], "TinyDenoiser")


def synthetic_option_table(graph: DenoiserGraph, seed: int = 0) -> pd.DataFrame:
    """A `search_space()`-shaped table: 6 options per layer, random overheads and errors (3 bits err more)."""
    rng = np.random.default_rng(seed)
    rows = [{"unit": node.name, "method": spec.method, "w_bits": spec.w_bits, "option": spec.key,
             "n_weights": node.numel, "size_bits": node.numel * spec.w_bits + int(rng.integers(16, 512)),
             "error": float(rng.uniform(0.01, 0.1) * (2 if spec.w_bits == 3 else 1))}
            for node in graph.nodes if node.kind == "weight" for spec in OPTIONS]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def graph() -> DenoiserGraph:
    return tiny_graph()


@pytest.fixture(scope="module")
def option_table(graph) -> pd.DataFrame:
    return synthetic_option_table(graph)


@pytest.fixture(scope="module")
def scorers(graph, option_table) -> list[FoldScorer]:
    """Two fold scorers (different seeds and hop qualities, one negative)."""
    rng = np.random.default_rng(0)
    configs = [QuantConfig({layer: OPTIONS[rng.integers(len(OPTIONS))] for layer in graph.unit_names})
               for _ in range(16)]
    error = option_table.set_index(["unit", "option"])["error"]
    targets = [-sum(error[layer, spec.key] for layer, spec in config.items()) for config in configs]
    data = graph.encode(configs, option_table, hops=SETTINGS.hops, targets=targets)
    return [FoldScorer(train_predictor(data, SETTINGS, TrainSettings(epochs=2, batch_size=8, seed=seed)), quality)
            for seed, quality in ((0, (0.5, -0.25, 1.0)), (1, (1.0, 0.5, 0.75)))]


@pytest.fixture(scope="module")
def tables(graph, scorers, option_table) -> dict[str, pd.DataFrame]:
    return {level: score_variants(graph, scorers, option_table, level) for level in ("node", "subgraph")}


# ---------------------------------------------------------------------- knapsack
def random_instance(rng: np.random.Generator, weight_scale: float):
    """3-4 candidates of 2-5 variants: sizes of 2-5 bits per weight, normal scores (rounded half the time: ties)."""
    variants = rng.integers(2, 6, rng.integers(3, 5))
    n_weights = float(rng.integers(10, 1000)) * weight_scale
    sizes = [rng.uniform(2, 5, v) * n_weights / len(variants) for v in variants]
    scores = [rng.normal(size=v) for v in variants]
    if rng.random() < 0.5:
        scores = [np.round(s, 1) for s in scores]
    return sizes, scores, n_weights


@pytest.mark.parametrize("weight_scale", [1.0, 1e8])
def test_knapsack_equals_brute_force(weight_scale):
    """Optimal total score and a feasible choice at budgets from the smallest to the largest average bits; at
    `weight_scale` 1e8 the instances have 1e9-1e11 weights, as real denoisers do."""
    rng = np.random.default_rng(0)
    for _ in range(40):
        sizes, scores, n_weights = random_instance(rng, weight_scale)
        combos = list(itertools.product(*(range(len(s)) for s in sizes)))
        total_bits = np.array([sum(s[c] for s, c in zip(sizes, combo, strict=True)) for combo in combos])
        total_score = np.array([sum(s[c] for s, c in zip(scores, combo, strict=True)) for combo in combos])
        lo, hi = total_bits.min() / n_weights, total_bits.max() / n_weights
        for budget in (lo, hi, *rng.uniform(lo, hi, 3)):
            capacity = budget * n_weights * (1 + 1e-9)
            solution = solve_budget(sizes, scores, n_weights, budget)
            chosen_bits = sum(s[c] for s, c in zip(sizes, solution.choice, strict=True))
            assert chosen_bits <= capacity
            assert solution.avg_bits == pytest.approx(chosen_bits / n_weights, rel=1e-12)
            assert solution.score == pytest.approx(sum(s[c] for s, c in zip(scores, solution.choice, strict=True)))
            assert solution.score == pytest.approx(total_score[total_bits <= capacity].max(), abs=1e-9)


def test_knapsack_refuses_budgets_below_the_smallest_and_bad_input():
    sizes, scores = [np.array([300.0, 400.0]), np.array([200.0, 500.0])], [np.array([0.0, 1.0]), np.array([1.0, 2.0])]
    assert solve_budget(sizes, scores, 100, 5.0).choice == (0, 0)
    with pytest.raises(InfeasibleBudgetError, match="4.999"):
        solve_budget(sizes, scores, 100, 4.999)
    with pytest.raises(InvalidSettingError):
        solve_budget(sizes, scores[:1], 100, 6.0)
    with pytest.raises(InvalidSettingError):
        solve_budget([np.array([300.0, np.nan])], [np.array([0.0, 1.0])], 100, 6.0)


def test_pareto_variants_keep_exactly_the_non_dominated():
    np.testing.assert_array_equal(pareto_variants(np.array([3, 1, 2, 2, 1, 4.]), np.array([5, 1, 3, 4, 1, 4.])),
                                  [1, 3, 0])  # 4 ties 1 (first kept), 2 loses to 3, 5 loses to 0
    rng = np.random.default_rng(1)
    for _ in range(200):
        sizes, scores = rng.integers(1, 5, 6).astype(float), rng.integers(0, 4, 6).astype(float)
        kept = pareto_variants(sizes, scores)
        dominated = {i for i in range(6) for j in range(6) if j != i and sizes[j] <= sizes[i]
                     and scores[j] >= scores[i] and (sizes[j] < sizes[i] or scores[j] > scores[i] or j < i)}
        assert sorted(kept) == sorted(set(range(6)) - dominated)
        assert (np.diff(sizes[kept]) > 0).all()


# ---------------------------------------------------------------------- scores
@pytest.mark.parametrize("level, name, stride, batch", [
    ("subgraph", "blocks.0:FF", 1, 5), ("subgraph", "t-embed", 1, 5), ("subgraph", "blocks.0:SA", 37, 250),
    ("node", "proj_out", 1, 4),
])
def test_batched_scores_equal_one_by_one(graph, scorers, option_table, level, name, stride, batch):
    """Uneven batches of `batch` variants against every `stride`-th variant encoded and scored alone (the SA
    subgraph's hop, 3, is capped at the predictor's 2)."""
    candidate = next(c for c in candidates(graph, level) if c.name == name)
    variants = CandidateVariants(graph, candidate, option_table, SETTINGS.hops)
    assert len(variants) == len(OPTIONS) ** len(candidate.layers)
    batched = score_candidate(scorers, variants, batch_variants=batch)
    alone = [anchor_score(scorers, encode_configs(variants.local, [variants.variant(i)], option_table,
                                                  SETTINGS.hops)[0],
                          torch.tensor([variants.anchor]), candidate.hop)[0] for i in range(0, len(variants), stride)]
    np.testing.assert_allclose(batched[::stride], alone, rtol=0, atol=1e-5)
    np.testing.assert_allclose(score_candidate(scorers, variants, batch_variants=len(variants)), batched, rtol=0,
                               atol=1e-5)
    assert np.ptp(batched) > 1e-3  # the variants' features reach the anchor


@pytest.mark.parametrize("level", ["node", "subgraph"])
def test_score_tables_are_reproducible_and_complete(graph, scorers, option_table, tables, level):
    table = tables[level]
    pd.testing.assert_frame_equal(score_variants(graph, scorers, option_table, level), table)
    expected = ({layer: 1 for layer in graph.unit_names} if level == "node"
                else {s.name: len(s.layers) for s in graph.subgraphs})
    assert table.groupby("unit", sort=False).size().to_dict() == {u: 6 ** k for u, k in expected.items()}
    assert not table.duplicated(["unit", "options"]).any()
    option = {(r.unit, r.option): np.array([r.size_bits, r.n_weights, r.error]) for r in option_table.itertuples()}
    for row in table.itertuples():
        pairs = zip(row.layers.split("|"), row.options.split("|"), strict=True)
        np.testing.assert_allclose([row.size_bits, row.n_weights, row.error], sum(option[p] for p in pairs),
                                   rtol=1e-12)
    assert np.isfinite(table["score"]).all()


def test_scoring_settings_are_checked(graph, scorers, option_table):
    with pytest.raises(InvalidSettingError, match="level"):
        candidates(graph, "block")
    with pytest.raises(InvalidSettingError, match="hop qualities"):
        FoldScorer(scorers[0].predictor, (1.0, 1.0))
    with pytest.raises(InvalidSettingError, match="at least one"):
        score_variants(graph, [], option_table, "node")


def test_subgraphs_whose_paths_cross_another_subgraphs_layer_are_scored(scorers):
    """Subgraphs {a, c} and {b} with a → b → add ← c (as a U-Net's skip half, whose path to its anchor crosses
    conv2)."""
    nodes = [GraphNode("input", "input-x", "hidden_states", -1), weight("res-conv", "a", 0, 64),
             weight("res-conv", "b", 0, 64), weight("skip", "c", 0, 64), combine("add", 0)]
    subgraphs = [Subgraph("ac", "res", 0, ("a", "c"), 4, 2), Subgraph("b", "res", 0, ("b",), 2, 0)]
    graph = DenoiserGraph(nodes, [(0, 1), (1, 2), (2, 4), (0, 3), (3, 4)], subgraphs, ["block"], "Tiny")
    table = score_variants(graph, scorers, synthetic_option_table(graph), "subgraph")
    assert table.groupby("unit").size().to_dict() == {"ac": 36, "b": 6}


# ---------------------------------------------------------------------- construct
def score_rows(name: str, layers: tuple[str, ...], variants: dict[str, float], type_: str = "other", block: int = -1,
               roles: tuple[str, ...] | None = None, weights: int = 100) -> list[dict]:
    """Score-table rows of one candidate (`name`: its `unit` column): `variants` maps 'option|option…' to its score;
    each layer has `weights` weights, size = weights × bits, error = −score."""
    return [{"unit": name, "type": type_, "block": block, "layers": "|".join(layers),
             "roles": "|".join(roles or ("linear",) * len(layers)), "options": key,
             "size_bits": sum(weights * QuantSpec.parse(k).w_bits for k in key.split("|")),
             "n_weights": weights * len(layers), "error": -score, "score": score} for key, score in variants.items()]


def test_rule_config_takes_every_candidates_top_variant(graph, tables):
    table = tables["subgraph"]
    config = rule_config(table)
    assert sorted(config) == sorted(graph.unit_names)
    for _, rows in table.groupby("unit"):
        chosen = "|".join(config[layer].key for layer in rows["layers"].iloc[0].split("|"))
        assert rows.loc[rows["options"] == chosen, "score"].item() == rows["score"].max()


@pytest.mark.parametrize("level", ["node", "subgraph"])
def test_budget_config_spends_at_most_the_budget(tables, option_table, level):
    table = tables[level]
    per_candidate = table.groupby("unit")["size_bits"]
    n = table.groupby("unit")["n_weights"].first().sum()
    lo, hi = per_candidate.min().sum() / n, per_candidate.max().sum() / n
    sizes = option_table.set_index(["unit", "option"])["size_bits"]
    for budget in np.linspace(lo, hi, 4):
        built = budget_config(table, budget)
        avg_bits = sum(sizes[layer, spec.key] for layer, spec in built.config.items()) / n
        assert avg_bits <= budget * (1 + 1e-12) and avg_bits == pytest.approx(built.solution.avg_bits, rel=1e-12)
        assert built.solution.budget == budget
    assert built.solution.score == pytest.approx(table.groupby("unit")["score"].max().sum())  # B = max: the rule's


def test_budget_config_says_why_bits_stay_unused():
    variants = {"uaq-3": 1.0, "uaq-4": 0.0}  # the scores prefer the smaller variant
    table = pd.DataFrame(score_rows("u", ("a",), variants) + score_rows("v", ("b",), variants))
    assert budget_config(table, 3.0).note == ""
    generous = budget_config(table, 4.0)
    assert generous.solution.avg_bits == 3.0 and generous.note.startswith("1.000 bits of the budget unused")


def test_yardstick_scores(tables, option_table):
    node = tables["node"]
    np.testing.assert_array_equal(error_scores(node)["score"], -node["error"])
    pd.testing.assert_frame_equal(error_scores(node).drop(columns="score"), node.drop(columns="score"))
    coefficients = option_table[["unit", "option"]].assign(coefficient=np.arange(len(option_table), dtype=float))
    coefficients = pd.concat([coefficients, pd.DataFrame({"unit": ["proj_out"], "option": ["float"],
                                                          "coefficient": [99.0]})])
    expected = node.merge(coefficients, left_on=["layers", "options"], right_on=["unit", "option"])["coefficient"]
    np.testing.assert_array_equal(ridge_scores(node, coefficients)["score"], expected)
    with pytest.raises(InvalidSettingError, match="lack 1"):
        ridge_scores(node, coefficients.iloc[1:])


def test_score_tables_that_break_the_contract_are_refused():
    table = pd.DataFrame(score_rows("u", ("a", "b"), {"uaq-4|uaq-4": 1.0}) + score_rows("v", ("b",), {"uaq-3": 0.0}))
    with pytest.raises(InvalidSettingError, match="two candidates"):
        rule_config(table)
    with pytest.raises(InvalidSettingError, match="two candidates"):
        budget_config(table, 4.0)
    with pytest.raises(InvalidSettingError, match="column"):
        rule_config(table.drop(columns="n_weights"))
    with pytest.raises(InvalidSettingError, match="finite"):
        rule_config(table.assign(score=[1.0, np.nan]))


# ---------------------------------------------------------------------- pareto
def test_pareto_front_frontier_and_dominated_fraction():
    bits, fid = np.array([4, 3, 3, 5, 2, 4, 6.]), np.array([10, 12, 11, 9, 20, 10, 9.])
    front = pareto_front(bits, fid)
    np.testing.assert_array_equal(front, [4, 2, 0, 3])  # (3, 12) and (6, 9) dominated, the second (4, 10) a copy
    np.testing.assert_array_equal(frontier_fid(bits[front], fid[front], [1, 2, 2.5, 3, 4.9, 5, 7]),
                                  [np.inf, 20, 20, 11, 10, 9, 9])
    points_bits, points_fid = np.array([1, 2.5, 3, 4.5, 6]), np.array([5, 25, 11, 9.5, 9])
    assert dominated_fraction(bits[front], fid[front], points_bits, points_fid) == (0.75, 4)  # (1, 5) not judged
    share, count = dominated_fraction(bits[front], fid[front], [1.0], [1.0])
    assert np.isnan(share) and count == 0


# ---------------------------------------------------------------------- insights
NODE_SCORES = {  # layer: (role, scores in OPTIONS order uaq-4, uaq-3, kmeans_c-4, kmeans_c-3, kmeans_a-4, kmeans_a-3)
    "a": ("SA-Q", (0.1, 0.0, 0.5, 0.9, 0.2, 0.3)),  # top kmeans_c-3, spread 0.9
    "b": ("SA-Q", (0.4, 0.2, 0.6, 0.1, 1.4, 0.3)),  # top kmeans_a-4, spread 1.3
    "c": ("FF-1", (2.0, 1.9, 1.95, 1.85, 1.8, 1.7)),  # top uaq-4, spread 0.3
}
SUBGRAPH_SPREADS = {("t-embed", "t-embed", -1): 3.0, ("c-embed", "c-embed", -1): 1.0,
                **{(f"blocks.{b}:SA", "SA", b): s for b, s in enumerate((0.5, 1.0, 2.0))},
                **{(f"blocks.{b}:FF", "FF", b): s for b, s in enumerate((0.1, 0.2, 0.3))}}


def insight_tables(drop: tuple[str, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    node = pd.DataFrame([row for layer, (role, scores) in NODE_SCORES.items()
                         for row in score_rows(layer, (layer,), dict(zip([o.key for o in OPTIONS], scores,
                                                                         strict=True)), roles=(role,))])
    subgraphs = pd.DataFrame([row for (name, type_, block), spread in SUBGRAPH_SPREADS.items() if name not in drop
                              for row in score_rows(name, ("x",), {"uaq-4": 0.0, "uaq-3": spread}, type_, block)])
    return node, subgraphs


def test_insights_report_the_statistics_of_the_tables():
    found = {i.topic: i for i in insights(*insight_tables())}
    assert list(found) == ["t-embed vs c-embed", "op types", "unit types", "methods", "depth", "error proxy"]
    assert found["t-embed vs c-embed"].statistics == {"t_embed_spread": 3.0, "c_embed_spread": 1.0}
    assert "more sensitive" in found["t-embed vs c-embed"].text
    assert found["op types"].statistics["op_spread"] == {"SA-Q": 1.1, "FF-1": 0.3}
    assert found["unit types"].statistics["unit_spread"] == {"t-embed": 3.0, "SA": 1.1667, "c-embed": 1.0, "FF": 0.2}
    assert found["methods"].statistics == {"method_share": dict.fromkeys(("kmeans_c", "kmeans_a", "uaq"), 0.3333),
                                           "low_bit_share": 0.3333}
    assert "K-Means preferred" in found["methods"].text
    assert found["depth"].statistics == {"block_spread_spearman": pytest.approx(1.0), "most_sensitive_block": 2}
    assert found["error proxy"].statistics["score_vs_error_spearman"] == pytest.approx(1.0)


def test_insights_leave_out_what_the_tables_cannot_support():
    topics = [i.topic for i in insights(*insight_tables(drop=("c-embed", "blocks.2:SA", "blocks.2:FF")))]
    assert "t-embed vs c-embed" not in topics and "depth" not in topics
    node, subgraphs = insight_tables()
    less = insights(node, subgraphs.assign(score=np.where(subgraphs["type"] == "t-embed", subgraphs["score"] / 10,
                                                          subgraphs["score"])))
    assert less[0].statistics["t_embed_spread"] == pytest.approx(0.3) and "less sensitive" in less[0].text


def test_winners_are_the_top_variants_options():
    table = pd.DataFrame(score_rows("u", ("q", "k"), {"uaq-4|uaq-4": 0.0, "kmeans_a-3|uaq-4": 2.0, "uaq-3|uaq-3": 1.0},
                                    roles=("SA-Q", "SA-K"))
                         + score_rows("v", ("f",), {"kmeans_c-4": -1.0, "uaq-3": -2.0}, roles=("FF-1",)))
    expected = pd.DataFrame({"layer": ["q", "k", "f"], "role": ["SA-Q", "SA-K", "FF-1"],
                             "option": ["kmeans_a-3", "uaq-4", "kmeans_c-4"], "method": ["kmeans_a", "uaq", "kmeans_c"],
                             "bits": [3, 4, 4]})
    pd.testing.assert_frame_equal(winners(table), expected, check_dtype=False)


# ---------------------------------------------------------------------- active labelling
def test_active_loop_grows_its_labels_and_measures_both_arms_alike(graph, option_table, one_thread):
    """Both arms start from the same labels (identical round-0 frontier and held-out Spearman); each round the active
    arm adds `per_round` new configurations, the random arm the next ones of its stream."""
    error = option_table.set_index(["unit", "option"])["error"]

    def fid(config: QuantConfig) -> float:
        return float(np.exp(5 * sum(error[layer, spec.key] for layer, spec in config.items())))

    calls = []

    def label(configs, names):
        calls.append(list(names))
        return np.array([fid(c) for c in configs])

    rng = np.random.default_rng(1)
    draw = [QuantConfig({layer: OPTIONS[rng.integers(len(OPTIONS))] for layer in graph.unit_names}) for _ in range(26)]
    weights = option_table.groupby("unit")["n_weights"].first().sum()
    bits = option_table.groupby("unit")["size_bits"].agg(["min", "max"]).sum() / weights
    settings = ActiveSettings(initial=4, rounds=2, per_round=2, budgets=(float(bits.mean()),), folds=2,
                              predictor=PredictorSettings(hops=SETTINGS.hops), training=TrainSettings(epochs=1))
    pool = Pool(draw[:8], np.array([fid(c) for c in draw[:8]]), draw[8:14], np.array([fid(c) for c in draw[8:14]]),
                draw[14:])
    result = ActiveLoop(graph, option_table, label, settings).run(pool)
    table = result.checkpoints
    assert table.groupby("arm")["labels"].apply(list).to_dict() == {"active-arm": [4, 6, 8], "random-arm": [4, 6, 8]}
    first = table[table["round"] == 0].set_index("arm")
    columns = ["fid", "heldout_spearman"]
    assert first.loc["active-arm", columns].tolist() == first.loc["random-arm", columns].tolist()
    active = result.labelled
    assert len(active) == 8 and len({c.fingerprint for _, c, _ in active}) == 8
    assert all(f == pytest.approx(fid(c)) for _, c, f in active)
    assert {name.split(" ")[0] for batch in calls for name in batch} == {"random-arm", "active-arm"}
    with pytest.raises(InvalidSettingError, match="needs 8"):
        ActiveLoop(graph, option_table, label, settings).run(Pool(draw[:5], np.ones(5), [], np.ones(0), []))


# ---------------------------------------------------------------------- the search loop
def test_labelled_frontier_and_random_labels_to_match_by_hand():
    """Per budget the lowest FID at ≤ that many bits (None where nothing fits); the random labels needed are the
    leading configurations of the stream up to the first one that fits the budget and reaches the target."""
    bits, fids = [3.9, 3.2, 3.6, 3.3, 4.4], [50.0, 90.0, 40.0, 70.0, 10.0]
    assert labelled_frontier(bits, fids, [3.1, 3.2, 3.5, 4.0, 4.5]) == [None, 1, 3, 2, 4]
    assert random_labels_to_match(bits, fids, [3.5, 4.0, 4.0], [80.0, 45.0, 30.0]) == [4, 3, None]


def loop_fixture(graph, option_table):
    """A synthetic labeller (FID grows with the summed option error), its call log and 12 random starting labels."""
    error = option_table.set_index(["unit", "option"])["error"]
    size = option_table.set_index(["unit", "option"])["size_bits"]
    weights = option_table.groupby("unit")["n_weights"].first().sum()

    def fid(config: QuantConfig) -> float:
        return float(np.exp(5 * sum(error[layer, spec.key] for layer, spec in config.items())))

    def avg_bits(config: QuantConfig) -> float:
        return float(sum(size[layer, spec.key] for layer, spec in config.items()) / weights)

    calls: list[list[str]] = []

    def label(configs, names):
        calls.append([c.fingerprint for c in configs])
        return np.array([fid(c) for c in configs])

    rng = np.random.default_rng(3)
    draw = [QuantConfig({layer: OPTIONS[rng.integers(len(OPTIONS))] for layer in graph.unit_names}) for _ in range(12)]
    start = [Candidate(f"random {i}", c, avg_bits(c), fid(c), "random") for i, c in enumerate(draw)]
    bits = option_table.groupby("unit")["size_bits"].agg(["min", "max"]).sum() / weights
    budgets = (float(bits["min"] + 0.3 * (bits["max"] - bits["min"])), float(bits.mean()))
    return label, calls, start, budgets, fid, avg_bits


def test_search_loop_labels_only_what_is_new_and_its_frontier_is_never_worse(graph, option_table):
    """Every round fits once per seed and builds every budget; only configurations no earlier round (or the start)
    labelled are labelled, each once; after every round the frontier is the best labelled configuration at ≤ each
    budget, so it never gets worse and is never beaten by any candidate at equal or fewer bits."""
    label, calls, start, budgets, fid, avg_bits = loop_fixture(graph, option_table)
    settings = LoopSettings(budgets=budgets, rounds=2, seeds=2, folds=2, stop_fid=0.0,
                            predictor=PredictorSettings(hops=SETTINGS.hops), training=TrainSettings(epochs=1))
    result = SearchLoop(graph, option_table, label, settings).run(start)
    proposals, rounds = result.proposals, result.rounds
    ran = int(rounds["round"].max())
    assert len(proposals) == ran * settings.seeds * len(budgets)
    labelled = [fp for batch in calls for fp in batch]
    assert len(labelled) == len(set(labelled)) == proposals["new"].sum() == len(result.candidates) - len(start)
    assert not set(labelled) & {c.config.fingerprint for c in start}
    assert all(c.fid == pytest.approx(fid(c.config)) and c.avg_bits == pytest.approx(avg_bits(c.config))
               for c in result.candidates)
    for _, rows in rounds.groupby("budget"):
        assert (np.diff(rows.sort_values("round")["fid"]) <= 0).all()
    final = result.frontier().set_index("budget")
    for budget in final.index:
        fits = [c.fid for c in result.candidates if c.avg_bits <= budget + 1e-9]
        assert final.loc[budget, "fid"] == min(fits) and final.loc[budget, "avg_bits"] <= budget + 1e-9
    spread = result.seed_spread()
    assert spread["fids"].map(len).eq(settings.seeds).all()


def test_search_loop_stops_by_its_rule(graph, option_table):
    """No gain above `stop_fid` ends the loop after that round (and says so); rounds = 0 leaves the starting
    frontier; bad settings are refused."""
    label, calls, start, budgets, *_ = loop_fixture(graph, option_table)
    common = {"budgets": budgets, "seeds": 1, "folds": 2, "predictor": PredictorSettings(hops=SETTINGS.hops),
              "training": TrainSettings(epochs=1)}
    result = SearchLoop(graph, option_table, label, LoopSettings(rounds=3, stop_fid=1e9, **common)).run(start)
    assert result.rounds["round"].max() == 1 and "after round 1" in result.stopped
    none = SearchLoop(graph, option_table, label, LoopSettings(rounds=0, **common)).run(start)
    assert none.rounds["round"].unique().tolist() == [0] and none.proposals.empty
    assert none.frontier()["name"].str.startswith("random").all()
    with pytest.raises(InvalidSettingError, match="seeds ≥ 1"):
        LoopSettings(budgets=budgets, seeds=0)
    with pytest.raises(InvalidSettingError, match="at least folds = 2"):
        SearchLoop(graph, option_table, label, LoopSettings(rounds=1, **common)).run(start[:1])


# ---------------------------------------------------------------------- which predictor guides the search
def test_choose_takes_the_best_region_spearman_and_names_what_it_refuses():
    """auto: the best budget-region Spearman, ties and NaN to the earlier predictor, the whole set's Spearman when
    the region is too small; a named predictor is taken as it is; an unknown one is refused."""
    table = pd.DataFrame({"predictor": list(PREDICTORS), "spearman": [0.9, 0.1, 0.2, 0.3],
                          "spearman_region": [0.5, 0.7, np.nan, 0.7], "mae_region": 1.0, "n": 40,
                          "n_region": MIN_REGION})
    assert choose(table) == "ridge"
    assert choose(table.assign(n_region=MIN_REGION - 1)) == "gnn"
    assert choose(table, "mlp") == "mlp"
    with pytest.raises(InvalidSettingError, match="not one of"):
        choose(table, "xgboost")


def test_partial_dependence_of_ridge_is_its_coefficients(graph, option_table):
    """Ridge is additive: its partial-dependence scores equal its coefficients up to a constant per unit, so the
    knapsack builds the same configuration from either table."""
    rng = np.random.default_rng(5)
    configs = [QuantConfig({layer: OPTIONS[rng.integers(len(OPTIONS))] for layer in graph.unit_names})
               for _ in range(40)]
    units, options = option_space(option_table)
    ridge = RidgeYardstick(units, options).fit(configs, rng.normal(size=len(configs)))
    table = partial_dependence_scores(option_table, ridge.score, configs[:5])
    coefficients = ridge.coefficients().set_index(["unit", "option"])["coefficient"]
    keys = list(zip(table["unit"], table["options"], strict=True))
    offset = table["score"].to_numpy() - coefficients.loc[keys].to_numpy()
    assert pd.Series(offset).groupby(table["unit"].to_numpy()).std().max() < 1e-9
    node = ridge_scores(table.drop(columns="score"), ridge.coefficients())
    budget = float(table.groupby("unit")["size_bits"].mean().sum() / table.groupby("unit")["n_weights"].first().sum())
    assert budget_config(table, budget).config == budget_config(node, budget).config


def test_search_loop_builds_from_the_predictor_the_validation_chose(graph, option_table):
    """Every round's proposals come from the predictor with the best cross-validated numbers (or the one named);
    each predictor has an out-of-fold prediction of every label; the test stream is scored and chooses nothing
    (shuffling its FIDs changes no proposal)."""
    label, calls, start, budgets, fid, avg_bits = loop_fixture(graph, option_table)
    rng = np.random.default_rng(11)
    test_configs = [QuantConfig({layer: OPTIONS[rng.integers(len(OPTIONS))] for layer in graph.unit_names})
                    for _ in range(10)]
    test = HeldOutStream(test_configs, np.array([fid(c) for c in test_configs]),
                      np.array([avg_bits(c) for c in test_configs]))
    common = {"budgets": budgets, "rounds": 1, "seeds": 2, "folds": 3, "stop_fid": 0.0,
              "predictor": PredictorSettings(hops=SETTINGS.hops), "training": TrainSettings(epochs=1)}
    result = SearchLoop(graph, option_table, label, LoopSettings(**common), test=test).run(start)
    choices = result.choices
    assert set(choices["set"]) == {"cv", "test"} and set(choices["predictor"]) == set(PREDICTORS)
    for (round_, seed), rows in choices[choices["set"] == "cv"].groupby(["round", "seed"]):
        chosen = rows.loc[rows["chosen"], "predictor"].tolist()
        assert chosen == [choose(rows)]
        built = result.proposals[(result.proposals["round"] == round_) & (result.proposals["seed"] == seed)]
        assert set(built["predictor"]) == set(chosen)
    assert (choices.loc[choices["set"] == "test", "n"] == len(test_configs)).all()
    shuffled = HeldOutStream(test_configs, rng.permutation(test.fids), test.avg_bits)
    label2, *_ = loop_fixture(graph, option_table)
    again = SearchLoop(graph, option_table, label2, LoopSettings(**common), test=shuffled).run(start)
    assert again.proposals["fingerprint"].tolist() == result.proposals["fingerprint"].tolist()
    named = SearchLoop(graph, option_table, label2, LoopSettings(**common | {"choice": "ridge"})).run(start)
    assert set(named.proposals["predictor"]) == {"ridge"} and set(named.choices["set"]) == {"cv"}
    fitted = fit_predictors(graph, option_table, [c.config for c in start], np.array([c.fid for c in start]), 3,
                            common["predictor"], common["training"], 0)
    assert all(v.shape == (len(start),) and np.isfinite(v).all() for v in fitted.held_out.values())
    assert np.allclose(fitted.held_out["ensemble"],
                       np.mean([fitted.held_out[m] for m in ("gnn", "ridge", "mlp")], axis=0))
    with pytest.raises(InvalidSettingError, match="predictor 'best'"):
        LoopSettings(budgets=budgets, choice="best")
