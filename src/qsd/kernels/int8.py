"""Symmetric int8 forms of activations and lookup tables for the integer (A8) LUT path (performance.md §6a.2).

activations: per row m, s_a[m] = max_j |x[m, j]| / 127 and xq = round(x / s_a) in [-127, 127];
tables: per table row r, s_w[r] = max_j |T[r, j]| / 127 and Tq = round(T / s_w).
Then x·Wᵀ ≈ s_a[m] · s_w[o] · Σ_j xq[m, j]·Tq[o, code[o, j]], whose integer sum `lut_mm_int8` computes exactly.
"""

from __future__ import annotations

import torch


def symmetric_int8(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise symmetric int8 quantization of a 2-D float tensor: (int8 values, float32 scale per row)."""
    values = values.float()
    scale = values.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    quantized = torch.round(values / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return quantized, scale


def dequantize_int32(acc: torch.Tensor, act_scale: torch.Tensor, table_scale: torch.Tensor) -> torch.Tensor:
    """float32 output s_a[m]·s_w[o]·acc[m, o] (a shared table has one scale for every o)."""
    return acc.float() * act_scale[:, None] * table_scale[None, :]
