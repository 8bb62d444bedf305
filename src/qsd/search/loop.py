"""The search loop: fit → knapsack at the budgets → label what it proposes → refit (beyond the paper, whose §3.4
builds the configurations once, from one predictor trained on random labels).

Round r = 1..R, once per training seed k (folds and initialisation):
  1. cross-validate the GNN, ridge, the MLP and their ensemble (FID target) on every label so far, and take the one
     whose held-out ranking in the budget region is best, or the one `choice` names (`qsd.search.predictor_choice`);
     a test stream, when given, is scored too and chooses nothing;
  2. the exact knapsack configuration of its scores at every budget (`budget_configs`);
  3. label the configurations no earlier round labelled; they join the training set of round r + 1.
After every round the frontier is, per budget B, the best labelled configuration with average bits ≤ B among all
candidates (every configuration the loop started from and every one it labelled), so a frontier point is never
worse than a labelled configuration at equal or fewer bits. The loop stops early when no budget's frontier
improved by more than `stop_fid` (a stage sets it to the float model's seed spread: a smaller gain is noise).

The seeds give the search its own spread: per budget, the labelled FIDs of the seeds' configurations.
`random_labels_to_match` counts the random labels that would have reached the same frontier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from qsd.config import QuantConfig
from qsd.errors import InvalidSettingError
from qsd.graph import DenoiserGraph
from qsd.predictor.model import PredictorSettings
from qsd.predictor.training import TrainSettings
from qsd.search.guided import LabelFunction, budget_configs
from qsd.search.predictor_choice import (
    AUTO,
    BITS_TOLERANCE,
    CHOICES,
    VALIDATION_COLUMNS,
    choose,
    fit_predictors,
    references,
    score_table,
    validation_table,
)

PROPOSAL_COLUMNS = ("round", "seed", "predictor", "budget", "name", "fingerprint", "avg_bits", "score", "note", "new",
                    "fid")
CHOICE_COLUMNS = ["round", "seed", "set", *VALIDATION_COLUMNS, "chosen"]


@dataclass(frozen=True)
class Candidate:
    """A labelled configuration: its name (as the store holds it), average bits, FID and where it came from."""

    name: str
    config: QuantConfig
    avg_bits: float
    fid: float
    source: str


@dataclass(frozen=True)
class LoopSettings:
    budgets: tuple[float, ...]
    rounds: int = 3
    seeds: int = 3
    """Training seeds per round (folds and initialisation): each builds its own configuration at every budget."""
    folds: int = 5
    level: str = "subgraph"
    predictor: PredictorSettings = PredictorSettings()
    training: TrainSettings = TrainSettings()
    """How each fold predictor is trained (its seed is replaced by the round's seed)."""
    stop_fid: float = 0.0
    """Stop after a round in which no budget's frontier FID fell by more than this."""
    seed: int = 0
    """Seed k of a round is `seed + k`."""
    choice: str = AUTO
    """The predictor whose scores build the configurations: one of `PREDICTORS`, or auto (the best held-out
    Spearman in the budget region, per round and seed)."""

    def __post_init__(self) -> None:
        if not self.budgets or self.rounds < 0 or self.seeds < 1 or self.folds < 2 or self.stop_fid < 0:
            raise InvalidSettingError(f"the search loop needs budgets, rounds ≥ 0, seeds ≥ 1, folds ≥ 2 and "
                                      f"stop_fid ≥ 0; got {self}")
        if self.choice not in CHOICES:
            raise InvalidSettingError(f"the search loop's predictor {self.choice!r} is not one of {CHOICES}")


@dataclass(frozen=True)
class HeldOutStream:
    """Configurations labelled once and never used to choose anything: each round's predictors are scored on them."""

    configs: Sequence[QuantConfig]
    fids: np.ndarray
    avg_bits: np.ndarray


@dataclass
class LoopResult:
    proposals: pd.DataFrame
    """One row per (round, seed, budget) (`PROPOSAL_COLUMNS`): the predictor that built it, the configuration's name,
    fingerprint, avg_bits, knapsack score and note, whether this proposal labelled it (new) and its FID."""
    rounds: pd.DataFrame
    """One row per (round, budget), round 0 = before the loop: the frontier's name, source, avg_bits and fid, the
    labels held and the FID gained over the previous round."""
    candidates: list[Candidate]
    """Every candidate at the end (the starting ones, then the loop's in labelling order)."""
    stopped: str
    """Why the loop ended."""
    choices: pd.DataFrame
    """One row per (round, seed, set, predictor) (`CHOICE_COLUMNS`): set `cv` (out-of-fold, what chose) or `test`
    (the test stream), the validation numbers, and whether that predictor built the round's configurations."""

    def frontier(self) -> pd.DataFrame:
        """The last round's frontier (one row per budget that some candidate fits)."""
        last = self.rounds[self.rounds["round"] == self.rounds["round"].max()]
        return last[last["name"].notna()].reset_index(drop=True)

    def seed_spread(self) -> pd.DataFrame:
        """Per budget: mean, std and the FIDs of the last round's configurations over the seeds (no rows when the
        loop ran no round)."""
        if self.proposals.empty:
            return pd.DataFrame(columns=["budget", "mean", "std", "fids"])
        last = self.proposals[self.proposals["round"] == self.proposals["round"].max()]
        return (last.groupby("budget")["fid"]
                .agg(mean="mean", std=lambda f: float(np.std(f, ddof=1)) if len(f) > 1 else 0.0, fids=list)
                .reset_index())


def labelled_frontier(avg_bits: Sequence[float], fids: Sequence[float], budgets: Sequence[float]
                      ) -> list[int | None]:
    """Per budget, the index of the lowest FID among the points with at most that many average bits (None: none
    fits). Ties go to the earlier point (argmin takes the first)."""
    bits, fid = np.asarray(avg_bits, float), np.asarray(fids, float)
    picks: list[int | None] = []
    for budget in budgets:
        fits = np.flatnonzero((bits <= budget + BITS_TOLERANCE) & np.isfinite(fid))
        picks.append(None if fits.size == 0 else int(fits[np.argmin(fid[fits])]))
    return picks


def random_labels_to_match(avg_bits: Sequence[float], fids: Sequence[float], budgets: Sequence[float],
                           targets: Sequence[float]) -> list[int | None]:
    """Per budget, the fewest leading configurations of a random stream (in labelling order) whose best at ≤ the
    budget reaches the target FID (None: the whole stream does not)."""
    bits, fid = np.asarray(avg_bits, float), np.asarray(fids, float)
    needed: list[int | None] = []
    for budget, target in zip(budgets, targets, strict=True):
        reached = np.flatnonzero((bits <= budget + BITS_TOLERANCE) & (fid <= target))
        needed.append(None if reached.size == 0 else int(reached[0]) + 1)
    return needed


class SearchLoop:
    """The loop on one graph and option table (see the module docstring); `label` labels what is new."""

    def __init__(self, graph: DenoiserGraph, option_table: pd.DataFrame, label: LabelFunction,
                 settings: LoopSettings, progress: bool = False, test: HeldOutStream | None = None) -> None:
        self.graph, self.option_table, self.label = graph, option_table, label
        self.settings, self.progress, self.test = settings, progress, test

    def run(self, start: Sequence[Candidate]) -> LoopResult:
        s = self.settings
        if len(start) < s.folds:
            raise InvalidSettingError(f"the search loop needs at least folds = {s.folds} labelled configurations to "
                                      f"start from; got {len(start)}")
        candidates = list(start)
        rounds = self._frontier_rows(candidates, 0, None)
        proposals: list[dict] = []
        choices: list[pd.DataFrame] = []
        stopped = f"ran all {s.rounds} rounds"
        for round_ in tqdm(range(1, s.rounds + 1), desc="search loop", disable=not self.progress):
            rows, validation = self._round(round_, candidates)
            proposals += rows
            choices += validation
            rows = self._frontier_rows(candidates, round_, rounds[-len(s.budgets):])
            rounds += rows
            gains = [row["gain"] for row in rows if row["name"] is not None]
            if not any(g > s.stop_fid for g in gains):
                stopped = (f"stopped after round {round_}: no budget's frontier improved by more than "
                           f"{s.stop_fid:.2f} FID")
                break
        return LoopResult(pd.DataFrame(proposals, columns=PROPOSAL_COLUMNS), pd.DataFrame(rounds), candidates, stopped,
                          pd.concat(choices, ignore_index=True) if choices else pd.DataFrame(columns=CHOICE_COLUMNS))

    def _round(self, round_: int, candidates: list[Candidate]) -> tuple[list[dict], list[pd.DataFrame]]:
        """Fit, choose and build once per seed on the labels before this round, label what is new (one batch), and
        append it to `candidates`. Returns the proposal rows and the validation tables (`CHOICE_COLUMNS`)."""
        s = self.settings
        configs = [c.config for c in candidates]
        fids = np.array([c.fid for c in candidates])
        bits = np.array([c.avg_bits for c in candidates])
        region = max(s.budgets)
        known = {c.config.fingerprint: c for c in candidates}
        built_rows, new, choices = [], {}, []
        for k in range(s.seeds):
            seed = s.seed + k
            fitted = fit_predictors(self.graph, self.option_table, configs, fids, s.folds, s.predictor,
                                    replace(s.training, seed=seed), seed)
            validation = validation_table(fitted.held_out, fids, bits, region)
            chosen = choose(validation, s.choice)
            tables = {"cv": validation}
            if self.test is not None:
                predicted = {name: predict(self.test.configs) for name, predict in fitted.predict.items()}
                tables["test"] = validation_table(predicted, self.test.fids, self.test.avg_bits, region)
            choices += [t.assign(round=round_, seed=k, set=name, chosen=t["predictor"] == chosen)[CHOICE_COLUMNS]
                        for name, t in tables.items()]
            table = score_table(fitted, chosen, self.graph, self.option_table, s.level,
                                references(configs, fids, bits, region))
            for budget, built in budget_configs(table, s.budgets).items():
                name = f"search r{round_} s{k} ≤{budget:.2f} bits"
                fingerprint = built.config.fingerprint
                is_new = fingerprint not in known and fingerprint not in new
                if is_new:
                    new[fingerprint] = (name, built.config, built.solution.avg_bits)
                built_rows.append({"round": round_, "seed": k, "predictor": chosen, "budget": budget, "name": name,
                                   "fingerprint": fingerprint, "avg_bits": built.solution.avg_bits,
                                   "score": built.solution.score, "note": built.note, "new": is_new})
        if new:
            names, new_configs, bits = zip(*new.values(), strict=True)
            for fid, name, config, avg_bits in zip(self.label(list(new_configs), list(names)), names, new_configs,
                                                    bits, strict=True):
                known[config.fingerprint] = Candidate(name, config, float(avg_bits), float(fid), "search")
                candidates.append(known[config.fingerprint])
        return [row | {"fid": known[row["fingerprint"]].fid} for row in built_rows], choices

    def _frontier_rows(self, candidates: list[Candidate], round_: int, previous: list[dict] | None) -> list[dict]:
        s = self.settings
        picks = labelled_frontier([c.avg_bits for c in candidates], [c.fid for c in candidates], s.budgets)
        rows = []
        for i, (budget, pick) in enumerate(zip(s.budgets, picks, strict=True)):
            best = None if pick is None else candidates[pick]
            before = None if previous is None else previous[i]["fid"]
            gain = (np.nan if best is None or before is None
                    else (np.inf if np.isnan(before) else before - best.fid))
            rows.append({"round": round_, "budget": budget, "labels": len(candidates),
                         "name": None if best is None else best.name, "source": None if best is None else best.source,
                         "avg_bits": np.nan if best is None else best.avg_bits,
                         "fid": np.nan if best is None else best.fid, "gain": gain})
        return rows
