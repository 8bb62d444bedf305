"""Which predictor guides the search: the one the labels support (beyond the paper, whose §3.3-3.4 always build
from the GNN; issue 31 item 5).

On one seeded K-fold split of the labels so far (FID target, −FID is "higher is better"), four predictors:

  * `gnn`: the run's GNN, one per fold (`qsd.predictor.cross_validation`);
  * `ridge`, `mlp`: the yardsticks on one-hot layer choices (`qsd.predictor.yardsticks`), one per fold;
  * `ensemble`: the mean of the three predictions (all in FID units).

Each is judged by the Spearman of its out-of-fold predictions over the configurations in the budget region
(average bits ≤ the largest budget: what the frontier chooses among; the whole set when fewer than `MIN_REGION`
lie there), and `choose` takes the best (ties: the order of `PREDICTORS`). A test stream (configurations labelled
once and never used to choose anything) is scored by the same table with each predictor's fold mean.

The knapsack needs one additive score per (unit, option). The GNN gives the paper's table (`score_variants`). The
others give their partial dependence (Friedman 2001): the mean prediction over reference configurations with the
unit set to the option. For ridge, which is additive, this equals its coefficients up to a constant per unit, so
the knapsack maximises its prediction exactly; for the MLP and the ensemble it is their additive part around the
references (the best labelled configurations in the budget region).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qsd.config import FLOAT_KEY, QuantConfig, parse_option
from qsd.errors import InvalidSettingError
from qsd.graph import DenoiserGraph
from qsd.predictor.folds import kfold_splits
from qsd.predictor.metrics import mae, spearman
from qsd.predictor.model import PredictorSettings
from qsd.predictor.training import TrainSettings
from qsd.predictor.yardsticks import fold_models
from qsd.search.guided import cross_validated_gnn, fold_scorers
from qsd.search.scores import FoldScorer, score_variants

PREDICTORS = ("gnn", "ridge", "mlp", "ensemble")
AUTO = "auto"
CHOICES = (AUTO, *PREDICTORS)
MIN_REGION = 8
"""Fewer configurations than this in the budget region: the choice ranks on the whole set."""
REFERENCES = 16
"""Reference configurations of a partial-dependence score table."""
BITS_TOLERANCE = 1e-9
VALIDATION_COLUMNS = ("predictor", "spearman", "spearman_region", "mae_region", "n", "n_region")

Predict = Callable[[Sequence[QuantConfig]], np.ndarray]
"""configurations → predicted −FID."""


@dataclass
class FittedPredictors:
    """Every predictor fitted on one split: out-of-fold predictions, fold-mean predict functions, GNN scorers."""

    held_out: dict[str, np.ndarray]
    """Predictor → out-of-fold predicted −FID of each training configuration (in their order)."""
    predict: dict[str, Predict]
    """Predictor → the mean of its fold models' predictions (what scores a test stream and a score table)."""
    scorers: list[FoldScorer]
    """The GNN's fold scorers (the paper's score tables)."""


def option_space(option_table: pd.DataFrame) -> tuple[list[str], list]:
    """The option table's units and quantized options (float has its own feature column)."""
    keys = [key for key in dict.fromkeys(option_table["option"]) if key != FLOAT_KEY]
    return list(dict.fromkeys(option_table["unit"])), [parse_option(key) for key in keys]


def fit_predictors(graph: DenoiserGraph, option_table: pd.DataFrame, configs: Sequence[QuantConfig],
                   fids: np.ndarray, folds: int, predictor: PredictorSettings, training: TrainSettings,
                   seed: int) -> FittedPredictors:
    """All of `PREDICTORS` on the split `kfold_splits(len(configs), folds, seed)` (the MLP's seed too)."""
    targets = -np.asarray(fids, dtype=float)
    splits = kfold_splits(len(configs), folds, seed)
    cv = cross_validated_gnn(graph, option_table, configs, fids, splits, predictor, training)
    held_out = {"gnn": cv.predictions.sort_values("index")["prediction"].to_numpy(dtype=float)}

    def gnn_predict(batch: Sequence[QuantConfig]) -> np.ndarray:
        graphs = graph.encode(batch, option_table, predictor.hops)
        return np.mean([fold.predict(graphs) for fold in cv.predictors], axis=0)

    predict: dict[str, Predict] = {"gnn": gnn_predict}
    units, options = option_space(option_table)
    for name in ("ridge", "mlp"):
        models = fold_models(name, configs, targets, splits, units, options, seed)
        held_out[name] = np.empty(len(configs))
        for model, (_, test) in zip(models, splits, strict=True):
            held_out[name][test] = model.score([configs[i] for i in test])
        predict[name] = lambda batch, models=models: np.mean([m.score(batch) for m in models], axis=0)
    members = ("gnn", "ridge", "mlp")
    held_out["ensemble"] = np.mean([held_out[m] for m in members], axis=0)
    predict["ensemble"] = lambda batch: np.mean([predict[m](batch) for m in members], axis=0)
    return FittedPredictors(held_out, predict, fold_scorers(cv, predictor.hops))


