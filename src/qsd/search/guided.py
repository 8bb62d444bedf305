"""Predictor-guided construction, the step the search loop (`qsd.search.loop`) and the active-labelling comparison
(`qsd.search.active`) repeat every round: cross-validated fold predictors fitted on the labels so far, and the exact
knapsack configuration of their scores at every budget (paper §3.4, Eq. 4, with `qsd.search.construct`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from qsd.config import QuantConfig
from qsd.errors import InfeasibleBudgetError
from qsd.graph import DenoiserGraph
from qsd.predictor.cross_validation import CrossValidation, cross_validate
from qsd.predictor.folds import kfold_splits
from qsd.predictor.model import PredictorSettings
from qsd.predictor.training import TrainSettings
from qsd.search.construct import BudgetConfig, budget_config
from qsd.search.scores import FoldScorer, score_variants

LabelFunction = Callable[[Sequence[QuantConfig], Sequence[str]], np.ndarray]
"""(configurations, names) → their FIDs (labelling whatever is not labelled yet)."""


def cross_validated_gnn(graph: DenoiserGraph, option_table: pd.DataFrame, configs: Sequence[QuantConfig],
                        fids: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]], predictor: PredictorSettings,
                        training: TrainSettings) -> CrossValidation:
    """One GNN per split, trained on −FID of (`configs`, `fids`)."""
    graphs = graph.encode(configs, option_table, predictor.hops, targets=-np.asarray(fids, dtype=float))
    return cross_validate(graphs, splits, predictor, training)


def fold_scorers(cv: CrossValidation, hops: int) -> list[FoldScorer]:
    """The fold predictors of `cv`, each with its hops' test Spearman."""
    return [FoldScorer(fold, [float(cv.metrics[f"hop{m}_spearman"].iloc[k]) for m in range(hops + 1)])
            for k, fold in enumerate(cv.predictors)]


def fit_fold_scorers(graph: DenoiserGraph, option_table: pd.DataFrame, configs: Sequence[QuantConfig],
                     fids: np.ndarray, folds: int, predictor: PredictorSettings, training: TrainSettings,
                     seed: int = 0) -> list[FoldScorer]:
    """Cross-validated fold predictors of −FID on (`configs`, `fids`) (`seed`: the folds'), each with its hops'
    test Spearman."""
    cv = cross_validated_gnn(graph, option_table, configs, fids, kfold_splits(len(configs), folds, seed), predictor,
                             training)
    return fold_scorers(cv, predictor.hops)


def budget_configs(table: pd.DataFrame, budgets: Sequence[float]) -> dict[float, BudgetConfig]:
    """The knapsack configuration of a score table at every feasible budget."""
    built = {}
    for budget in budgets:
        try:
            built[budget] = budget_config(table, budget)
        except InfeasibleBudgetError:
            continue
    return built


def frontier_configs(graph: DenoiserGraph, option_table: pd.DataFrame, scorers: list[FoldScorer], level: str,
                     budgets: Sequence[float]) -> dict[float, BudgetConfig]:
    """The knapsack configuration of `scorers`' scores at every feasible budget."""
    return budget_configs(score_variants(graph, scorers, option_table, level), budgets)
