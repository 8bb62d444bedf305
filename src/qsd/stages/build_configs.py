"""Stage 05: sub-4-bit (W3.x) configurations from the sensitivity scores, labelled and compared on the FID-bits
frontier (paper §3.4, §6; notebook 05_build_configs).

Steps:
  1. Read stage 04's scores, stage 02's labels and summary and stage 03's settings (its target's λ, the
     predictor's hops, readout and loss, which the ridge yardstick and the search loop use); nothing upstream is
     re-run. A budget below the search space's lowest average bits is an error naming that lowest, before anything
     is written.
  2. Build configurations (the paper's reproduction):
     * the paper's rule — the top-scoring variant of every unit — at node and subgraph level (`rule_target`'s
       scores, the paper's −FID − λ·bits by default, so λ sets the bit width);
     * for every budget B, the exact best total score with average bits ≤ B (`qsd.search.knapsack`) from the GNN's
       scores at `level` and, as yardsticks at the same budgets, from −(per-layer quantization error) and from
       the ridge regression's per-layer coefficients (fitted on the run's random labels). These use
       `knapsack_target`'s scores (FID alone by default: the budget already holds the bits).
  3. Label every constructed configuration under stage 02's protocol into the same store (kind `constructed`,
     the name says how it was built).
  4. Optionally (`active_rounds`), predictor-guided labelling against random labelling at the same label budget
     (`qsd.search.active`).
  5. Beyond the paper, the search loop (`qsd.search.loop`): from the run's random and uniform rows and everything
     steps 3-4 labelled, `search_rounds` rounds of fit → knapsack at every budget → label → refit, each round once
     per training seed (`search_seeds`), with the predictor the labels support (`search_predictor`, auto: the GNN,
     ridge, the MLP or their ensemble, whichever ranks the held-out folds' budget region best;
     `qsd.search.predictor_choice`; stage 02's test stream is scored, never chosen with), stopping when no
     budget's frontier gains more than `stop_fid` (stage 02's float seed spread). The frontier is, per budget, the
     best labelled configuration at ≤ B average bits among all of them (uniform and random rows included: never
     worse than a labelled configuration at equal or fewer bits; the test stream is not a candidate).
  6. Compare: each construction against the random and uniform configurations; the frontier against random
     labelling (how many of the run's random labels reach it); the seeds' spread per budget.

Outputs in `data/runs/<model_id>/<run_id>/05_build_configs/`: constructions.csv (method, budget, name, avg bits,
score, FID; the loop's rows with round and seed), search.csv (the frontier after every round), configs/<name>.json,
predictor_choice.csv (per round, seed and predictor: cross-validated and test-stream Spearman, which one built),
frontier.csv (per budget the frontier's configuration and its source: what stages 06 and 07 read,
`RunFolder.frontier_config`), summary.json; figures `05_pareto_<model_id>.png`, `05_search_<model_id>.png` and,
when the active comparison ran, `05_active_<model_id>.png`.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from qsd.config import QuantConfig, QuantSpec, parse_option
from qsd.design import stream_generator
from qsd.errors import InfeasibleBudgetError, InvalidSettingError
from qsd.executors import LabelJob
from qsd.files import atomic_write
from qsd.graph import DenoiserGraph
from qsd.label_session import LabelSession
from qsd.plotting import new_figure, savefig
from qsd.predictor.model import PredictorSettings
from qsd.predictor.target import TARGETS, TargetExpression
from qsd.predictor.training import TrainSettings
from qsd.predictor.yardsticks import RidgeYardstick
from qsd.provenance import write_run_record
from qsd.run_folder import CONFIGS, FRONTIER_FILE, LABELS, PREDICTOR, RunFolder
from qsd.search.active import ActiveLoop, ActiveSettings, Pool
from qsd.search.construct import budget_config, error_scores, lowest_budget, ridge_scores, rule_config
from qsd.search.loop import (
    Candidate,
    HeldOutStream,
    LoopResult,
    LoopSettings,
    SearchLoop,
    labelled_frontier,
    random_labels_to_match,
)
from qsd.search.pareto import dominated_fraction, pareto_front
from qsd.search.predictor_choice import AUTO, CHOICES, PREDICTORS
from qsd.search.scores import LEVELS
from qsd.stages import StageSettings
from qsd.store import TEST_KIND, labelled

STAGE = CONFIGS
DEFAULT_BUDGETS = (3.3, 3.4, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0)
YARDSTICKS = ("error", "ridge")
SEARCH = "search"
"""Method name of the search loop's configurations in constructions.csv (`search r<round>`)."""
POOL_STREAM = 1
"""Seed stream of the active loop's candidate pool (`qsd.design.stream_generator`; stage 02's random stream is 0).
Earlier runs seeded it by the list (seed, 1, i), whose configuration 0 was random configuration 1."""
SUB_BITS = 3.5
"""The headline's bit bar: the best constructed configuration at ≤ this many average bits."""


