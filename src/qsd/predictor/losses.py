"""The predictor's training objective (paper §3.3, slide 14; code.md §5 "Losses"):

    L = L_orig(y, y′) + w · 1/(M+1) · Σ_{m=0..M} L_rank(y, ‖h_G^m‖₁)

L_orig is the MSE of the prediction against the (standardised) target; L_rank is "srcc" (`soft_spearman_loss`),
"lambdarank" (`lambdarank_loss`) or "hybrid" (their sum); "mse" keeps L_orig alone (the ablation). Every hop is
ranked, as in the paper's formula (the released code ranked a per-model subset of hops, e.g. {0, 1, 4} for DiT).

No ranking term is put on the prediction y′ itself: the paper's formula has none, the MSE already orders y′, and
keeping L_rank on the hop norms only lets "mse" vs the others measure exactly what the hop-level ranking adds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qsd.errors import InvalidSettingError
from qsd.predictor.lambdarank import lambdarank_loss
from qsd.predictor.soft_rank import soft_spearman_loss

RANK_LOSSES = ("mse", "srcc", "lambdarank", "hybrid")
RANK_TERMS = {"mse": (), "srcc": ("srcc",), "lambdarank": ("lambdarank",), "hybrid": ("srcc", "lambdarank")}
"""The ranking terms each loss kind adds to the MSE."""
_TERM_FUNCTIONS = {"srcc": soft_spearman_loss, "lambdarank": lambdarank_loss}


def check_loss_kind(kind: str) -> None:
    if kind not in RANK_LOSSES:
        raise InvalidSettingError(f"unknown predictor loss {kind!r}; choose one of {', '.join(RANK_LOSSES)}")


def predictor_loss(prediction: torch.Tensor, y: torch.Tensor, hop_norms: torch.Tensor, kind: str,
                   rank_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of a batch and its parts as floats ("mse", each ranking term averaged over hops, "total").

    `prediction`, `y`: [B]; `hop_norms`: [B, M+1] (‖h_G^m‖₁ per graph); `rank_weight`: w above.
    """
    check_loss_kind(kind)
    if not (math.isfinite(rank_weight) and rank_weight >= 0):
        raise InvalidSettingError(f"rank_weight must be a finite number >= 0, got {rank_weight!r}")
    y = y.reshape(-1).to(prediction)
    total = F.mse_loss(prediction.reshape(-1), y)
    parts = {"mse": float(total.detach())}
    for name in RANK_TERMS[kind]:
        term = _TERM_FUNCTIONS[name](hop_norms, y).mean()
        total = total + rank_weight * term
        parts[name] = float(term.detach())
    parts["total"] = float(total.detach())
    return total, parts
