"""The GNN sensitivity predictor (paper §3.3-§4; code.md §5): a GATv2 network over the denoiser graph with
hop-level ranking losses, its training, K-fold evaluation, and the simple yardsticks it is measured against."""

from qsd.predictor.cross_validation import CrossValidation, cross_validate
from qsd.predictor.folds import kfold_splits
from qsd.predictor.losses import RANK_LOSSES, predictor_loss
from qsd.predictor.metrics import kendall, mae, ndcg_at_k, spearman
from qsd.predictor.model import GraphPredictor, PredictorSettings
from qsd.predictor.target import TargetExpression
from qsd.predictor.training import TrainedPredictor, TrainSettings, train_predictor
from qsd.predictor.yardsticks import YARDSTICKS, RidgeYardstick, evaluate_yardsticks, make_yardstick

__all__ = [
    "RANK_LOSSES", "YARDSTICKS", "CrossValidation", "GraphPredictor", "PredictorSettings", "RidgeYardstick",
    "TargetExpression", "TrainSettings", "TrainedPredictor", "cross_validate", "evaluate_yardsticks", "kendall",
    "kfold_splits", "mae", "make_yardstick", "ndcg_at_k", "predictor_loss", "spearman", "train_predictor",
]