@dataclass(frozen=True)
class Settings(StageSettings):
    level: str = "subgraph"
    """Which GNN scores the bit-budget configurations use: 'node' (per layer) or 'subgraph' (per unit)."""
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    """Average-bit budgets B (FP16 overhead included) of the knapsack configurations."""
    rule_target: str = "paper"
    """Stage-04 target whose scores the paper's top-1 rule uses."""
    knapsack_target: str = "fid"
    """Stage-04 target whose scores (and the ridge yardstick's target) the bit-budget configurations use."""
    yardsticks: tuple[str, ...] = YARDSTICKS
    """Simpler scores built with the same knapsack: 'error' (−per-layer error), 'ridge' (per-layer coefficients)."""
    search_rounds: int = 3
    """Rounds of the search loop (`qsd.search.loop`): fit on every label so far → knapsack at `budgets` → label
    → refit; 0 skips it (the frontier is then the best labelled configuration per budget)."""
    search_seeds: int = 3
    """Training seeds per round (folds and initialisation): each builds and labels its own configurations, which
    gives the search its own spread."""
    search_folds: int = 5
    search_epochs: int = 50
    search_predictor: str = AUTO
    """Which predictor's scores the search loop builds from: 'gnn' (the paper's), 'ridge', 'mlp', 'ensemble', or
    'auto' (the best cross-validated Spearman in the budget region, every round and seed)."""
    stop_fid: float | None = None
    """The loop stops after a round in which no budget's frontier fell by more than this FID; None: stage 02's
    float seed spread (a smaller gain is within the labels' noise)."""
    active_rounds: int = 0
    """Rounds of predictor-guided labelling compared with random labelling (`qsd.search.active`; 0 skips it: the
    search loop counts its labels against random labelling without labelling more random configurations)."""
    active_initial: int = 40
    """Random labels both arms start from."""
    active_per_round: int = 10
    """Labels the active arm adds per round."""
    active_budgets: tuple[float, ...] = (3.4, 3.6, 3.8, 4.0)
    """Budgets whose knapsack configurations measure each arm's frontier at every round."""
    active_folds: int = 3
    active_epochs: int = 50
    active_pool: int = 300
    """Unlabelled random candidates (their own seed stream) the explore step picks from."""
    w4_max_avg_bits: float = 4.5
    """The best uniform 4-bit row is taken among those with at most this many average bits (stage 02's bar)."""
    progress: bool = True

    SMOKE: ClassVar[dict[str, object]] = {"budgets": (3.4, 4.0), "search_rounds": 2, "search_seeds": 2,
                                          "search_folds": 2, "search_epochs": 2, "active_initial": 2,
                                          "active_per_round": 1, "active_budgets": (4.0,), "active_folds": 2,
                                          "active_epochs": 2, "active_pool": 8, "progress": False}

    RANGES: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "budgets": (1, 16), "active_rounds": (0, None), "active_initial": (2, None), "active_per_round": (1, None),
        "active_budgets": (1, 16), "active_folds": (2, None), "active_epochs": (1, None), "active_pool": (0, None),
        "search_rounds": (0, None), "search_seeds": (1, None), "search_folds": (2, None), "search_epochs": (1, None),
        "stop_fid": (0, None), "w4_max_avg_bits": (1, 16)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.level not in LEVELS:
            raise InvalidSettingError(f"level {self.level!r} is not one of {LEVELS}")
        for name in ("rule_target", "knapsack_target"):
            if getattr(self, name) not in TARGETS:
                raise InvalidSettingError(f"{name} {getattr(self, name)!r} is not one of {TARGETS}")
        if self.search_predictor not in CHOICES:
            raise InvalidSettingError(f"search_predictor {self.search_predictor!r} is not one of {CHOICES}")
        if unknown := set(self.yardsticks) - set(YARDSTICKS):
            raise InvalidSettingError(f"unknown yardstick(s) {sorted(unknown)}; known: {YARDSTICKS}")


@dataclass
class Result:
    settings: Settings
    directory: Path
    constructions: pd.DataFrame
    """One row per constructed configuration: method, budget (NaN for the rule), name, fingerprint, avg_bits,
    score, note, fid."""
    labels: pd.DataFrame
    """Every row of the run's store (random, uniform, float and constructed)."""
    summary: dict
    search: LoopResult
    """The search loop: its proposals per round and seed, the frontier after every round, why it stopped."""
    active: pd.DataFrame | None = None
    """The active loop's checkpoints (`qsd.search.active.ActiveResult.checkpoints`), when it ran."""


def gnn_name(level: str) -> str:
    return f"gnn-{level}"


