"""Stage 04: quantifiable sensitivity insights — node- and subgraph-level scores and their distributions (paper
§3.4, §5, Figs. 7, 12, 13; notebook 04_sensitivity_insights).

Steps:
  1. Read stage 03's graph, its fold predictors of the chosen variant for both targets (the paper's −FID − λ·bits
     and FID alone) with each fold's per-hop test Spearman, and stage 01's option table. Nothing is retrained.
  2. Score every variant of every unit at both levels (`qsd.search.scores`): node (each layer's 6 options) and
     subgraph (6^k per unit), batched.
  3. Summarise: score distributions per op type, unit type and block; the top-1 variants' method × bits per op
     type; the printed insights with their statistics (`qsd.search.insights`).

Outputs in `data/runs/<model_id>/<run_id>/04_sensitivity_insights/`: scores.parquet (every variant's score; stage
05 builds configurations from it), insights.json, summary.json; figures `04_scores_op_<model_id>.png`,
`04_scores_unit_<model_id>.png`, `04_scores_block_<model_id>.png`, `04_choices_<model_id>.png`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from qsd.errors import InvalidSettingError
from qsd.plotting import new_figure, savefig
from qsd.predictor.target import TARGETS
from qsd.provenance import write_run_record
from qsd.run_folder import SCORES, SCORES_FILE, RunFolder
from qsd.search.insights import insight_text, insights, round_statistics, winners
from qsd.search.scores import LEVELS, score_variants
from qsd.stages import StageSettings

STAGE = SCORES
OPTION_COLORS = {"float": "#424242", "kmeans_c-4": "#1f4e9c", "kmeans_c-3": "#7ea6e0", "kmeans_a-4": "#2e7d32",
                 "kmeans_a-3": "#9ccc65", "uaq-8": "#7f0000", "uaq-4": "#c62828", "uaq-3": "#ef9a9a"}
"""Method × bits colours of the stacked bars (dark = 4 bits, light = 3 bits; the extended space's float and UAQ-8
darkest)."""


@dataclass(frozen=True)
class Settings(StageSettings):
    target: str = "paper"
    """Which stage-03 target's scores the figures and insights show: 'paper' (−FID − λ·bits) or 'fid'."""
    level: str = "subgraph"
    """The level of the configuration whose choices the stacked bars show (top-1 per unit)."""
    progress: bool = True

    SMOKE: ClassVar[dict[str, object]] = {"progress": False}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target not in TARGETS:
            raise InvalidSettingError(f"target {self.target!r} is not one of {TARGETS}")
        if self.level not in LEVELS:
            raise InvalidSettingError(f"level {self.level!r} is not one of {LEVELS}")


@dataclass
class Result:
    settings: Settings
    directory: Path
    scores: pd.DataFrame
    """Every variant's score: target, level, unit, type, block, hop, layers, roles, options, size_bits,
    n_weights, error, score."""
    insights: list
    summary: dict

    def table(self, level: str, target: str | None = None) -> pd.DataFrame:
        target = target or self.settings.target
        return self.scores[(self.scores["level"] == level) & (self.scores["target"] == target)].reset_index(drop=True)


def run(settings: Settings) -> Result:
    """Score every variant at both levels for both targets; write the table, the insights and the summary."""
    settings = settings.effective()
    run = RunFolder(settings.model_id, settings.run_id)
    graph, option_table = run.graph(), run.option_table()
    scorers_of = {target: run.fold_scorers(target) for target in TARGETS}
    directory = settings.output_dir(STAGE)
    frames, folds = [], {}
    for target, scorers in scorers_of.items():
        folds[target] = len(scorers)
        for level in LEVELS:
            frames.append(score_variants(graph, scorers, option_table, level, settings.progress).assign(target=target))
    scores = pd.concat(frames, ignore_index=True)
    scores = scores[["target"] + [c for c in scores.columns if c != "target"]]
    scores.to_parquet(directory / SCORES_FILE, index=False)
    result = Result(settings, directory, scores, [], {})
    result.insights = insights(result.table("node"), result.table("subgraph"))
    records = round_statistics(result.insights)
    (directory / "insights.json").write_text(json.dumps(records, indent=1))
    counts = scores.groupby(["target", "level"]).size()
    result.summary = {
        "space": settings.run_space(), "target": settings.target,
        "units": int(scores.query("level == 'subgraph'")["unit"].nunique()),
        "layers": int(scores.query("level == 'node'")["unit"].nunique()),
        "variants_scored": {f"{t}/{lv}": int(n) for (t, lv), n in counts.items()},
        "folds": folds[settings.target],
        "insights": {r["topic"]: r["text"] for r in records},
    }
    write_run_record(directory, settings, result.summary)
    return result


