"""The one way stages meet: a run's folder, what each stage writes there, and the readers later stages use.

A run is `data/runs/<model_id>/<run_id>/`, one sub-folder per notebook (DESIGN.md). A stage reads what earlier
stages wrote through `RunFolder`, settings included, and never re-runs them: a missing file is the one
`MissingFileError` naming the notebook to run first. File names live here, so writer and reader agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from qsd.config import QuantConfig
from qsd.design import DEFAULT_BITS_RANGE, ConfigSampler, config_sampler
from qsd.errors import CorruptFileError, InfeasibleBudgetError, MissingFileError, ModelMismatchError
from qsd.graph import DenoiserGraph
from qsd.multiquant import MultiQuantizer
from qsd.paths import project_root
from qsd.predictor.target import TargetExpression, named_targets
from qsd.predictor.training import TrainedPredictor
from qsd.search.scores import FoldScorer
from qsd.store import LabelStore

STAGES = ("00_train_denoisers", "01_multiquantizer", "02_label_configs", "03_train_predictor",
          "04_sensitivity_insights", "05_build_configs", "06_final_comparison", "07_kernels_and_export")
"""Every stage's folder, named after its notebook `notebooks/<stage>.ipynb`."""
DENOISERS, MULTIQUANTIZER, LABELS, PREDICTOR, SCORES, CONFIGS, COMPARISON, EXPORT = STAGES

MULTIQUANTIZER_FILE = "multiquantizer.safetensors"
OPTION_TABLE_FILE = "search_space.csv"
LABELS_FILE = "labels.sqlite"
GRAPH_FILE = "graph.json"
SCORES_FILE = "scores.parquet"
FRONTIER_FILE = "frontier.csv"
"""Stage 05's Qua²SeDiMo frontier: the configurations stages 06 and 07 take (budget, name, avg_bits, fid, path)."""
COMPARISON_FILE = "comparison.csv"
"""Stage 06's table: one row per measured method (name, family, method, convention, avg_bits, a_bits, FID per seed)."""
RULES_FILE = "rules.csv"
"""Stage 06's rule table (`final_comparison.rule_table`): per method and source ('this run' / 'released') the rules."""
BUDGET_TOLERANCE = 1e-9


def predictor_variant(loss: str, readout: str) -> str:
    """Stage 03's name of a GNN variant (its folder under `predictors/<target>/` and its `method` in metrics.csv)."""
    return f"gnn-{loss}" + ("" if readout == "anchors" else f"-{readout}")