def construct(settings: Settings, scores: pd.DataFrame, labels: pd.DataFrame, targets: dict[str, TargetExpression]
              ) -> tuple[pd.DataFrame, dict]:
    """Every configuration of step 2: (table of method, budget, name, avg_bits, score, note; name → config)."""
    def table(target: str, level: str) -> pd.DataFrame:
        rows = scores[(scores["target"] == target) & (scores["level"] == level)]
        return rows.reset_index(drop=True)

    rows, configs = [], {}
    for level in LEVELS:
        name = f"{gnn_name(level)} rule ({settings.rule_target})"
        configs[name] = rule_config(table(settings.rule_target, level))
        rows.append({"method": f"{gnn_name(level)} rule", "budget": np.nan, "name": name, "score": np.nan,
                     "note": ""})
    node = table(settings.knapsack_target, "node")
    sources = {gnn_name(settings.level): table(settings.knapsack_target, settings.level)}
    if "error" in settings.yardsticks:
        sources["error"] = error_scores(node)
    if "ridge" in settings.yardsticks:
        sources["ridge"] = ridge_scores(node, ridge_coefficients(labels, node, targets[settings.knapsack_target]))
    for method, source in sources.items():
        for budget in settings.budgets:
            name = f"{method} ≤{budget:.2f} bits"
            built = budget_config(source, budget)
            configs[name] = built.config
            rows.append({"method": method, "budget": budget, "name": name, "score": built.solution.score,
                         "note": built.note})
    return pd.DataFrame(rows), configs


def ridge_coefficients(labels: pd.DataFrame, node: pd.DataFrame, target: TargetExpression) -> pd.DataFrame:
    """The ridge regression on one-hot layer choices, fitted on the run's random labels for `target` (the run's
    stage-03 target of `knapsack_target`)."""
    random_rows = labels[(labels["kind"] == "random") & labels["fid"].notna()]
    layers = list(dict.fromkeys(node["layers"]))
    options = [o for o in map(parse_option, dict.fromkeys(node["options"])) if o is not None]  # float: its own column
    ridge = RidgeYardstick(layers, options)
    ridge.fit([QuantConfig.loads(c) for c in random_rows["config"]], target.evaluate(random_rows))
    return ridge.coefficients()


def check_budgets(settings: Settings, scores: pd.DataFrame) -> None:
    """Every budget asked for must fit the run's search space: a smaller one is an error naming the lowest."""
    node = scores[(scores["target"] == settings.knapsack_target) & (scores["level"] == "node")]
    lowest = lowest_budget(node.reset_index(drop=True))
    asked = {"budgets": settings.budgets, "active_budgets": settings.active_budgets if settings.active_rounds else ()}
    for name, budgets in asked.items():
        if too_low := [b for b in budgets if b < lowest - 1e-9]:
            raise InfeasibleBudgetError(
                f"{name} {list(too_low)} are below the lowest feasible budget of run {settings.run_id!r}: "
                f"{math.ceil(lowest * 1000) / 1000:.3f} average bits (every unit at its smallest variant); ask for "
                f"budgets of at least that")


@dataclass(frozen=True)
class PredictorRecipe:
    """How stage 05 trains fold predictors: the run's stage-03 architecture and loss (never the defaults)."""

    predictor: PredictorSettings
    loss: str

    @classmethod
    def of_run(cls, run: RunFolder) -> PredictorRecipe:
        saved = run.settings(PREDICTOR)
        return cls(PredictorSettings(hops=saved["hops"], readout=saved["readout"]), saved["loss"])

    def training(self, epochs: int, seed: int) -> TrainSettings:
        return TrainSettings(loss=self.loss, epochs=epochs, seed=seed)


def run(settings: Settings) -> Result:
    """Build, label and compare the configurations (see the module docstring)."""
    settings = settings.effective()
    run_folder = RunFolder(settings.model_id, settings.run_id)
    scores, labels = run_folder.scores(), run_folder.labels()
    check_budgets(settings, scores)
    recipe = PredictorRecipe.of_run(run_folder)
    constructions, configs = construct(settings, scores, labels, run_folder.targets())
    graph, option_table = run_folder.graph(), run_folder.option_table()
    session = LabelSession.of_run(run_folder, settings.progress)
    directory = settings.output_dir(STAGE)
    shutil.rmtree(directory / "configs", ignore_errors=True)  # every file in it is written again below
    (directory / "configs").mkdir()
    for name, config in configs.items():
        config.save(directory / "configs" / f"{_file_name(name)}.json")
    fids = dict(zip(configs, session.fids([LabelJob(config, "constructed", name) for name, config in configs.items()],
                                          progress=settings.progress), strict=True))
    constructions["fingerprint"] = [configs[n].fingerprint for n in constructions["name"]]
    constructions["avg_bits"] = [session.multiquantizer.cost(configs[n])["avg_bits"] for n in constructions["name"]]
    constructions["fid"] = [fids[n] for n in constructions["name"]]
    constructions.to_csv(directory / "constructions.csv", index=False)
    active, labelled_here = None, set(constructions["fingerprint"])
    if settings.active_rounds > 0:
        active, active_fingerprints = active_comparison(settings, session, labels, graph, option_table, recipe)
        active.to_csv(directory / "active.csv", index=False)
        labelled_here |= active_fingerprints
    else:
        (directory / "active.csv").unlink(missing_ok=True)  # an earlier run's comparison is not this run's
    current = run_folder.labels()
    loop = search(settings, session, start_candidates(current, labelled_here), graph, option_table, recipe,
                  stop_fid(settings, run_folder), test_stream(current))
    searched = loop.proposals.assign(method=[f"{SEARCH} r{r}" for r in loop.proposals["round"]])
    constructions = pd.concat([constructions, searched], ignore_index=True)
    constructions.to_csv(directory / "constructions.csv", index=False)
    loop.rounds.to_csv(directory / "search.csv", index=False)
    loop.choices.to_csv(directory / "predictor_choice.csv", index=False)
    write_frontier(directory, loop)
    labels = run_folder.labels()
    summary = ({"space": settings.run_space()} | _summary(settings, constructions, labels)
               | search_summary(loop, labels) | predictor_summary(loop.choices, settings.search_predictor)
               | ({} if active is None else active_summary(active)))
    write_run_record(directory, settings, summary)
    return Result(settings, directory, constructions, labels, summary, loop, active)


