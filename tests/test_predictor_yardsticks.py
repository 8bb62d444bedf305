"""Yardsticks of the predictor comparison: summed layer error, ridge and MLP on one-hot per-layer choices."""

import numpy as np
import pandas as pd
import pytest
from margins import above
from scipy import stats

from qsd.config import FLOAT_KEY, QuantConfig, QuantSpec
from qsd.errors import InvalidSettingError, UnsupportedSpecError
from qsd.multiquant import DEFAULT_OPTIONS
from qsd.predictor.folds import kfold_splits
from qsd.predictor.metrics import spearman
from qsd.predictor.yardsticks import (
    YARDSTICKS,
    RidgeYardstick,
    config_features,
    evaluate_yardsticks,
    feature_columns,
    fold_mean_scores,
    make_yardstick,
)

UNITS = [f"blocks.{b}.{layer}" for b in range(3) for layer in ("attn.to_q", "attn.to_k", "attn.to_out.0", "ff.net.2")]
N = 120


@pytest.fixture(scope="module")
def synthetic():
    """Configs whose target is a sum of per-(unit, option) effects (+ small noise); per-unit errors likewise."""
    rng = np.random.default_rng(0)
    effects = {(u, s): -rng.gamma(1.0) * (2.0 if s.w_bits == 3 else 1.0) for u in UNITS for s in DEFAULT_OPTIONS}
    errors = {u: {s: rng.uniform(0.01, 0.2) for s in DEFAULT_OPTIONS} for u in UNITS}
    configs = [QuantConfig({u: None if rng.uniform() < 0.05 else DEFAULT_OPTIONS[rng.integers(6)] for u in UNITS})
               for _ in range(N - 1)] + [QuantConfig.uniform(UNITS, None)]
    truth = np.array([sum(effects[u, s] for u, s in c.items() if s is not None) for c in configs])
    targets = truth + rng.normal(0.0, 0.05 * truth.std(), N)
    summed = [sum(errors[u][s] for u, s in c.items() if s is not None) for c in configs]
    frame = pd.DataFrame({"fingerprint": [c.fingerprint for c in configs], "summed_error": summed})
    frame.loc[N - 1, "summed_error"] = np.nan  # the float row, as the store may hold it
    return configs, targets, frame, effects, errors


def held_out(synthetic, name, seed=0):
    configs, targets, frame, _, _ = synthetic
    train, test = kfold_splits(N, 5, seed=0)[0]
    model = make_yardstick(name, UNITS, DEFAULT_OPTIONS, seed)
    model.fit([configs[i] for i in train], targets[train], frame.iloc[train])
    return model, model.score([configs[i] for i in test], frame.iloc[test]), targets[test]


def test_features_are_one_hot_per_unit():
    configs = [QuantConfig.uniform(UNITS, None), QuantConfig.uniform(UNITS, QuantSpec("kmeans_a", 3))]
    features = config_features(configs, UNITS, DEFAULT_OPTIONS)
    columns = feature_columns(UNITS, DEFAULT_OPTIONS)
    assert features.shape == (2, len(UNITS) * 7) == (2, len(columns))
    np.testing.assert_array_equal(features.sum(axis=1), [len(UNITS)] * 2)
    assert {columns[j] for j in np.flatnonzero(features[0])} == {(u, FLOAT_KEY) for u in UNITS}
    assert {columns[j] for j in np.flatnonzero(features[1])} == {(u, "kmeans_a-3") for u in UNITS}
    with pytest.raises(UnsupportedSpecError, match="uaq-2"):
        config_features([QuantConfig.uniform(UNITS, QuantSpec("uaq", 2))], UNITS, DEFAULT_OPTIONS)
    with pytest.raises(InvalidSettingError, match="must be distinct"):
        config_features(configs, UNITS, [*DEFAULT_OPTIONS, DEFAULT_OPTIONS[0]])


@pytest.mark.comparison
def test_ridge_ranks_held_out_configs_and_recovers_the_per_option_effects(synthetic):
    model, scores, targets = held_out(synthetic, "ridge")
    assert isinstance(model, RidgeYardstick)
    above(spearman(scores, targets), 0.9, 0.03, "ridge held-out Spearman vs 0.9")
    coefficients = model.coefficients()
    assert list(coefficients.columns) == ["unit", "option", "coefficient"] and len(coefficients) == len(UNITS) * 7
    quantized = coefficients[coefficients["option"] != FLOAT_KEY].copy()
    effects = synthetic[3]
    quantized["truth"] = [effects[u, QuantSpec.parse(o)] for u, o in zip(quantized["unit"], quantized["option"],
                                                                         strict=True)]
    centred = quantized.groupby("unit")[["coefficient", "truth"]].transform(lambda x: x - x.mean())
    above(stats.spearmanr(centred["coefficient"], centred["truth"]).statistic, 0.9, 0.03,
          "Spearman of ridge's effects with the true ones vs 0.9")


