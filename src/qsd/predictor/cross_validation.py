"""K-fold evaluation of the GNN predictor (paper §4, Tab. 1; code.md §5 "Folds", "Metrics reported").

Each fold trains one predictor on the other folds and is scored on its own: Spearman ρ, Kendall τ, NDCG@10 and
MAE of the prediction, and Spearman of every hop's ‖h_G^m‖₁ (the hop-level ranking the loss trains). A fold's
predictor is saved as soon as it is trained and reused by a rerun with the same settings (an interrupted run
resumes at the first missing fold).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch_geometric.data import Data
from tqdm.auto import tqdm

from qsd.errors import CorruptFileError
from qsd.files import write_json
from qsd.predictor.metrics import mae, ranking_metrics, spearman
from qsd.predictor.model import PredictorSettings
from qsd.predictor.training import TrainedPredictor, TrainSettings, train_predictor


@dataclass
class CrossValidation:
    """Per-fold metrics, every test prediction, and the fold predictors."""

    metrics: pd.DataFrame
    """One row per fold: fold, n_train, n_test, spearman, kendall, ndcg10, mae, hop{m}_spearman, seconds."""
    predictions: pd.DataFrame
    """One row per configuration: index (into the evaluated list), fold, target, prediction."""
    predictors: list[TrainedPredictor]

    def summary(self) -> dict[str, float]:
        """Mean and std over folds of every metric."""
        columns = [c for c in self.metrics.columns if c not in ("fold", "n_train", "n_test")]
        return {f"{c}_{stat}": float(getattr(self.metrics[c], stat)()) for c in columns for stat in ("mean", "std")}


def fold_metrics(predictions: np.ndarray, norms: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Test metrics of a predictor's `predictions` [n] and hop norms [n, M+1] against the true `targets`."""
    return {**ranking_metrics(predictions, targets), "mae": mae(predictions, targets),
            **{f"hop{m}_spearman": spearman(norms[:, m], targets) for m in range(norms.shape[1])}}


def _cached(path: Path | None, model_settings: PredictorSettings, train_settings: TrainSettings, n_train: int
            ) -> tuple[TrainedPredictor, float] | None:
    """A saved fold predictor with the same settings and training-set size, and its training seconds."""
    meta = path.with_suffix(".json") if path is not None else None
    if meta is None or not (path.is_file() and meta.is_file()):
        return None
    try:
        record = json.loads(meta.read_text())
        predictor = TrainedPredictor.load(path)
    except (json.JSONDecodeError, CorruptFileError):
        return None  # a fold cut short while writing: train it again
    same = (predictor.model_settings == model_settings and predictor.train_settings == train_settings
            and record.get("n_train") == n_train)
    return (predictor, float(record["seconds"])) if same else None


def cross_validate(graphs: Sequence[Data], splits: Sequence[tuple[np.ndarray, np.ndarray]],
                   model_settings: PredictorSettings, train_settings: TrainSettings, directory: Path | None = None,
                   progress: bool = False, label: str = "") -> CrossValidation:
    """Train and test one predictor per split (each graph carries its target `y`). With `directory`, fold k's
    predictor is `fold{k}.safetensors` (+ `.json` with its training time) there, reused when its settings match."""
    targets = np.array([float(g.y) for g in graphs])
    rows, predictions, predictors = [], [], []
    for fold, (train, test) in enumerate(tqdm(splits, desc=f"folds {label}".strip(), disable=not progress)):
        path = directory / f"fold{fold}.safetensors" if directory is not None else None
        cached = _cached(path, model_settings, train_settings, len(train))
        if cached is None:
            start = time.perf_counter()
            predictor = train_predictor([graphs[i] for i in train], model_settings, train_settings)
            seconds = time.perf_counter() - start
            if path is not None:
                predictor.save(path)
                write_json(path.with_suffix(".json"), {"n_train": len(train), "seconds": seconds})
        else:
            predictor, seconds = cached
        test_graphs = [graphs[i] for i in test]
        predicted = predictor.predict(test_graphs)
        metrics = fold_metrics(predicted, predictor.hop_norms(test_graphs), targets[test])
        rows.append({"fold": fold, "n_train": len(train), "n_test": len(test), **metrics, "seconds": seconds})
        predictions += [{"index": int(i), "fold": fold, "target": targets[i], "prediction": p}
                        for i, p in zip(test, predicted, strict=True)]
        predictors.append(predictor)
    return CrossValidation(pd.DataFrame(rows), pd.DataFrame(predictions).sort_values("index", ignore_index=True),
                           predictors)