def stop_fid(settings: Settings, run: RunFolder) -> float:
    """The loop's stopping gain: the setting, or stage 02's float seed spread."""
    if settings.stop_fid is not None:
        return settings.stop_fid
    return float(run.summary(LABELS)["float_seed_fid_spread"])


def start_candidates(labels: pd.DataFrame, labelled_here: set[str]) -> list[Candidate]:
    """What the loop starts from and the frontier chooses among: the run's random and uniform rows and the
    configurations this stage labelled before the loop (a re-run starts from the same rows)."""
    rows = labels[(labels["kind"].isin(["random", "uniform"]) | labels["fingerprint"].isin(labelled_here))
                  & labels["fid"].notna()]
    return [Candidate(row.name, QuantConfig.loads(row.config), float(row.avg_bits), float(row.fid), row.kind)
            for row in rows.itertuples()]


def test_stream(labels: pd.DataFrame) -> HeldOutStream | None:
    """Stage 02's test stream (kind `test`), or None when the run labelled none."""
    rows = labelled(labels, [TEST_KIND])
    if rows.empty:
        return None
    return HeldOutStream([QuantConfig.loads(c) for c in rows["config"]], rows["fid"].to_numpy(dtype=float),
                         rows["avg_bits"].to_numpy(dtype=float))


def search(settings: Settings, session: LabelSession, start: list[Candidate], graph: DenoiserGraph,
           option_table: pd.DataFrame, recipe: PredictorRecipe, stop: float, test: HeldOutStream | None = None
           ) -> LoopResult:
    """The search loop at `budgets` from `start` (every new label goes to the store as kind `constructed`), its
    predictors scored on `test`."""
    loop_settings = LoopSettings(budgets=settings.budgets, rounds=settings.search_rounds, seeds=settings.search_seeds,
                                 folds=settings.search_folds, level=settings.level, predictor=recipe.predictor,
                                 training=recipe.training(settings.search_epochs, settings.seed), stop_fid=stop,
                                 seed=settings.seed, choice=settings.search_predictor)

    def label(batch: list[QuantConfig], names: list[str]) -> np.ndarray:
        return session.fids([LabelJob(c, "constructed", n) for c, n in zip(batch, names, strict=True)],
                            progress=False)

    return SearchLoop(graph, option_table, label, loop_settings, settings.progress, test).run(start)


def write_frontier(directory: Path, loop: LoopResult) -> None:
    """`FRONTIER_FILE`: per budget, the best labelled configuration at ≤ that many average bits (the Qua²SeDiMo
    frontier stages 06 and 07 take), each saved in configs/ and named by a path relative to this stage's folder."""
    frontier = loop.frontier()
    by_name = {c.name: c for c in loop.candidates}
    paths = [f"configs/{_file_name(name)}.json" for name in frontier["name"]]
    for name, path in zip(frontier["name"], paths, strict=True):
        by_name[name].config.save(directory / path)
    table = frontier[["budget", "name", "source", "avg_bits", "fid"]].assign(path=paths)
    atomic_write(directory / FRONTIER_FILE, lambda tmp: table.to_csv(tmp, index=False))


def search_summary(loop: LoopResult, labels: pd.DataFrame) -> dict:
    """The loop's record: rounds run and why it stopped, labels spent, the final frontier per budget, the seeds'
    spread, and against random labelling (the best of the run's random labels at each budget): how many random
    labels reach the frontier's FID, and whether the frontier is better at every budget."""
    frontier, rounds = loop.frontier(), loop.rounds
    random_rows = labels[(labels["kind"] == "random") & labels["fid"].notna()].sort_values("sample_index")
    budgets = frontier["budget"].tolist()
    needed = random_labels_to_match(random_rows["avg_bits"], random_rows["fid"], budgets, frontier["fid"])
    random_best = [None if i is None else float(random_rows["fid"].iloc[i])
                   for i in labelled_frontier(random_rows["avg_bits"], random_rows["fid"], budgets)]
    beats = [best is None or fid < best for fid, best in zip(frontier["fid"], random_best, strict=True)]
    at_start = int(rounds.loc[rounds["round"] == 0, "labels"].iloc[0])
    spread = loop.seed_spread()
    return {
        "search": {"rounds_run": int(rounds["round"].max()), "stopped": loop.stopped, "labels_at_start": at_start,
                   "labels_spent": len(loop.candidates) - at_start},
        "frontier": {f"{row.budget:.2f}": {"name": row.name, "source": row.source,
                                           "avg_bits": round(float(row.avg_bits), 4), "fid": round(float(row.fid), 4)}
                     for row in frontier.itertuples()},
        "search_seed_spread": {f"{row.budget:.2f}": {"mean": round(float(row.mean), 4), "std": round(float(row.std), 4)}
                               for row in spread.itertuples()},
        "random_labels": len(random_rows),
        "random_best_fid": {f"{b:.2f}": None if f is None else round(f, 4)
                            for b, f in zip(budgets, random_best, strict=True)},
        "random_labels_to_match": {f"{b:.2f}": n for b, n in zip(budgets, needed, strict=True)},
        "frontier_beats_random_labelling": bool(all(beats)) if beats else None,
    }


