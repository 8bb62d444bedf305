"""Configurations from a score table (`qsd.search.scores.score_variants` or a yardstick in the same shape).

  * `rule_config`: the paper's rule (§3.4; code.md §6 "Building the configuration"): the top-scoring variant of
    every candidate (a layer or a subgraph: the table's `unit` column), whatever its bits (the bit width follows
    only from the λ of the target the scores learnt).
  * `budget_config`: the best total score with average bits ≤ B (`qsd.search.knapsack`, exact).
  * Yardsticks scored per layer, for the same knapsack: `error_scores` (−relative quantization error, the classic
    sensitivity proxy) and `ridge_scores` (the ridge regression's per-layer coefficients, `RidgeYardstick`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from qsd.config import QuantConfig, QuantSpec, parse_option
from qsd.errors import InvalidSettingError
from qsd.search.knapsack import KnapsackSolution, solve_budget
from qsd.search.scores import SEPARATOR

SLACK_BITS = 0.02
"""A budget solution further than this below its budget says why."""


def per_candidate(scores: pd.DataFrame) -> list[pd.DataFrame]:
    """The score table split by candidate (its `unit` column, in first-appearance order), each with a fresh index."""
    _check(scores)
    return [rows.reset_index(drop=True) for _, rows in scores.groupby("unit", sort=False)]


def total_weights(scores: pd.DataFrame) -> float:
    """N: the weights of all candidates (every variant of a candidate has the same)."""
    return float(sum(rows["n_weights"].iloc[0] for rows in per_candidate(scores)))


def lowest_budget(scores: pd.DataFrame) -> float:
    """The lowest feasible average bits: every unit at its smallest variant (a smaller budget fits nothing)."""
    return float(sum(rows["size_bits"].min() for rows in per_candidate(scores))) / total_weights(scores)


def config_of(rows: list[pd.Series]) -> QuantConfig:
    """The configuration that takes variant `rows[c]` for every candidate c."""
    layers: dict[str, QuantSpec | None] = {}
    for row in rows:
        for layer, key in zip(row["layers"].split(SEPARATOR), row["options"].split(SEPARATOR), strict=True):
            if layer in layers:
                raise InvalidSettingError(f"layer {layer!r} belongs to two candidates of the score table")
            layers[layer] = parse_option(key)
    return QuantConfig(layers)


def rule_config(scores: pd.DataFrame) -> QuantConfig:
    """The paper's rule: every candidate's top-scoring variant."""
    return config_of([rows.loc[rows["score"].idxmax()] for rows in per_candidate(scores)])


@dataclass(frozen=True)
class BudgetConfig:
    config: QuantConfig
    solution: KnapsackSolution
    note: str
    """Why the average bits stay more than `SLACK_BITS` below the budget ('' when they do not)."""


def budget_config(scores: pd.DataFrame, budget: float) -> BudgetConfig:
    """The configuration of maximum total score with average bits ≤ `budget` (exact; `solve_budget`)."""
    groups = per_candidate(scores)
    solution = solve_budget([g["size_bits"].to_numpy() for g in groups], [g["score"].to_numpy() for g in groups],
                            total_weights(scores), budget)
    config = config_of([g.loc[c] for g, c in zip(groups, solution.choice, strict=True)])
    note = ""
    if solution.avg_bits < budget - SLACK_BITS:
        note = (f"{budget - solution.avg_bits:.3f} bits of the budget unused: no choice that spends more bits "
                "scores higher (the scores prefer the smaller variants)")
    return BudgetConfig(config, solution, note)


def error_scores(node_scores: pd.DataFrame) -> pd.DataFrame:
    """The node-level table with score = −(relative quantization error) of each layer's option."""
    return node_scores.assign(score=-node_scores["error"].to_numpy())


def ridge_scores(node_scores: pd.DataFrame, coefficients: pd.DataFrame) -> pd.DataFrame:
    """The node-level table with score = the ridge coefficient of (layer, option) (`RidgeYardstick.coefficients`:
    higher = better)."""
    lookup = coefficients.set_index(["unit", "option"])["coefficient"]
    keys = list(zip(node_scores["layers"], node_scores["options"], strict=True))
    missing = [k for k in keys if k not in lookup.index]
    if missing:
        raise InvalidSettingError(f"the ridge coefficients lack {len(missing)} (layer, option) pairs, e.g. "
                                  f"{missing[0]}; fit the ridge on configurations of this model")
    return node_scores.assign(score=lookup.loc[keys].to_numpy(dtype=float))


def _check(scores: pd.DataFrame) -> None:
    needed = {"unit", "layers", "options", "size_bits", "n_weights", "score"}
    if missing := needed - set(scores.columns):
        raise InvalidSettingError(f"a score table needs column(s) {sorted(missing)}")
    if scores.empty or not np.isfinite(scores["score"].to_numpy(dtype=float)).all():
        raise InvalidSettingError("a score table needs at least one row and finite scores")