@pytest.mark.comparison
def test_mlp_ranks_held_out_configs_and_is_deterministic_for_a_seed(synthetic):
    _, scores, targets = held_out(synthetic, "mlp", seed=0)
    above(spearman(scores, targets), 0.7, 0.15, "MLP held-out Spearman vs 0.7")
    _, again, _ = held_out(synthetic, "mlp", seed=0)
    _, other, _ = held_out(synthetic, "mlp", seed=1)
    np.testing.assert_array_equal(scores, again)
    assert not np.array_equal(scores, other)


def test_summed_error_is_minus_the_summed_error_column_or_table(synthetic):
    configs, _, frame, _, errors = synthetic
    from_frame = make_yardstick("summed_error", UNITS, DEFAULT_OPTIONS).score(configs, frame)
    from_table = make_yardstick("summed_error", UNITS, DEFAULT_OPTIONS, errors=errors).score(configs)
    np.testing.assert_allclose(from_frame, -frame["summed_error"].fillna(0.0))
    np.testing.assert_allclose(from_table, from_frame)
    assert from_frame[-1] == 0.0, "the all-float configuration has no error"
    broken = frame.assign(summed_error=frame["summed_error"].where(frame.index != 3))
    with pytest.raises(InvalidSettingError, match="summed_error is missing for 1 quantized"):
        make_yardstick("summed_error", UNITS, DEFAULT_OPTIONS).score(configs, broken)
    with pytest.raises(InvalidSettingError, match="frame row 0 is not the store row"):
        make_yardstick("summed_error", UNITS, DEFAULT_OPTIONS).score(configs[::-1], frame)
    with pytest.raises(InvalidSettingError, match="error table has no entry"):
        make_yardstick("summed_error", UNITS, DEFAULT_OPTIONS, errors={}).score(configs[:1])


@pytest.mark.comparison
def test_evaluate_yardsticks_gives_k_rows_per_yardstick(synthetic):
    configs, targets, frame, _, _ = synthetic
    splits = kfold_splits(N, 3, seed=0)
    result = evaluate_yardsticks(configs, frame, targets, splits, UNITS, DEFAULT_OPTIONS, seed=0)
    assert list(result.columns) == ["yardstick", "fold", "n_train", "n_test", "spearman", "kendall", "ndcg10", "mae"]
    assert result.groupby("yardstick")["fold"].apply(list).to_dict() == {b: [0, 1, 2] for b in YARDSTICKS}
    assert result.loc[result["yardstick"] == "summed_error", "mae"].isna().all()
    assert result.loc[result["yardstick"] != "summed_error", "mae"].notna().all()
    above(result.loc[result["yardstick"] == "ridge", "spearman"].min(), 0.9, 0.02, "ridge's worst fold Spearman vs 0.9")


def test_fold_mean_scores_average_the_fold_models_on_unseen_configurations(synthetic):
    """A test stream is scored by every fold's model (fitted on that fold's training part) and averaged."""
    configs, targets, _, _, _ = synthetic
    splits = kfold_splits(100, 4, seed=1)
    train, unseen = configs[:100], configs[100:]
    scores = fold_mean_scores("ridge", train, targets[:100], splits, UNITS, DEFAULT_OPTIONS, unseen)
    by_fold = [make_yardstick("ridge", UNITS, DEFAULT_OPTIONS).fit([train[i] for i in t], targets[t]).score(unseen)
               for t, _ in splits]
    np.testing.assert_allclose(scores, np.mean(by_fold, axis=0))
    assert scores.shape == (len(unseen),) and spearman(scores, targets[100:]) > 0.8


def test_bad_requests_get_clear_errors(synthetic):
    configs, targets, _, _, _ = synthetic
    with pytest.raises(InvalidSettingError, match="unknown yardstick 'ridg'.*did you mean 'ridge'"):
        make_yardstick("ridg", UNITS, DEFAULT_OPTIONS)
    with pytest.raises(InvalidSettingError, match="not fitted"):
        make_yardstick("ridge", UNITS, DEFAULT_OPTIONS).score(configs)
    with pytest.raises(InvalidSettingError, match="one finite target per configuration"):
        make_yardstick("ridge", UNITS, DEFAULT_OPTIONS).fit(configs, targets[:-1])
    with pytest.raises(InvalidSettingError, match="needs the store rows"):
        make_yardstick("summed_error", UNITS, DEFAULT_OPTIONS).score(configs)