def predictor_summary(choices: pd.DataFrame, setting: str) -> dict:
    """Which predictor built the loop's configurations (how many of its fits, rounds × seeds, chose each) and every
    predictor's mean Spearman (budget region and all) and budget-region MAE over those fits: cross-validated (what
    chose) and on the test stream (what chose nothing; None when the run has none)."""
    fits = choices[choices["set"] == "cv"]

    def means(rows: pd.DataFrame) -> dict | None:
        if rows.empty:
            return None
        table = rows.groupby("predictor")[["spearman_region", "spearman", "mae_region"]].mean()
        return {p: {k: None if np.isnan(v) else round(float(v), 4) for k, v in table.loc[p].items()}
                for p in PREDICTORS if p in table.index}

    test = choices[choices["set"] == "test"]
    return {"search_predictor": {
        "setting": setting, "fits": int(fits[["round", "seed"]].drop_duplicates().shape[0]),
        "chosen": {p: int(n) for p, n in fits.loc[fits["chosen"].astype(bool), "predictor"].value_counts().items()},
        "cross_validated": means(fits), "test_stream": means(test),
        "test_configs": int(test["n"].iloc[0]) if len(test) else 0,
        "test_configs_in_region": int(test["n_region"].iloc[0]) if len(test) else 0}}


def active_comparison(settings: Settings, session: LabelSession, labels: pd.DataFrame, graph: DenoiserGraph,
                      option_table: pd.DataFrame, recipe: PredictorRecipe) -> tuple[pd.DataFrame, set[str]]:
    """Step 4: the active loop against random labelling on the run's random stream (`qsd.search.active`); the
    random configurations after the label budget are the held-out set; every new label goes to the store.
    Returns the checkpoints and the fingerprints of every configuration the loop labelled."""
    active_settings = ActiveSettings(initial=settings.active_initial, rounds=settings.active_rounds,
                                     per_round=settings.active_per_round, budgets=settings.active_budgets,
                                     folds=settings.active_folds, level=settings.level, predictor=recipe.predictor,
                                     training=recipe.training(settings.active_epochs, settings.seed),
                                     seed=settings.seed)
    stream = labels[(labels["kind"] == "random") & labels["fid"].notna()].sort_values("sample_index")
    configs, fids = [QuantConfig.loads(c) for c in stream["config"]], stream["fid"].to_numpy(dtype=float)
    n = active_settings.label_budget
    sampler = RunFolder(settings.model_id, settings.run_id).label_sampler(session.multiquantizer)
    candidates = [sampler(stream_generator(settings.seed, i, POOL_STREAM), i) for i in range(settings.active_pool)]
    pool = Pool(configs[:n], fids[:n], configs[n:], fids[n:], candidates)

    labelled: set[str] = set()

    def label(batch: list[QuantConfig], names: list[str]) -> np.ndarray:
        labelled.update(c.fingerprint for c in batch)
        return session.fids([LabelJob(c, "constructed", name) for c, name in zip(batch, names, strict=True)],
                            progress=False)

    return ActiveLoop(graph, option_table, label, active_settings, settings.progress).run(pool).checkpoints, labelled


def active_summary(checkpoints: pd.DataFrame) -> dict:
    """Per arm and round: labels, the frontier's geometric-mean FID over the budgets and the held-out Spearman; and
    the fewest labels with which the active arm's frontier is at least as good as the random arm's final one."""
    per_round = (checkpoints.assign(log_fid=np.log(checkpoints["fid"]))
                 .groupby(["arm", "round"]).agg(labels=("labels", "first"), log_fid=("log_fid", "mean"),
                                                heldout_spearman=("heldout_spearman", "first")).reset_index())
    per_round["frontier_gmean_fid"] = np.exp(per_round["log_fid"])
    arms = {arm: {"labels": rows["labels"].astype(int).tolist(),
                  "frontier_gmean_fid": [round(float(v), 3) for v in rows["frontier_gmean_fid"]],
                  "heldout_spearman": [None if np.isnan(v) else round(float(v), 4) for v in rows["heldout_spearman"]]}
            for arm, rows in per_round.groupby("arm")}
    random_final = arms["random-arm"]["frontier_gmean_fid"][-1]
    enough = [n for n, f in zip(arms["active-arm"]["labels"], arms["active-arm"]["frontier_gmean_fid"], strict=True)
              if f <= random_final]
    return {"active": arms, "active_final_beats_random": arms["active-arm"]["frontier_gmean_fid"][-1] < random_final,
            "active_labels_to_match_random": enough[0] if enough else None,
            "random_label_budget": arms["random-arm"]["labels"][-1]}


