"""Stage 03: the GNN sensitivity predictor, trained and evaluated with K-fold cross-validation (paper §3.3, §4;
notebook 03_train_predictor).

Steps:
  1. The dataset: stage 02's labelled configurations (`kinds`, default the random ones, as the paper trains on),
     the denoiser's graph (`qsd.graph.DenoiserGraph`, traced from the model) and stage 01's option table, which
     give every configuration's node features.
  2. Two targets, both "higher is better": the paper's `-fid - lambda * avg_bits` and FID alone (the harder one:
     in the paper's target the exactly known bits carry part of the ranking).
  3. For each target, K seeded folds: the GNN with the chosen loss (L_orig + 1/(M+1) Σ_m L_rank, paper Eq. 3),
     and on the same folds the simple yardsticks — summed layer error, ridge regression on one-hot layer choices,
     an MLP. With `compare_losses`, the other losses too (paper target), and with `compare_readout`, the
     all-node readout against the paper's anchor-node readout.
  4. Metrics per fold and mean ± std (Spearman, Kendall τ, NDCG@10, MAE, per-hop Spearman); which method wins.
  5. The same methods on stage 02's test stream (kind `test`: configurations no fold trained on and nothing was
     chosen with), each as the mean of its fold models: Spearman and MAE, so a lead that only cross-validation
     shows is visible.

Outputs in `data/runs/<model_id>/<run_id>/03_train_predictor/`: graph.json, the fold predictors
(`predictors/<target>/<variant>/fold<k>.safetensors`, each with its settings and training time; a rerun reuses
them), metrics.csv, predictions.csv, test_stream.csv, summary.json; figures `03_graph_block_<model_id>.png`,
`03_pred_vs_true_<model_id>.png`, `03_hop_spearman_<model_id>.png`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from qsd.config import QuantConfig
from qsd.errors import InvalidSettingError, MissingFileError
from qsd.graph import DenoiserGraph
from qsd.graph.draw import draw_block
from qsd.models import load_model
from qsd.multiquant import MultiQuantizer
from qsd.plotting import new_figure, savefig
from qsd.predictor.cross_validation import CrossValidation, cross_validate
from qsd.predictor.folds import kfold_splits
from qsd.predictor.losses import RANK_LOSSES
from qsd.predictor.metrics import mae, spearman
from qsd.predictor.model import READOUTS, PredictorSettings
from qsd.predictor.target import TargetExpression, named_targets
from qsd.predictor.training import TrainSettings
from qsd.predictor.yardsticks import YARDSTICKS, evaluate_yardsticks, fold_mean_scores
from qsd.provenance import write_run_record
from qsd.run_folder import GRAPH_FILE, PREDICTOR, RunFolder, predictor_variant
from qsd.stages import StageSettings
from qsd.store import DATASET_KINDS, KINDS, TEST_KIND, labelled

STAGE = PREDICTOR


@dataclass(frozen=True)
class Settings(StageSettings):
    loss: str = "hybrid"
    """The predictor's ranking loss: mse (L_orig only), srcc (soft Spearman), lambdarank or hybrid (both)."""
    lambda_bits: float = 50.0
    """λ of the paper's target −FID − λ·avg_bits (FID units per average bit)."""
    target: str = "-fid - lambda * avg_bits"
    """The paper's target equation (store columns and `lambda`; parsed safely, never eval'd)."""
    hops: int = 4
    """M: GATv2 layers, so hop-level embeddings m = 0..M."""
    readout: str = "anchors"
    """Hop-level graph embedding: mean over the hop's anchor nodes (paper) or over all nodes."""
    epochs: int = 50
    """Training epochs per fold (AdamW at 3e-3 with a cosine schedule: converged on the default dataset, ~15 s a
    fold on 2 cores; the paper trains 10,000 on a GPU)."""
    folds: int = 5
    kinds: tuple[str, ...] = ("random",)
    """Which stage-02 rows are the dataset (the paper trains on random configurations)."""
    compare_losses: bool = True
    """Also train every other loss on the paper target (the per-hop Spearman figure compares them)."""
    compare_readout: bool = True
    """Also train the other readout (chosen loss, paper target)."""
    progress: bool = True

    SMOKE: ClassVar[dict[str, object]] = {"epochs": 3, "folds": 2, "kinds": DATASET_KINDS, "progress": False}
    RANGES: ClassVar[dict[str, tuple[float | None, float | None]]] = {"epochs": (1, None), "folds": (2, None),
                                                                      "hops": (1, None)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.kinds:
            raise InvalidSettingError("kinds must name at least one label kind, got none")
        if self.loss not in RANK_LOSSES:
            raise InvalidSettingError(f"loss {self.loss!r} is not one of {', '.join(RANK_LOSSES)}")
        if self.readout not in READOUTS:
            raise InvalidSettingError(f"readout {self.readout!r} is not one of {', '.join(READOUTS)}")
        if unknown := set(self.kinds) - set(KINDS):
            raise InvalidSettingError(f"kinds {sorted(unknown)} are not label kinds ({', '.join(KINDS)})")

    def targets(self) -> dict[str, TargetExpression]:
        """name → target: the paper's equation and FID alone."""
        return named_targets(self.target, self.lambda_bits)

    def variants(self) -> list[tuple[str, str, str]]:
        """(target, loss, readout) of every GNN this run trains; the first is the chosen one."""
        other = next(r for r in READOUTS if r != self.readout)
        runs = [("paper", self.loss, self.readout), ("fid", self.loss, self.readout)]
        runs += [("paper", loss, self.readout) for loss in RANK_LOSSES if self.compare_losses and loss != self.loss]
        runs += [("paper", self.loss, other)] if self.compare_readout else []
        return runs


@dataclass
class Dataset:
    """What the predictor learns from: the graph, the labelled configurations and the options' features."""

    graph: DenoiserGraph
    multiquantizer: MultiQuantizer
    configs: list[QuantConfig]
    labels: pd.DataFrame
    """Stage 02's rows of `configs`, same order."""
    tests: pd.DataFrame
    """Stage 02's test stream (kind `test`; empty when the run labelled none)."""

    @property
    def test_configs(self) -> list[QuantConfig]:
        return [QuantConfig.loads(text) for text in self.tests["config"]]

    def encode(self, target: TargetExpression, hops: int) -> tuple[list, np.ndarray]:
        """(graphs with targets, targets)."""
        targets = target.evaluate(self.labels)
        return self.graph.encode(self.configs, self.multiquantizer.search_space(), hops, targets), targets


@dataclass
class Result:
    settings: Settings
    directory: Path
    dataset: Dataset
    runs: dict[tuple[str, str, str], CrossValidation]
    yardsticks: pd.DataFrame
    metrics: pd.DataFrame
    summary: dict


def load_dataset(model_id: str, run_id: str, kinds: tuple[str, ...] = ("random",)) -> Dataset:
    """Stage 02's labels of `kinds` with their configurations, stage 01's multiquantizer and the traced graph."""
    run = RunFolder(model_id, run_id)
    stored = run.labels()
    labels, tests = labelled(stored, kinds), labelled(stored, [TEST_KIND])
    if len(labels) < 4:
        raise MissingFileError(f"stage 02 of run {run_id!r} has {len(labels)} labelled configurations of kinds "
                               f"{list(kinds)}; the predictor needs at least 4 (run notebook 02 with more n_configs)")
    model = load_model(model_id)
    mq = run.multiquantizer(model.denoiser)
    graph = DenoiserGraph.from_diffusion_model(model, split_concat_inputs=mq.settings.split_concat_inputs)
    return Dataset(graph, mq, [QuantConfig.loads(text) for text in labels["config"]], labels, tests)


def run(settings: Settings) -> Result:
    """Build the dataset, cross-validate every GNN variant and the yardsticks; write metrics and predictors (the
    `plot_*` functions draw and save the figures)."""
    settings = settings.effective()
    dataset = load_dataset(settings.model_id, settings.run_id, settings.kinds)
    directory = settings.output_dir(STAGE)
    dataset.graph.save(directory / GRAPH_FILE)
    splits = kfold_splits(len(dataset.configs), settings.folds, settings.seed)
    targets = settings.targets()
    encoded = {name: dataset.encode(target, settings.hops) for name, target in targets.items()}
    runs = {}
    for target, loss, readout in settings.variants():
        model_settings = PredictorSettings(hops=settings.hops, readout=readout)
        train_settings = TrainSettings(loss=loss, epochs=settings.epochs, seed=settings.seed)
        runs[target, loss, readout] = cross_validate(
            encoded[target][0], splits, model_settings, train_settings,
            directory=_folder(directory / "predictors" / target / predictor_variant(loss, readout)),
            progress=settings.progress, label=f"{target} {predictor_variant(loss, readout)}")
    mq = dataset.multiquantizer
    yardsticks = pd.concat([
        evaluate_yardsticks(dataset.configs, dataset.labels, encoded[name][1], splits, mq.unit_names, mq.options,
                            settings.seed, errors=mq.errors).assign(target=name) for name in targets],
        ignore_index=True)
    metrics = _metrics_table(runs, yardsticks)
    metrics.to_csv(directory / "metrics.csv", index=False)
    _predictions(runs, settings, dataset).to_csv(directory / "predictions.csv", index=False)
    tests = test_stream(settings, dataset, runs, splits)
    tests.to_csv(directory / "test_stream.csv", index=False)
    summary = {"space": settings.run_space()} | _summary(settings, dataset, runs, metrics, tests)
    write_run_record(directory, settings, summary)
    return Result(settings, directory, dataset, runs, yardsticks, metrics, summary)


def test_stream(settings: Settings, dataset: Dataset, runs: dict[tuple[str, str, str], CrossValidation],
                splits: list[tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One row per (target, method): the chosen GNN's and every yardstick's fold-mean scores of the test stream
    against its targets (n, Spearman, MAE; MAE NaN for a score that is not a prediction). No rows without one."""
    if dataset.tests.empty:
        return pd.DataFrame(columns=["target", "method", "n", "spearman", "mae"])
    mq, test_configs = dataset.multiquantizer, dataset.test_configs
    graphs = dataset.graph.encode(test_configs, mq.search_space(), settings.hops)
    rows = []
    for name, target in settings.targets().items():
        truth = target.evaluate(dataset.tests)
        cv = runs[name, settings.loss, settings.readout]
        scores = {predictor_variant(settings.loss, settings.readout):
                  np.mean([fold.predict(graphs) for fold in cv.predictors], axis=0)}
        train_targets = target.evaluate(dataset.labels)
        scores |= {y: fold_mean_scores(y, dataset.configs, train_targets, splits, mq.unit_names, mq.options,
                                       test_configs, settings.seed, mq.errors) for y in YARDSTICKS}
        rows += [{"target": name, "method": method, "n": len(truth), "spearman": spearman(score, truth),
                  "mae": np.nan if method == "summed_error" else mae(score, truth)}
                 for method, score in scores.items()]
    return pd.DataFrame(rows)


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _metrics_table(runs: dict[tuple[str, str, str], CrossValidation], yardsticks: pd.DataFrame) -> pd.DataFrame:
    """One row per (target, method, fold)."""
    frames = [cv.metrics.assign(target=target, method=predictor_variant(loss, readout))
              for (target, loss, readout), cv in runs.items()]
    frames.append(yardsticks.rename(columns={"yardstick": "method"}))
    table = pd.concat(frames, ignore_index=True)
    first = ["target", "method", "fold"]
    return table[first + [c for c in table.columns if c not in first]]


def _predictions(runs: dict, settings: Settings, dataset: Dataset) -> pd.DataFrame:
    frames = []
    for target in ("paper", "fid"):
        cv = runs[target, settings.loss, settings.readout]
        names = dataset.labels["name"].to_numpy()[cv.predictions["index"]]
        frames.append(cv.predictions.assign(target_name=target, config=names))
    return pd.concat(frames, ignore_index=True)


def mean_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over folds per (target, method): the table the notebook prints."""
    columns = ["spearman", "kendall", "ndcg10", "mae"]
    grouped = metrics.groupby(["target", "method"], sort=False)[columns]
    means, stds = grouped.mean(), grouped.std()
    return means.round(3).astype(str) + " ± " + stds.round(3).astype(str)


def _summary(settings: Settings, dataset: Dataset, runs: dict, metrics: pd.DataFrame, tests: pd.DataFrame) -> dict:
    means = metrics.groupby(["target", "method"], sort=False)[["spearman", "kendall", "ndcg10", "mae"]].mean()
    chosen = predictor_variant(settings.loss, settings.readout)
    per_target = {}
    for target, expression in settings.targets().items():
        rows = means.loc[target]
        baseline_rows = rows.loc[[b for b in YARDSTICKS if b in rows.index]]
        best = baseline_rows["spearman"].idxmax()
        cv = runs[target, settings.loss, settings.readout]
        per_target[target] = {
            "expression": str(expression),
            "gnn_spearman_mean": float(rows.loc[chosen, "spearman"]),
            "gnn_spearman_std": float(metrics.query("target == @target and method == @chosen")["spearman"].std()),
            "gnn_kendall_mean": float(rows.loc[chosen, "kendall"]),
            "gnn_ndcg10_mean": float(rows.loc[chosen, "ndcg10"]),
            "gnn_mae_mean": float(rows.loc[chosen, "mae"]),
            "hop_spearman_mean": [float(cv.metrics[f"hop{m}_spearman"].mean()) for m in range(settings.hops + 1)],
            "baseline_spearman_mean": {b: float(baseline_rows.loc[b, "spearman"]) for b in baseline_rows.index},
            "best_baseline": best,
            "best_baseline_spearman": float(baseline_rows.loc[best, "spearman"]),
            "gnn_beats_every_baseline": bool(rows.loc[chosen, "spearman"] > baseline_rows["spearman"].max()),
            "best_method": str(rows["spearman"].idxmax()),
            **_test_summary(tests[tests["target"] == target], chosen),
        }
    paper = means.loc["paper"]["spearman"]
    return {
        "n_configs": len(dataset.configs), "kinds": list(settings.kinds), "folds": settings.folds,
        "graph_nodes": len(dataset.graph.nodes), "graph_edges": len(dataset.graph.edges),
        "graph_units": len(dataset.graph.subgraphs), "weight_layers": len(dataset.graph.unit_names),
        "chosen": chosen, "targets": per_target,
        "loss_spearman_mean": {m: float(paper[m]) for m in paper.index if m.startswith("gnn-")},
        "train_seconds_per_fold": float(np.mean([cv.metrics["seconds"].mean() for cv in runs.values()])),
    }


def _test_summary(rows: pd.DataFrame, chosen: str) -> dict:
    """The test stream's Spearman per method and whether the GNN leads there too (None without a test stream)."""
    if rows.empty:
        return {"test_configs": 0, "test_spearman": None, "gnn_beats_every_baseline_on_test": None}
    spearmans = rows.set_index("method")["spearman"]
    return {"test_configs": int(rows["n"].iloc[0]),
            "test_spearman": {m: round(float(v), 4) for m, v in spearmans.items()},
            "gnn_beats_every_baseline_on_test": bool(spearmans[chosen] > spearmans.drop(chosen).max())}


def summary_text(result: Result) -> str:
    s = result.summary
    lines = [f"{s['n_configs']} labelled configurations, {s['folds']} folds; graph: {s['graph_nodes']} nodes "
             f"({s['weight_layers']} weight layers), {s['graph_edges']} edges, {s['graph_units']} units"]
    for target, t in s["targets"].items():
        lines.append(f"{target} target ({t['expression']}): GNN ({s['chosen']}) Spearman {t['gnn_spearman_mean']:.3f} "
                     f"± {t['gnn_spearman_std']:.3f}, NDCG@10 {t['gnn_ndcg10_mean']:.3f}; best baseline "
                     f"{t['best_baseline']} {t['best_baseline_spearman']:.3f}; best method: {t['best_method']}")
        if t["test_spearman"]:
            lines.append(f"  on the test stream ({t['test_configs']} configurations no fold saw), Spearman: "
                         + ", ".join(f"{m} {v:.3f}" for m, v in t["test_spearman"].items()))
    return "\n".join(lines)


# ---------------------------------------------------------------------- figures
def plot_graph_block(result: Result) -> Figure:
    """One block's subgraph with its nodes' roles (the middle block)."""
    graph = result.dataset.graph
    fig = draw_block(graph, graph.n_blocks // 2)
    savefig(fig, result.settings.figure_name("03_graph_block"), result.settings.figures_to(result.directory))
    return fig


def plot_pred_vs_true(result: Result) -> Figure:
    """Predicted against true target on every test fold, per target (chosen loss)."""
    s = result.settings
    fig, axes = new_figure(11, 4.6, ncols=2)
    for ax, target in zip(axes, ("paper", "fid"), strict=True):
        cv = result.runs[target, s.loss, s.readout]
        for fold, rows in cv.predictions.groupby("fold"):
            rho = cv.metrics.loc[cv.metrics["fold"] == fold, "spearman"].item()
            ax.scatter(rows["target"], rows["prediction"], s=14, alpha=0.75, label=f"fold {fold} (ρ {rho:.2f})")
        values = cv.predictions[["target", "prediction"]].to_numpy()
        low, high = values.min(), values.max()
        ax.plot([low, high], [low, high], color="0.5", lw=0.8, ls="--")
        t = result.summary["targets"][target]
        ax.set(xlabel=f"true target: {t['expression']}", ylabel="predicted",
               title=f"{target} target: Spearman {t['gnn_spearman_mean']:.3f} ± {t['gnn_spearman_std']:.3f}")
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(f"{s.subject()}: GNN ({predictor_variant(s.loss, s.readout)}) on held-out folds")
    savefig(fig, s.figure_name("03_pred_vs_true"), s.figures_to(result.directory))
    return fig


def plot_hop_spearman(result: Result) -> Figure:
    """Mean test Spearman of each hop's ‖h_G^m‖₁ and of the prediction, per loss (paper target)."""
    s = result.settings
    variants = [(loss, readout) for target, loss, readout in result.runs if target == "paper"]
    fig, ax = new_figure(9, 4.2)
    groups = [f"hop {m}" for m in range(s.hops + 1)] + ["prediction"]
    width = 0.8 / len(variants)
    for i, (loss, readout) in enumerate(variants):
        m = result.runs["paper", loss, readout].metrics
        values = [m[f"hop{h}_spearman"].mean() for h in range(s.hops + 1)] + [m["spearman"].mean()]
        errors = [m[f"hop{h}_spearman"].std() for h in range(s.hops + 1)] + [m["spearman"].std()]
        ax.bar(np.arange(len(groups)) + (i - (len(variants) - 1) / 2) * width, values, width, yerr=errors,
               capsize=2, label=predictor_variant(loss, readout))
    ax.axhline(0, color="0.3", lw=0.6)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set(ylabel="test Spearman (mean ± std over folds)", ylim=(-1, 1),
           title=f"{s.subject()}: hop-level ranking, paper target, {s.folds} folds")
    ax.legend(fontsize=8, frameon=False, ncols=2)
    savefig(fig, s.figure_name("03_hop_spearman"), s.figures_to(result.directory))
    return fig

