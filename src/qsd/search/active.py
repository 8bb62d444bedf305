"""Predictor-guided labelling, compared with random labelling at the same label budget (beyond the paper, whose
dataset is 500 random configurations per model; paper §3.2).

Active arm, from n₀ labelled random configurations, for rounds r = 1..R:
  1. cross-validate fold predictors on the labelled set (FID target) → fold scorers (`qsd.search.scores`);
  2. exploit: the exact bit-budget configuration at every budget (`qsd.search.construct.budget_config`);
     explore: fill the round up to `per_round` with the candidate-pool configurations the fold predictors disagree
     on most (standard deviation of their standardised predictions: where the predictor is least sure);
  3. label the new ones and add them to the set.
Random arm: the first n₀ + r·per_round configurations of the random stream.

At every checkpoint r = 0..R both arms train on their n labels and are measured the same way: the knapsack
configurations at the budgets are labelled (their FIDs are the arm's frontier; the active arm's exploit step is
exactly this, so it learns from them, the random arm does not) and the fold predictors' mean prediction is
ranked against a held-out set of random configurations neither arm trains on (Spearman).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from qsd.config import QuantConfig
from qsd.errors import InvalidSettingError
from qsd.graph import DenoiserGraph
from qsd.predictor.metrics import spearman
from qsd.predictor.model import PredictorSettings
from qsd.predictor.training import TrainSettings
from qsd.search.construct import BudgetConfig
from qsd.search.guided import LabelFunction, fit_fold_scorers, frontier_configs
from qsd.search.scores import FoldScorer

MIN_HELDOUT = 3


@dataclass(frozen=True)
class ActiveSettings:
    initial: int = 40
    """n₀: random labels both arms start from."""
    rounds: int = 4
    per_round: int = 10
    """Labels the active arm adds per round (the budgets' configurations first, then the least sure)."""
    budgets: tuple[float, ...] = (3.4, 3.6, 3.8, 4.0)
    folds: int = 3
    level: str = "subgraph"
    predictor: PredictorSettings = PredictorSettings()
    """The fold predictors' architecture (a run's stage-03 hops and readout)."""
    training: TrainSettings = TrainSettings()
    """How each fold predictor is trained (a run's stage-03 loss; epochs; its seed)."""
    seed: int = 0
    """Seed of the folds."""

    def __post_init__(self) -> None:
        if self.initial < self.folds or self.rounds < 0 or self.per_round < 1 or self.folds < 2:
            raise InvalidSettingError(f"active labelling needs initial ≥ folds ≥ 2, rounds ≥ 0 and per_round ≥ 1; got "
                                      f"{self}")

    @property
    def label_budget(self) -> int:
        return self.initial + self.rounds * self.per_round


@dataclass
class Pool:
    """Labelled random configurations in stream order (the random arm's source and the held-out set) and unlabelled
    candidates for the explore step."""

    configs: list[QuantConfig]
    fids: np.ndarray
    heldout_configs: list[QuantConfig]
    heldout_fids: np.ndarray
    candidates: list[QuantConfig]


@dataclass
class ActiveResult:
    checkpoints: pd.DataFrame
    """One row per (arm, round, budget): labels, budget, avg_bits, fid, heldout_spearman."""
    labelled: list[tuple[str, QuantConfig, float]] = field(default_factory=list)
    """The active arm's labelled set at the end: (how it came in, configuration, FID)."""


class ActiveLoop:
    """The two arms on one graph and option table (see the module docstring)."""

    def __init__(self, graph: DenoiserGraph, option_table: pd.DataFrame, label: LabelFunction,
                 settings: ActiveSettings, progress: bool = False) -> None:
        self.graph, self.option_table, self.label = graph, option_table, label
        self.settings, self.progress = settings, progress

    def _fit(self, configs: Sequence[QuantConfig], fids: np.ndarray) -> list[FoldScorer]:
        s = self.settings
        return fit_fold_scorers(self.graph, self.option_table, configs, fids, s.folds, s.predictor, s.training, s.seed)

    def _predictions(self, scorers: list[FoldScorer], configs: Sequence[QuantConfig]) -> np.ndarray:
        """[folds, configs] standardised predictions of −FID."""
        graphs = self.graph.encode(configs, self.option_table, self.settings.predictor.hops)
        return np.stack([(s.predictor.predict(graphs) - s.predictor.y_mean) / s.predictor.y_std for s in scorers])

    def _frontier(self, scorers: list[FoldScorer]) -> dict[float, BudgetConfig]:
        return frontier_configs(self.graph, self.option_table, scorers, self.settings.level, self.settings.budgets)

    def _checkpoint(self, arm: str, round_: int, configs: list[QuantConfig], fids: np.ndarray, pool: Pool
                    ) -> tuple[list[FoldScorer], dict[float, QuantConfig], list[dict]]:
        scorers = self._fit(configs, fids)
        rho = (spearman(self._predictions(scorers, pool.heldout_configs).mean(0), -pool.heldout_fids)
               if len(pool.heldout_configs) >= MIN_HELDOUT else float("nan"))
        built = self._frontier(scorers)
        frontier = {b: c.config for b, c in built.items()}
        names = [f"{arm} r{round_} ≤{b:.2f} bits" for b in frontier]
        frontier_fids = self.label(list(frontier.values()), names)
        rows = [{"arm": arm, "round": round_, "labels": len(configs), "budget": b, "avg_bits": c.solution.avg_bits,
                 "fid": float(f), "heldout_spearman": rho}
                for (b, c), f in zip(built.items(), frontier_fids, strict=True)]
        return scorers, frontier, rows

    def run(self, pool: Pool) -> ActiveResult:
        s = self.settings
        if len(pool.configs) < s.label_budget:
            raise InvalidSettingError(f"the random arm needs {s.label_budget} labelled random configurations "
                                      f"(initial + rounds × per_round); the pool has {len(pool.configs)}")
        rows: list[dict] = []
        active = [("random", c, float(f)) for c, f in zip(pool.configs[:s.initial], pool.fids[:s.initial],
                                                          strict=True)]
        for round_ in tqdm(range(s.rounds + 1), desc="active labelling", disable=not self.progress):
            n = s.initial + round_ * s.per_round
            scorers, frontier, random_rows = self._checkpoint("random-arm", round_, pool.configs[:n], pool.fids[:n],
                                                              pool)
            if round_ == 0:  # both arms hold the same n₀ labels: one measurement serves both
                active_rows = [row | {"arm": "active-arm"} for row in random_rows]
            else:
                configs, fids = [c for _, c, _ in active], np.array([f for _, _, f in active])
                scorers, frontier, active_rows = self._checkpoint("active-arm", round_, configs, fids, pool)
            rows += random_rows + active_rows
            if round_ == s.rounds:
                break
            active += self._next_round(scorers, frontier, active_rows, active, pool, round_)
        return ActiveResult(pd.DataFrame(rows), active)

    def _next_round(self, scorers: list[FoldScorer], frontier: dict[float, QuantConfig], frontier_rows: list[dict],
                    active: list, pool: Pool, round_: int) -> list[tuple[str, QuantConfig, float]]:
        """The round's new labels: the budgets' configurations (just labelled), then the least sure candidates."""
        have = {c.fingerprint for _, c, _ in active}
        new = []
        for (budget, config), row in zip(frontier.items(), frontier_rows, strict=True):
            if config.fingerprint not in have and len(new) < self.settings.per_round:
                new.append((f"budget {budget:.2f}", config, row["fid"]))
                have.add(config.fingerprint)
        open_candidates = [c for c in pool.candidates if c.fingerprint not in have]
        wanted = self.settings.per_round - len(new)
        if wanted > 0 and open_candidates:
            spread = self._predictions(scorers, open_candidates).std(0)
            picked = [open_candidates[i] for i in np.argsort(-spread, kind="stable")[:wanted]]
            names = [f"active-arm r{round_ + 1} explore {i}" for i in range(len(picked))]
            new += [("explore", c, float(f)) for c, f in zip(picked, self.label(picked, names), strict=True)]
        return new