def _file_name(name: str) -> str:
    return (name.replace("≤", "le").replace(" ", "_").replace("(", "").replace(")", ""))


def _summary(settings: Settings, constructions: pd.DataFrame, labels: pd.DataFrame) -> dict:
    uniform = labels[labels["kind"] == "uniform"]
    w4 = uniform[(uniform["w_bits"] == 4) & (uniform["avg_bits"] <= settings.w4_max_avg_bits)]
    best_w4 = w4.loc[w4["fid"].idxmin()] if len(w4) else None
    built = constructions[constructions["fid"].notna()]
    sub = built[built["avg_bits"] <= SUB_BITS]
    best_sub = sub.loc[sub["fid"].idxmin()] if len(sub) else None
    random_rows = labels[(labels["kind"] == "random") & labels["fid"].notna()]
    frontiers = {}
    for method, rows in built[built["budget"].notna()].groupby("method", sort=False):
        share, judged = dominated_fraction(rows["avg_bits"], rows["fid"], random_rows["avg_bits"], random_rows["fid"],
                                           upto=float(rows["budget"].max()))
        frontiers[method] = {"budgets": [float(b) for b in rows["budget"]],
                             "avg_bits": [round(float(b), 4) for b in rows["avg_bits"]],
                             "fid": [round(float(f), 4) for f in rows["fid"]],
                             "dominated_random_share": None if judged == 0 else round(share, 4),
                             "judged_random": judged}
    wins = _budget_wins(built, gnn_name(settings.level), "error")
    return {
        "level": settings.level, "rule_target": settings.rule_target, "knapsack_target": settings.knapsack_target,
        "constructed": len(built),
        "best_uniform_w4": None if best_w4 is None else best_w4["name"],
        "best_uniform_w4_fid": None if best_w4 is None else round(float(best_w4["fid"]), 4),
        "best_uniform_w4_bits": None if best_w4 is None else round(float(best_w4["avg_bits"]), 4),
        "best_sub35": None if best_sub is None else best_sub["name"],
        "best_sub35_fid": None if best_sub is None else round(float(best_sub["fid"]), 4),
        "best_sub35_bits": None if best_sub is None else round(float(best_sub["avg_bits"]), 4),
        "sub35_beats_uniform_w4": (None if best_sub is None or best_w4 is None
                                   else bool(best_sub["fid"] <= best_w4["fid"])),
        "gnn_beats_error_knapsack": None if wins is None else bool(wins > 0.5),
        "gnn_beats_error_share": None if wins is None else round(wins, 4),
        "rule": {r["name"]: {"avg_bits": round(float(r["avg_bits"]), 4), "fid": round(float(r["fid"]), 4)}
                 for _, r in built[built["budget"].isna()].iterrows()},
        "frontiers": frontiers,
        "notes": {r["name"]: r["note"] for _, r in constructions.iterrows() if r["note"]},
    }


def _budget_wins(built: pd.DataFrame, method: str, other: str) -> float | None:
    """Share of the budgets both methods built at which `method`'s FID is lower than `other`'s."""
    a = built[built["method"] == method].set_index("budget")["fid"]
    b = built[built["method"] == other].set_index("budget")["fid"]
    common = a.index.intersection(b.index)
    return None if common.empty else float((a[common] < b[common]).mean())


def summary_text(result: Result) -> str:
    s = result.summary
    lines = [f"best uniform W4 (≤ {result.settings.w4_max_avg_bits} bits): {s['best_uniform_w4']} FID "
             f"{s['best_uniform_w4_fid']:.2f} at {s['best_uniform_w4_bits']:.3f} bits",
             f"best constructed at ≤ {SUB_BITS} bits: {s['best_sub35']} FID {s['best_sub35_fid']:.2f} at "
             f"{s['best_sub35_bits']:.3f} bits (beats uniform W4: {s['sub35_beats_uniform_w4']})",
             "stage-03 GNN knapsack beats the per-layer-error knapsack at most budgets: "
             f"{s['gnn_beats_error_knapsack']}",
             f"search loop: {s['search']['stopped']}; {s['search']['labels_spent']} labels on top of "
             f"{s['search']['labels_at_start']}; frontier better than the best of {s['random_labels']} random labels "
             f"at every budget: {s['frontier_beats_random_labelling']}",
             predictor_text(s["search_predictor"])]
    for name, row in s["rule"].items():
        lines.append(f"  {name}: {row['avg_bits']:.3f} bits, FID {row['fid']:.2f}")
    return "\n".join(lines)