@dataclass(frozen=True)
class RunFolder:
    """Run `run_id` of `model_id`: where each stage writes, and the readers of what earlier stages wrote."""

    model_id: str
    run_id: str

    def path(self, stage: str) -> Path:
        """Stage `stage`'s folder (not created)."""
        return project_root() / "data" / "runs" / self.model_id / self.run_id / stage

    def require(self, stage: str, name: str, what: str) -> Path:
        """The file `name` that `stage` writes, or the error naming the notebook to run first."""
        path = self.path(stage) / name
        if not path.exists():
            raise MissingFileError(f"no {what} at {path}: run notebooks/{stage}.ipynb with model_id={self.model_id!r}, "
                                   f"run_id={self.run_id!r} first (make reproduce runs the notebooks in order)")
        return path

    def settings(self, stage: str) -> dict:
        """The settings `stage` ran with (its settings.json: the effective settings)."""
        return json.loads(self.require(stage, "settings.json", f"stage-{stage[:2]} settings").read_text())

    def summary(self, stage: str) -> dict:
        """What `stage` measured (its summary.json)."""
        return json.loads(self.require(stage, "summary.json", f"stage-{stage[:2]} summary").read_text())

    def sampled_seeds(self) -> set[int]:
        """The noise seeds stages 00-02 sampled with, read from their settings: stage 02's labelling seed and the next
        `float_seeds − 1` (its float spread; stage 05 labels at the same seed), and the `seed` of stages 00 and 01
        where they ran. A held-out evaluation uses none of them."""
        labels = self.settings(LABELS)
        seeds = {labels["seed"] + i for i in range(labels["float_seeds"])}
        return seeds | {self.settings(stage)["seed"] for stage in (DENOISERS, MULTIQUANTIZER)
                        if (self.path(stage) / "settings.json").is_file()}

    # ------------------------------------------------------------------ stage 01
    def space(self) -> str:
        """The run's search space (`qsd.space`): stage 01's `space`; 'paper' before stage 01 ran or spaces existed."""
        path = self.path(MULTIQUANTIZER) / "settings.json"
        return json.loads(path.read_text()).get("space", "paper") if path.is_file() else "paper"

    def multiquantizer(self, denoiser: torch.nn.Module) -> MultiQuantizer:
        """Stage 01's multiquantizer for `denoiser`'s weights (a mismatched file is an error, never a rebuild)."""
        path = self.require(MULTIQUANTIZER, MULTIQUANTIZER_FILE, "multiquantizer")
        try:
            return MultiQuantizer.load(path, denoiser)
        except (ModelMismatchError, CorruptFileError) as exc:
            raise type(exc)(f"{exc}\nThe saved multiquantizer does not fit this model any more: run "
                            f"notebooks/{MULTIQUANTIZER}.ipynb with model_id={self.model_id!r}, "
                            f"run_id={self.run_id!r} again") from None

    def option_table(self) -> pd.DataFrame:
        """Stage 01's option table: every layer × option with its size and error."""
        return pd.read_csv(self.require(MULTIQUANTIZER, OPTION_TABLE_FILE, "option table"))

    # ------------------------------------------------------------------ stage 02
    def labels(self) -> pd.DataFrame:
        """Every labelled row of the run's dataset (stage 02's store, with what stage 05 added)."""
        with LabelStore(self.require(LABELS, LABELS_FILE, "labelled configurations")) as store:
            return store.to_pandas()

    def label_sampler(self, multiquantizer: MultiQuantizer) -> ConfigSampler:
        """The label design stage 02 drew its random configurations with (`qsd.design`; a run saved before designs
        existed drew by the paper's scheme)."""
        saved = self.settings(LABELS)
        return config_sampler(saved.get("design", "paper"), multiquantizer,
                              tuple(saved.get("design_bits", DEFAULT_BITS_RANGE)))

    # ------------------------------------------------------------------ stage 03
    def graph(self) -> DenoiserGraph:
        """The denoiser graph stage 03 traced."""
        return DenoiserGraph.load(self.require(PREDICTOR, GRAPH_FILE, "denoiser graph"))

    def targets(self) -> dict[str, TargetExpression]:
        """Stage 03's targets under its own λ and equation."""
        settings = self.settings(PREDICTOR)
        return named_targets(settings["target"], settings["lambda_bits"])

    def fold_scorers(self, target: str) -> list[FoldScorer]:
        """Stage 03's fold predictors of its chosen variant (its own loss and readout) for `target`, each with its
        per-hop test Spearman."""
        settings = self.settings(PREDICTOR)
        chosen = predictor_variant(settings["loss"], settings["readout"])
        metrics = pd.read_csv(self.require(PREDICTOR, "metrics.csv", "predictor metrics"))
        rows = metrics[(metrics["target"] == target) & (metrics["method"] == chosen)].sort_values("fold")
        scorers = []
        for row in rows.itertuples():
            path = self.require(PREDICTOR, f"predictors/{target}/{chosen}/fold{row.fold}.safetensors",
                                f"{chosen} fold predictor")
            predictor = TrainedPredictor.load(path)
            quality = [float(getattr(row, f"hop{m}_spearman")) for m in range(predictor.model_settings.hops + 1)]
            scorers.append(FoldScorer(predictor, quality))
        if not scorers:
            raise MissingFileError(f"stage 03 in {self.path(PREDICTOR)} has no {chosen} folds for target {target!r}: "
                                   f"run notebooks/{PREDICTOR}.ipynb with model_id={self.model_id!r}, "
                                   f"run_id={self.run_id!r} again")
        return scorers

    # ------------------------------------------------------------------ stage 04
    def scores(self) -> pd.DataFrame:
        """Stage 04's score table (every variant of every unit, both levels and targets)."""
        return pd.read_parquet(self.require(SCORES, SCORES_FILE, "scores"))

    # ------------------------------------------------------------------ stage 05
    def frontier(self) -> pd.DataFrame:
        """Stage 05's Qua²SeDiMo frontier (`FRONTIER_FILE`), sorted by budget, with each configuration's path."""
        rows = pd.read_csv(self.require(CONFIGS, FRONTIER_FILE, "Qua²SeDiMo frontier")).sort_values("budget")
        return rows.assign(path=[str(self.path(CONFIGS) / p) for p in rows["path"]]).reset_index(drop=True)

    def frontier_config(self, budget: float) -> tuple[QuantConfig, dict]:
        """The frontier's configuration at the largest built budget ≤ `budget`: (config, its frontier row). A budget
        below every built one is an error naming the lowest."""
        rows = self.frontier()
        below = rows[rows["budget"] <= budget + BUDGET_TOLERANCE]
        if not len(below):
            raise InfeasibleBudgetError(
                f"stage 05 of run {self.run_id!r} built no configuration at ≤ {budget} average bits; its lowest is "
                f"{rows['budget'].min()} bits (built: {', '.join(map(str, rows['budget']))}): ask for at least that, "
                f"or run notebooks/{CONFIGS}.ipynb with that budget")
        row = below.iloc[-1].to_dict()
        return QuantConfig.load(row["path"]), row
