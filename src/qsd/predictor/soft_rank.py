"""Differentiable soft ranks and the soft-Spearman ranking loss (paper §3.3, L_rank = "SRCC"; code.md §5 "Losses").

Soft rank: the pairwise-sigmoid relaxation r_i = ½ + Σ_j σ((s_i − s_j)/τ). The j = i term contributes σ(0) = ½, so
as τ → 0 r_i tends to the exact 1-based rank with ties sharing their mean rank (`exact_rank` is that limit). τ is
`temperature` times the (detached) standard deviation of the scores, so the soft rank — and the loss — do not
change when the scores are rescaled: the hop norms cannot lower the loss by growing. O(n²) in memory and time,
which is nothing at batch sizes of a few hundred; torchsort (the released code's regularised isotonic projection,
run on the CPU) is not needed. Dim 0 of `scores` holds the n items; further dims are independent lists ranked at
once (the predictor ranks all its hops in one call).

Unlike the released code, which correlated the soft ranks with the *raw* relevance (a soft Pearson, not a
Spearman), the targets are ranked exactly before correlating, so the loss is 1 − a differentiable Spearman ρ.
"""

from __future__ import annotations

import torch

from qsd.errors import InvalidSettingError

DEFAULT_TEMPERATURE = 0.1
"""τ in units of the scores' standard deviation: pairs closer than about τ are only partly ordered."""
MIN_SPREAD = 1e-8
"""Floor of the standard deviation, so that constant scores give a finite τ (all soft ranks then tie)."""
PEARSON_EPS = 1e-12
"""Added to each sum of squares, so that the correlation of a constant vector is 0 instead of NaN."""


def soft_rank(scores: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Soft 1-based ranks along dim 0 (ascending: the largest score gets about n), differentiable; same shape."""
    if not temperature > 0:
        raise InvalidSettingError(f"soft_rank temperature must be > 0, got {temperature!r}")
    tau = temperature * scores.detach().std(dim=0, correction=0).clamp_min(MIN_SPREAD)
    return 0.5 + torch.sigmoid((scores[:, None] - scores[None, :]) / tau).sum(dim=1)


def exact_rank(values: torch.Tensor) -> torch.Tensor:
    """Exact 1-based ranks along dim 0 (ties share their mean rank): `soft_rank` at τ → 0."""
    values = values.detach()
    half = torch.tensor(0.5, dtype=values.dtype, device=values.device)
    return 0.5 + torch.heaviside(values[:, None] - values[None, :], half).sum(dim=1)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along dim 0 (b broadcast against a); 0 where either is constant (or n = 1)."""
    a, b = a - a.mean(dim=0), b - b.mean(dim=0)
    spread = (a.square().sum(dim=0) + PEARSON_EPS) * (b.square().sum(dim=0) + PEARSON_EPS)
    return (a * b).sum(dim=0) / torch.sqrt(spread)


def soft_spearman_loss(scores: torch.Tensor, targets: torch.Tensor,
                       temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """1 − Pearson(soft_rank(scores), exact_rank(targets)), in [0, 2]; higher scores should go with higher targets.

    `scores` [n] or [n, L] (L lists ranked against the same targets [n]) → a loss of shape [] or [L]. Constant
    targets (or n = 1) give the constant 1 with zero gradient: there is nothing to order.
    """
    ranks = exact_rank(targets.reshape(-1)).to(scores)
    return 1 - pearson(soft_rank(scores, temperature), ranks.reshape(-1, *[1] * (scores.dim() - 1)))
