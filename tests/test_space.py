"""The extended search space (float and 8-bit UAQ as choices) and the budget-stratified label design, through the
multiquantizer, the packed export, the store protocol and the knapsack (issue 31 items 1 and 2)."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from test_search import SETTINGS, synthetic_option_table, tiny_graph
from torch import nn

from qsd.config import FLOAT_KEY, QuantConfig, QuantSpec, option_key
from qsd.design import StratifiedDesign, config_sampler, stream_generator
from qsd.errors import InvalidSettingError, ProtocolMismatchError, QsdError
from qsd.graph.encode import encode_configs
from qsd.graph.features import METHOD_CODES
from qsd.models.random_init import random_denoiser
from qsd.multiquant import MultiQuantizer
from qsd.packed import QLinear, export, load_quantized
from qsd.predictor.training import TrainSettings, train_predictor
from qsd.search.construct import budget_config, error_scores
from qsd.search.insights import winners
from qsd.search.scores import (
    SEPARATOR,
    CandidateVariants,
    FoldScorer,
    anchor_score,
    candidates,
    score_candidate,
    score_variants,
)
from qsd.space import SPACES, search_space
from qsd.store import LabelStore


@pytest.fixture(scope="module")
def extended():
    model = random_denoiser("pixart", seed=1).eval()
    space = search_space("extended")
    return MultiQuantizer.build(model, space.options(), progress=False, float_option=space.float_option)


def test_spaces_and_their_choices():
    paper, ext = search_space("paper"), search_space("extended")
    assert paper.options() == tuple(QuantSpec(m, b) for m in ("uaq", "kmeans_c", "kmeans_a") for b in (4, 3))
    assert not paper.float_option and paper.default_design == "paper"
    assert set(ext.options()) - set(paper.options()) == {QuantSpec("uaq", 8)}
    assert ext.float_option and ext.default_design == "stratified"
    with pytest.raises(InvalidSettingError, match="extended"):
        search_space("wide")
    assert set(SPACES) == {"paper", "extended"}


def test_extended_space_round_trips_through_the_multiquantizer(extended, tmp_path):
    units = extended.unit_names
    table = extended.search_space()
    floats = table[table["option"] == FLOAT_KEY]
    assert list(floats["unit"]) == units and (floats["error"] == 0).all()
    assert (floats["size_bits"] == 16 * floats["n_weights"]).all()
    assert [option_key(c) for c in extended.choices][-2:] == ["uaq-8", FLOAT_KEY]
    eight = table[table["option"] == "uaq-8"].set_index("unit")["error"]
    four = table[table["option"] == "uaq-4"].set_index("unit")["error"]
    assert (eight < four / 50).all(), "8-bit UAQ is far more accurate than 4-bit"

    config = extended.uniform(QuantSpec("kmeans_a", 3)).with_layers({units[0]: None, units[1]: QuantSpec("uaq", 8)})
    sizes = table.set_index(["unit", "option"])["size_bits"]
    expected = sum(sizes[u, option_key(s)] for u, s in config.items()) / floats["n_weights"].sum()
    assert extended.cost(config)["avg_bits"] == pytest.approx(expected)

    loaded = MultiQuantizer.load(extended.save(tmp_path / "mq.safetensors"), extended.model)
    assert loaded.float_option and loaded.choices == extended.choices
    pd.testing.assert_frame_equal(loaded.search_space(), table)
    with pytest.raises(QsdError, match="stratified"):
        extended.sample(0)  # the paper's scheme cannot draw from this space


def test_export_keeps_float_units_float_and_packs_eight_bits(extended, tmp_path):
    model, units = extended.model, extended.unit_names
    modules = dict(model.named_modules())
    linear = [u for u in units if isinstance(modules.get(u), nn.Linear)]
    config = extended.uniform(QuantSpec("uaq", 3)).with_layers({linear[0]: None, linear[1]: QuantSpec("uaq", 8)})
    float_weight = modules[linear[0]].weight.detach().clone()
    extended.apply(config)
    try:
        packed = load_quantized(export(model, config, tmp_path / "p.safetensors", multiquantizer=extended))
        assert QuantConfig.from_model(packed) == config
        packed_modules = dict(packed.named_modules())
        kept = packed_modules[linear[0]]
        assert not isinstance(kept, QLinear) and torch.equal(kept.weight, float_weight)
        assert isinstance(packed_modules[linear[1]], QLinear)
        x = torch.randn(40, modules[linear[1]].in_features)
        assert torch.equal(packed_modules[linear[1]](x), modules[linear[1]](x))  # decode + dense GEMM: exact
    finally:
        extended.restore()


def test_a_dataset_of_one_space_never_mixes_with_the_other(extended, tmp_path):
    paper = MultiQuantizer.build(extended.model, search_space("paper").options(), progress=False)
    record = {"model_id": "x", "options": [option_key(c) for c in paper.choices]}
    with LabelStore(tmp_path / "labels.sqlite", record):
        pass
    with pytest.raises(ProtocolMismatchError, match="options"):
        LabelStore(tmp_path / "labels.sqlite", record | {"options": [option_key(c) for c in extended.choices]})


def node_table(mq: MultiQuantizer, units: list[str], seed: int) -> pd.DataFrame:
    """A node-level score table over `units`' choices with random scores (the knapsack's input shape)."""
    table = mq.search_space()
    table = table[table["unit"].isin(units)]
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"unit": table["unit"], "layers": table["unit"], "options": table["option"],
                         "size_bits": table["size_bits"], "n_weights": table["n_weights"], "error": table["error"],
                         "score": rng.normal(size=len(table))}).reset_index(drop=True)


@pytest.mark.parametrize("budget", [3.5, 5.0, 9.0])
def test_knapsack_over_the_extended_space_equals_brute_force(extended, budget):
    units = extended.unit_names[:4]
    table = node_table(extended, units, seed=int(budget * 10))
    table.loc[table["options"] == FLOAT_KEY, "score"] += 3.0  # float wins wherever the budget lets it
    built = budget_config(table, budget)
    groups = [table[table["unit"] == u].reset_index(drop=True) for u in units]
    n = sum(g["n_weights"].iloc[0] for g in groups)
    best = max((sum(g.loc[c, "score"] for g, c in zip(groups, combo, strict=True)), combo)
               for combo in itertools.product(*[range(len(g)) for g in groups])
               if sum(g.loc[c, "size_bits"] for g, c in zip(groups, combo, strict=True)) <= budget * n)
    assert built.solution.score == pytest.approx(best[0])
    chosen = {u: groups[i].loc[c, "options"] for i, (u, c) in enumerate(zip(units, best[1], strict=True))}
    assert {u: option_key(s) for u, s in built.config.items()} == chosen
    if budget == 9.0:
        assert FLOAT_KEY in chosen.values()  # the knapsack does see the float choice


def test_the_error_knapsack_keeps_layers_float_when_the_budget_allows(extended):
    """Float has zero error, so with bits to spare −error picks it: the float choice reaches the knapsack."""
    units = extended.unit_names
    table = error_scores(node_table(extended, units, seed=0))
    config = budget_config(table, 15.9).config
    assert sum(s is None for s in config.values()) >= len(units) // 2


def test_insights_read_float_choices(extended):
    units = extended.unit_names[:3]
    table = node_table(extended, units, seed=1)
    table.loc[table["options"] == FLOAT_KEY, "score"] = 10.0
    table["roles"] = "linear"
    chosen = winners(table)
    assert list(chosen["method"]) == [FLOAT_KEY] * 3 and list(chosen["bits"]) == [16] * 3
    assert "float" in METHOD_CODES


@pytest.mark.parametrize("space", ["paper", "extended"])
def test_the_stratified_design_covers_its_bit_range(space, extended):
    mq = extended if space == "extended" else MultiQuantizer.build(extended.model, progress=False)
    design = StratifiedDesign(mq, (3.0, 4.5))
    low, high = design.bits_range
    assert low >= 3.0 and high == 4.5
    configs = [design.config(np.random.default_rng([0, i]), i) for i in range(60)]
    bits = np.array([mq.cost(c)["avg_bits"] for c in configs])
    targets = np.array([design.target(i) for i in range(60)])
    assert np.abs(bits - targets).max() <= 0.02 + 1e-9
    counts, _ = np.histogram(bits, bins=6, range=(low, high))
    assert counts.min() >= 7, f"average bits not spread evenly over {low:.2f}-{high:.2f}: {counts}"
    uaq_share = [np.mean([s is not None and s.method == "uaq" for s in c.values()]) for c in configs]
    assert max(uaq_share) >= 0.5, "some configurations are UAQ-heavy"
    floats = [sum(s is None for s in c.values()) for c in configs]
    assert (max(floats) > 0) == (space == "extended")
    sampler = config_sampler("stratified", mq)
    assert sampler(np.random.default_rng([0, 7]), 7) == configs[7], "configuration i depends only on (seed, i)"


def test_the_stratified_design_refuses_a_range_the_space_cannot_reach(extended):
    with pytest.raises(InvalidSettingError, match="outside"):
        StratifiedDesign(extended, (1.0, 2.0))
    with pytest.raises(InvalidSettingError, match="low < high"):
        StratifiedDesign(extended, (4.0, 3.0))
    with pytest.raises(InvalidSettingError, match="design"):
        config_sampler("latin", extended)


def test_float_and_eight_bit_variants_score_as_their_configurations_encode():
    """The score table's batched variants (feature rows looked up in the option table) equal each variant's
    configuration encoded alone (a float unit encoded from None), for every choice of the extended space."""
    graph = tiny_graph()
    table = synthetic_option_table(graph)
    extra = [{"unit": n.name, "method": method, "w_bits": bits, "option": key, "n_weights": n.numel,
              "size_bits": n.numel * bits + (64 if key == "uaq-8" else 0), "error": error}
             for n in graph.nodes if n.kind == "weight"
             for method, bits, key, error in (("uaq", 8, "uaq-8", 1e-4), (FLOAT_KEY, 16, FLOAT_KEY, 0.0))]
    table = pd.concat([table, pd.DataFrame(extra)], ignore_index=True)
    rng = np.random.default_rng(0)
    choices = [*[QuantSpec.parse(k) for k in table["option"].unique() if k != FLOAT_KEY], None]
    configs = [QuantConfig({layer: choices[rng.integers(len(choices))] for layer in graph.unit_names})
               for _ in range(12)]
    data = graph.encode(configs, table, hops=SETTINGS.hops, targets=list(rng.normal(size=12)))
    scorers = [FoldScorer(train_predictor(data, SETTINGS, TrainSettings(epochs=2, batch_size=6, seed=0)),
                          (0.5, 1.0, 0.75))]
    candidate = next(c for c in candidates(graph, "subgraph") if c.name == "t-embed")
    variants = CandidateVariants(graph, candidate, table, SETTINGS.hops)
    assert len(variants) == 8 ** 2 and None in variants.specs[0]
    batched = score_candidate(scorers, variants, batch_variants=7)
    alone = [anchor_score(scorers, encode_configs(variants.local, [variants.variant(i)], table, SETTINGS.hops)[0],
                          torch.tensor([variants.anchor]), candidate.hop)[0] for i in range(len(variants))]
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5)
    scored = score_variants(graph, scorers, table, "node")
    assert set(scored["options"]) == set(table["option"])
    assert SEPARATOR not in FLOAT_KEY


def test_seed_streams_never_share_a_configuration_generator():
    """Stream 0 is stage 02's random stream, seeded by (seed, i); the test stream and the active pool have their own
    spawn keys, so none of their generators equals a random configuration's (a plain list (seed, stream, 0) would:
    numpy pads entropy with zeros)."""
    def state(rng):
        return tuple(rng.integers(0, 2**62, size=4))

    random_stream = {state(stream_generator(0, i)) for i in range(64)}
    assert state(stream_generator(0, 5)) == state(np.random.default_rng([0, 5]))
    assert state(np.random.default_rng([0, 2, 0])) in random_stream, "the pitfall the spawn key avoids"
    for stream in (1, 2):
        others = {state(stream_generator(0, i, stream)) for i in range(64)}
        assert len(others) == 64 and not others & random_stream
