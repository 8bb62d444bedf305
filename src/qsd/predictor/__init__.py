"""The GNN sensitivity predictor (paper §3.3-§4; code.md §5): a GATv2 network over the denoiser graph with
hop-level ranking losses, its training, K-fold evaluation, and the simple baselines it is measured against."""

from qsd.predictor.baselines import BASELINES, RidgeBaseline, evaluate_baselines, make_baseline
from qsd.predictor.cross_validation import CrossValidation, cross_validate
from qsd.predictor.folds import kfold_splits
from qsd.predictor.losses import RANK_LOSSES, predictor_loss
from qsd.predictor.metrics import kendall, mae, ndcg_at_k, spearman
from qsd.predictor.model import GraphPredictor, PredictorSettings
from qsd.predictor.target import TargetExpression, paper_target
from qsd.predictor.training import TrainedPredictor, TrainSettings, train_predictor

__all__ = [
    "BASELINES", "RANK_LOSSES", "CrossValidation", "GraphPredictor", "PredictorSettings", "RidgeBaseline",
    "TargetExpression", "TrainSettings", "TrainedPredictor", "cross_validate", "evaluate_baselines", "kendall",
    "kfold_splits", "mae", "make_baseline", "ndcg_at_k", "paper_target", "predictor_loss", "spearman",
    "train_predictor",
]
