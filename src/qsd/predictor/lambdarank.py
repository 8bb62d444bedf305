"""LambdaRank as a differentiable loss (paper §3.3, L_rank = "LambdaRank"/NDCG; code.md §5 "Losses").

    L = Σ_{(i, j): g_i > g_j} w_ij · log(1 + exp(−σ (s_i − s_j))),  w_ij = |ΔNDCG_ij| / Σ_{(k, l): g_k > g_l} |ΔNDCG_kl|

The gains g are `qsd.predictor.metrics.ndcg_gains(targets)`, the ones the reported NDCG uses, so the loss optimises
the metric. |ΔNDCG_ij| = |g_i − g_j| · |D(p_i) − D(p_j)| / IDCG is the change in NDCG from swapping i and j at their
current positions p (the ranks of the detached scores, descending), with D(p) = 1/log2(p + 2). The weights are
constants of the step, so the gradient is exactly LambdaRank's λ-gradient, scaled by one number per batch.
With `k`, D(p) = 0 beyond the top k (NDCG@k): only swaps that move an item into or within the top k count.

Normalisation: the weights sum to 1 (IDCG cancels in the ratio), so L is a weighted mean of pairwise logistic
losses — log 2 when all scores tie, whatever the batch size. Un-normalised, Σ|ΔNDCG| grows about linearly with
the batch (≈ n/8 pairs' worth at random order), which would make L outweigh the MSE by a batch-size-dependent
factor. σ is applied to the raw scores, as in the released code: the hop norms can sharpen their order by growing.

The released code injected the λs with `prediction.backward(λ)` inside the loss and then called
`optimizer.zero_grad()`, which wiped them (its NDCG variant trained with MSE only). Here the loss is an ordinary
tensor and its gradients reach the optimiser with the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qsd.errors import InvalidSettingError
from qsd.predictor.metrics import ndcg_gains

MIN_TOTAL_WEIGHT = 1e-12
"""Floor of Σ|ΔNDCG|: without a pair of different gains (n = 1, constant targets) the loss is 0."""


def lambdarank_loss(scores: torch.Tensor, targets: torch.Tensor, sigma: float = 1.0,
                    k: int | None = None) -> torch.Tensor:
    """The NDCG(@k)-weighted mean pairwise logistic loss of `scores` against `targets` [n] (higher = better).

    `scores` [n] or [n, L] (L lists ranked against the same targets) → a loss of shape [] or [L]. 0 (with zero
    gradient) when no pair has different gains: n = 1 or constant targets.
    """
    if not sigma > 0:
        raise InvalidSettingError(f"lambdarank sigma must be > 0, got {sigma!r}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise InvalidSettingError(f"lambdarank k must be None (all positions) or an integer >= 1, got {k!r}")
    order = torch.argsort(scores.detach(), dim=0, descending=True, stable=True)
    steps = torch.arange(len(scores), device=scores.device).reshape(-1, *[1] * (scores.dim() - 1))
    positions = torch.empty_like(order).scatter_(0, order, steps.expand_as(order))
    discounts = 1.0 / torch.log2(positions.to(scores) + 2)
    if k is not None:
        discounts = torch.where(positions < k, discounts, 0.0)
    gains = ndcg_gains(targets.reshape(-1)).to(scores).reshape(steps.shape)
    delta = (gains[:, None] - gains[None, :]).abs() * (discounts[:, None] - discounts[None, :]).abs()
    weights = torch.where(gains[:, None] > gains[None, :], delta, 0.0)
    pair_loss = F.softplus(-sigma * (scores[:, None] - scores[None, :]))
    return (weights * pair_loss).sum(dim=(0, 1)) / weights.sum(dim=(0, 1)).clamp_min(MIN_TOTAL_WEIGHT)