def top_variants(result: Result, level: str = "subgraph", n: int = 2) -> pd.DataFrame:
    """The `n` best variants of every unit at `level` (the notebook's table): options, size, summed error, score."""
    table = result.table(level).sort_values(["unit", "score"], ascending=[True, False], kind="stable")
    columns = ["unit", "type", "options", "size_bits", "error", "score"]
    return table.groupby("unit", sort=False).head(n)[columns].reset_index(drop=True)


def summary_text(result: Result) -> str:
    s = result.summary
    counts = ", ".join(f"{k}: {v}" for k, v in s["variants_scored"].items())
    return (f"{s['layers']} layers in {s['units']} units, {s['folds']} fold predictors; variants scored ({counts})\n"
            f"insights ({s['target']} target, {s['space']} search space):\n" + insight_text(result.insights))


# ---------------------------------------------------------------------- figures
def _boxes(result: Result, table: pd.DataFrame, column: str, name: str, title: str) -> Figure:
    order = list(dict.fromkeys(table[column]))
    fig, ax = new_figure(max(6.0, 0.55 * len(order) + 2), 4.2)
    sns.boxplot(table, x=column, y="score", order=order, ax=ax, color="#9ecae1", fliersize=1.5, linewidth=0.8)
    ax.axhline(0, color="0.4", lw=0.6)
    ax.tick_params(axis="x", rotation=45)
    ax.set(xlabel="", ylabel=f"score ({result.settings.target} target, Σ over folds)",
           title=f"{result.settings.subject()}: {title}")
    savefig(fig, result.settings.figure_name(name), result.settings.figures_to(result.directory))
    return fig


def plot_op_scores(result: Result) -> Figure:
    """Node-level scores (every layer × option) per op type (paper Fig. 12)."""
    return _boxes(result, result.table("node"), "roles", "04_scores_op", "node-level scores per op type")


def plot_unit_scores(result: Result) -> Figure:
    """Subgraph-level scores (every variant of every unit) per unit type (paper Fig. 7)."""
    return _boxes(result, result.table("subgraph"), "type", "04_scores_unit", "subgraph-level scores per unit type")


def plot_block_scores(result: Result) -> Figure:
    """Subgraph-level scores per block index; units outside the blocks under their type (paper Fig. 13)."""
    table = result.table("subgraph")
    table["block_label"] = table["block"].astype(str).where(table["block"] >= 0, table["type"])
    return _boxes(result, table, "block_label", "04_scores_block", "subgraph-level scores per block")


def plot_choices(result: Result) -> Figure:
    """The top-1 configuration's method × bits per op type, as shares of its layers (paper's bar plots)."""
    s = result.settings
    chosen = winners(result.table(s.level))
    shares = pd.crosstab(chosen["role"], chosen["option"], normalize="index")
    shares = shares[[o for o in OPTION_COLORS if o in shares.columns]]
    roles = list(dict.fromkeys(chosen["role"]))
    fig, ax = new_figure(max(6.0, 0.55 * len(roles) + 2), 4.2)
    shares.loc[roles].plot.bar(stacked=True, ax=ax, color=[OPTION_COLORS[o] for o in shares.columns], width=0.8)
    ax.set(xlabel="", ylabel="share of the op type's layers", ylim=(0, 1),
           title=f"{s.subject()}: top-1 {s.level}-level choices ({s.target} target)")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=7, frameon=False, bbox_to_anchor=(1.01, 1), loc="upper left")
    savefig(fig, s.figure_name("04_choices"), s.figures_to(result.directory))
    return fig