def validation_table(predictions: dict[str, np.ndarray], fids: np.ndarray, avg_bits: np.ndarray,
                     region_max: float) -> pd.DataFrame:
    """Per predictor (`VALIDATION_COLUMNS`): Spearman of predicted −FID against −FID over all configurations and
    over the budget region (average bits ≤ `region_max`), MAE (FID) in the region and the counts."""
    targets, bits = -np.asarray(fids, dtype=float), np.asarray(avg_bits, dtype=float)
    region = bits <= region_max + BITS_TOLERANCE
    in_region = int(region.sum())
    rows = []
    for name, predicted in predictions.items():
        predicted = np.asarray(predicted, dtype=float)
        rows.append({"predictor": name, "spearman": _spearman(predicted, targets),
                     "spearman_region": _spearman(predicted[region], targets[region]),
                     "mae_region": mae(predicted[region], targets[region]) if in_region else np.nan,
                     "n": len(targets), "n_region": in_region})
    return pd.DataFrame(rows, columns=list(VALIDATION_COLUMNS))


def _spearman(predicted: np.ndarray, targets: np.ndarray) -> float:
    if len(targets) < 3 or np.ptp(predicted) == 0 or np.ptp(targets) == 0:
        return np.nan
    return spearman(predicted, targets)


def choose(validation: pd.DataFrame, choice: str = AUTO) -> str:
    """`choice` itself, or (auto) the predictor with the best budget-region Spearman (the whole set's when the
    region holds fewer than `MIN_REGION`); ties and NaN go to the earlier of `PREDICTORS`."""
    if choice not in CHOICES:
        raise InvalidSettingError(f"predictor {choice!r} is not one of {CHOICES}")
    if choice != AUTO:
        return choice
    column = "spearman_region" if validation["n_region"].min() >= MIN_REGION else "spearman"
    ranked = validation.assign(order=[PREDICTORS.index(p) for p in validation["predictor"]],
                               value=validation[column].fillna(-np.inf))
    return str(ranked.sort_values(["value", "order"], ascending=[False, True])["predictor"].iloc[0])


def references(configs: Sequence[QuantConfig], fids: np.ndarray, avg_bits: np.ndarray, region_max: float,
               count: int = REFERENCES) -> list[QuantConfig]:
    """The `count` lowest-FID configurations in the budget region (the lowest-bit ones when none lies there)."""
    fids, bits = np.asarray(fids, dtype=float), np.asarray(avg_bits, dtype=float)
    region = np.flatnonzero(bits <= region_max + BITS_TOLERANCE)
    order = region[np.argsort(fids[region], kind="stable")] if region.size else np.argsort(bits, kind="stable")
    return [configs[i] for i in order[:count]]


def partial_dependence_scores(option_table: pd.DataFrame, predict: Predict, reference: Sequence[QuantConfig]
                              ) -> pd.DataFrame:
    """A node-level score table (the columns `qsd.search.construct.budget_config` reads): per (unit, option), the
    mean predicted −FID over `reference` with that unit set to that option."""
    if not reference:
        raise InvalidSettingError("partial dependence needs at least one reference configuration")
    table = option_table.reset_index(drop=True)
    changed = [config.with_layers({unit: parse_option(key)}) for unit, key in zip(table["unit"], table["option"],
                                                                                    strict=True)
               for config in reference]
    scores = np.asarray(predict(changed), dtype=float).reshape(len(table), len(reference)).mean(axis=1)
    return pd.DataFrame({"level": "node", "unit": table["unit"], "layers": table["unit"], "options": table["option"],
                         "size_bits": table["size_bits"].astype(float), "n_weights": table["n_weights"].astype(float),
                         "error": table["error"].astype(float), "score": scores})


def score_table(fitted: FittedPredictors, name: str, graph: DenoiserGraph, option_table: pd.DataFrame, level: str,
                reference: Sequence[QuantConfig]) -> pd.DataFrame:
    """The knapsack's score table of predictor `name`: the paper's GNN table at `level`, else partial dependence."""
    if name == "gnn":
        return score_variants(graph, fitted.scorers, option_table, level)
    return partial_dependence_scores(option_table, fitted.predict[name], reference)