def predictor_text(record: dict) -> str:
    """One line: which predictor built the loop's configurations and each one's budget-region Spearman."""
    if not record["fits"]:
        return "search predictor: the loop ran no round"
    chosen = ", ".join(f"{p} {n}/{record['fits']}" for p, n in record["chosen"].items())

    def ranks(means: dict | None) -> str:
        return ", ".join(f"{p} {'n/a' if v['spearman_region'] is None else format(v['spearman_region'], '.2f')}"
                         for p, v in means.items())

    test = (f"; on the test stream ({record['test_configs_in_region']} of {record['test_configs']} in the region): "
            f"{ranks(record['test_stream'])}" if record["test_stream"] else "; no test stream (stage 02 test_configs)")
    return (f"search predictor ({record['setting']}): built by {chosen}; budget-region Spearman, cross-validated: "
            f"{ranks(record['cross_validated'])}{test}")


def predictor_table(result: Result) -> pd.DataFrame:
    """Per predictor: how many of the loop's fits chose it and its mean Spearman (budget region, all) and
    budget-region MAE, cross-validated and on the test stream."""
    record = result.summary["search_predictor"]
    table = pd.DataFrame(index=pd.Index(PREDICTORS, name="predictor"))
    table["chosen"] = [f"{record['chosen'].get(p, 0)}/{record['fits']}" for p in PREDICTORS]
    for name, key in (("cross-validated", "cross_validated"), ("test stream", "test_stream")):
        for metric in ("spearman_region", "spearman", "mae_region"):
            table[f"{name} {metric.replace('_', ' ')}"] = [None if not record[key] or p not in record[key]
                                                           else record[key][p][metric] for p in PREDICTORS]
    return table.round(3)


def budget_table(result: Result) -> pd.DataFrame:
    """FID per budget (rows) and construction (columns: the paper's GNN and the yardsticks), with the achieved
    average bits."""
    rows = result.constructions[result.constructions["budget"].notna()
                                & ~result.constructions["method"].str.startswith(SEARCH)]
    fid = rows.pivot(index="budget", columns="method", values="fid")
    bits = rows.pivot(index="budget", columns="method", values="avg_bits").add_suffix(" bits")
    return pd.concat([fid, bits], axis=1).round(3)


def search_table(result: Result) -> pd.DataFrame:
    """Per budget: the frontier's FID after every round (round 0: before the loop), the final frontier's source and
    bits, the last round's seed mean ± std, and the best of the run's random labels."""
    rounds = result.search.rounds
    table = rounds.pivot(index="budget", columns="round", values="fid").add_prefix("FID after round ")
    final = result.search.frontier().set_index("budget")
    spread = result.search.seed_spread().set_index("budget")
    s = result.summary
    table["frontier"] = final["name"]
    table["source"] = final["source"]
    table["avg bits"] = final["avg_bits"]
    table["seeds' FID"] = [f"{spread.loc[b, 'mean']:.1f} ± {spread.loc[b, 'std']:.1f}" if b in spread.index else ""
                           for b in table.index]
    table["best random"] = [s["random_best_fid"].get(f"{b:.2f}") for b in table.index]
    needed = s["random_labels_to_match"]
    table["random labels to match"] = [("" if f"{b:.2f}" not in needed else needed[f"{b:.2f}"] or
                                        f"> {s['random_labels']}") for b in table.index]
    return table.round(2)


