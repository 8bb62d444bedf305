"""How well a predictor ranks configurations (paper §4, Tab. 1; code.md §5 "metrics reported").

Higher target = better configuration everywhere (targets are e.g. −FID − λ·avg_bits). NDCG uses graded
relevance from the target's percentile rank, with exponential gain so the best configurations dominate;
`ndcg_gains` is shared with the LambdaRank loss so that the loss optimises exactly the reported metric. Unlike
the released code (code.md §5, which computed NDCG@1 and called it NDCG@10), `ndcg_at_k` is NDCG at k.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

GAIN_SCALE = 5.0
"""Gain of the best configuration is 2^GAIN_SCALE − 1 (the median one's about 2^(GAIN_SCALE/2) − 1)."""


def ndcg_gains(targets: torch.Tensor) -> torch.Tensor:
    """Gain 2^(GAIN_SCALE·r) − 1 of each target, r its percentile rank in [0, 1] (ties share the mean rank)."""
    targets = torch.as_tensor(targets, dtype=torch.float64)
    n = targets.numel()
    if n < 2:
        return torch.full_like(targets, 2.0**GAIN_SCALE - 1)
    ranks = torch.as_tensor(stats.rankdata(targets.detach().cpu().numpy()), dtype=torch.float64)
    return torch.exp2(GAIN_SCALE * (ranks - 1) / (n - 1)) - 1


def ndcg_at_k(scores: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor, k: int = 10) -> float:
    """NDCG@k of ordering the configurations by `scores` (descending), relevance from `targets`."""
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    gains = ndcg_gains(torch.as_tensor(np.asarray(targets, dtype=np.float64)))
    k = min(k, gains.numel())
    discounts = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2)
    chosen = gains[torch.argsort(scores, descending=True, stable=True)[:k]]
    ideal = torch.sort(gains, descending=True).values[:k]
    best = float((ideal * discounts).sum())
    return float((chosen * discounts).sum()) / best if best > 0 else 1.0


def spearman(scores: np.ndarray, targets: np.ndarray) -> float:
    """Spearman's ρ (NaN-free: 0 when either side is constant)."""
    scores, targets = np.asarray(scores, dtype=float), np.asarray(targets, dtype=float)
    if np.ptp(scores) == 0 or np.ptp(targets) == 0:
        return 0.0
    return float(stats.spearmanr(scores, targets).statistic)


def kendall(scores: np.ndarray, targets: np.ndarray) -> float:
    """Kendall's τ-b (0 when either side is constant)."""
    scores, targets = np.asarray(scores, dtype=float), np.asarray(targets, dtype=float)
    if np.ptp(scores) == 0 or np.ptp(targets) == 0:
        return 0.0
    return float(stats.kendalltau(scores, targets).statistic)


def mae(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Mean absolute error, in the target's units."""
    return float(np.mean(np.abs(np.asarray(predictions, dtype=float) - np.asarray(targets, dtype=float))))


def ranking_metrics(scores: np.ndarray, targets: np.ndarray, k: int = 10) -> dict[str, float]:
    """Spearman, Kendall τ and NDCG@k of `scores` against `targets` (no MAE: scores need not be in units)."""
    return {"spearman": spearman(scores, targets), "kendall": kendall(scores, targets),
            f"ndcg{k}": ndcg_at_k(scores, targets, k)}