def active_text(result: Result) -> str:
    s = result.summary
    if "active" not in s:
        return "the active loop did not run (active_rounds = 0)"
    lines = []
    for arm, rows in s["active"].items():
        for n, fid, rho in zip(rows["labels"], rows["frontier_gmean_fid"], rows["heldout_spearman"], strict=True):
            rho_text = "n/a" if rho is None else f"{rho:.3f}"
            lines.append(f"{arm:<11} {n:4d} labels: frontier geometric-mean FID {fid:9.2f}, held-out Spearman "
                         f"{rho_text}")
    lines.append(f"active arm's final frontier better than random's at {s['random_label_budget']} labels: "
                 f"{s['active_final_beats_random']}; labels the active arm needed to match it: "
                 f"{s['active_labels_to_match_random']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- figures
def plot_pareto(result: Result) -> Figure:
    """FID vs average bits: random (grey) and uniform rows, the rule configurations and each method's budget
    frontier (lines), with the random configurations' own Pareto front."""
    s, labels, built = result.settings, result.labels, result.constructions
    fig, ax = new_figure(9, 5.2)
    random_rows = labels[labels["kind"] == "random"]
    ax.scatter(random_rows["avg_bits"], random_rows["fid"], s=10, color="0.65", alpha=0.7,
               label=f"random ({len(random_rows)})")
    front = random_rows.iloc[pareto_front(random_rows["avg_bits"], random_rows["fid"])]
    ax.step(front["avg_bits"], front["fid"], where="post", color="0.45", lw=0.9, ls=":", label="random Pareto front")
    uniform = labels[labels["kind"] == "uniform"]
    ax.scatter(uniform["avg_bits"], uniform["fid"], marker="s", s=36, facecolor="none", edgecolor="crimson",
               label="uniform")
    for row in uniform.itertuples():
        ax.annotate(QuantSpec(row.method, int(row.w_bits)).key, (row.avg_bits, row.fid), fontsize=6, color="crimson",
                    textcoords="offset points", xytext=(4, 2))
    budget_rows = built[built["budget"].notna() & built["fid"].notna()]
    searched = budget_rows["method"].str.startswith(SEARCH)
    for method, rows in budget_rows[~searched].groupby("method", sort=False):
        ax.plot(rows["avg_bits"], rows["fid"], marker="o", ms=4, lw=1.4, label=f"{method} knapsack")
    ax.scatter(budget_rows.loc[searched, "avg_bits"], budget_rows.loc[searched, "fid"], marker="x", s=18,
               color="tab:purple", alpha=0.7, label=f"search loop ({int(searched.sum())} proposals)")
    frontier = result.search.frontier()
    ax.step(frontier["avg_bits"], frontier["fid"], where="post", color="black", lw=2, label="frontier (best labelled)")
    for row in built[built["budget"].isna() & built["fid"].notna()].itertuples():
        ax.scatter(row.avg_bits, row.fid, marker="*", s=120, zorder=5, label=row.name)
    float_fid = labels.loc[labels["kind"] == "float", "fid"]
    if len(float_fid):
        ax.axhline(float_fid.iloc[0], color="black", ls="--", lw=0.8, label=f"float ({float_fid.iloc[0]:.1f})")
    ax.set_yscale("log")
    ax.set(xlabel="average bits per weight (incl. FP16 overhead)", ylabel="FID (log scale)",
           title=f"{s.subject()}: constructed configurations vs random and uniform")
    ax.legend(fontsize=7, frameon=False, bbox_to_anchor=(1.01, 1), loc="upper left")
    savefig(fig, s.figure_name("05_pareto"), s.figures_to(result.directory))
    return fig


def plot_search(result: Result) -> Figure:
    """Left: the frontier's FID per budget after every round of the search loop (round 0: before it) and the best
    of the run's random labels. Right: the last round's configurations per budget, one point per training seed,
    with the final frontier."""
    s, loop = result.settings, result.search
    fig, (left, right) = new_figure(11, 4.2, ncols=2)
    rounds = sorted(loop.rounds["round"].unique())
    colours = dict(zip(rounds, sns.color_palette("viridis", len(rounds)), strict=True))
    for round_, rows in loop.rounds.groupby("round"):
        left.plot(rows["budget"], rows["fid"], marker="o", ms=4, color=colours[round_],
                  label=f"round {round_} ({int(rows['labels'].iloc[0])} labels)")
    best_random = result.summary["random_best_fid"]
    left.plot([float(b) for b in best_random], [np.nan if f is None else f for f in best_random.values()],
              color="0.5", ls="--", marker="x", label=f"best of {result.summary['random_labels']} random labels")
    left.set_yscale("log")
    left.set(xlabel="budget (average bits)", ylabel="FID of the best labelled configuration (log)",
             title="frontier after each round")
    left.legend(fontsize=7, frameon=False)
    if len(loop.proposals):
        last = loop.proposals[loop.proposals["round"] == loop.proposals["round"].max()]
        right.scatter(last["budget"], last["fid"], marker="x", color="tab:purple",
                      label=f"round {int(last['round'].iloc[0])}, one per seed")
    frontier = loop.frontier()
    right.scatter(frontier["budget"], frontier["fid"], marker="o", facecolor="none", edgecolor="black", s=50,
                  label="frontier")
    right.set_yscale("log")
    right.set(xlabel="budget (average bits)", ylabel="labelled FID (log)", title="the search's spread over seeds")
    right.legend(fontsize=7, frameon=False)
    fig.suptitle(f"{s.subject()}: the search loop ({result.summary['search']['stopped']})", fontsize=9)
    savefig(fig, s.figure_name("05_search"), s.figures_to(result.directory))
    return fig


def plot_active(result: Result) -> Figure | None:
    """Per arm: the frontier's FID at each budget against labels used, and the held-out Spearman against labels
    (None: the active loop did not run, `active_rounds` = 0)."""
    s, checkpoints = result.settings, result.active
    if checkpoints is None:
        return None
    fig, (left, right) = new_figure(11, 4.2, ncols=2)
    budgets = sorted(checkpoints["budget"].unique())
    colours = dict(zip(budgets, sns.color_palette("viridis", len(budgets)), strict=True))
    for (arm, budget), rows in checkpoints.groupby(["arm", "budget"]):
        left.plot(rows["labels"], rows["fid"], marker="o" if arm == "active-arm" else "x", ms=4,
                  ls="-" if arm == "active-arm" else "--", color=colours[budget], label=f"{arm} ≤{budget:.1f} bits")
    left.set_yscale("log")
    left.set(xlabel="labels used", ylabel="FID of the knapsack configuration (log)", title="frontier vs labels")
    left.legend(fontsize=6, frameon=False, ncols=2)
    for arm, rows in checkpoints.groupby("arm"):
        first = rows.groupby("round").first()
        right.plot(first["labels"], first["heldout_spearman"], marker="o", label=arm)
    right.set(xlabel="labels used", ylabel="Spearman on held-out random configurations", title="ranking vs labels")
    right.legend(fontsize=7, frameon=False)
    fig.suptitle(f"{s.subject()}: predictor-guided vs random labelling")
    savefig(fig, s.figure_name("05_active"), s.figures_to(result.directory))
    return fig
