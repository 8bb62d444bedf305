"""UAQ: asymmetric uniform quantization per output channel with a clipping search (paper §3.1, code.md §1.1).

For each row x (one output channel) and each shrink ratio r in `clip_ratios`:
  1. max' = max(x)·(1-r), min' = min(x)·(1-r)   (the range shrinks toward 0)
  2. Δ = (max' - min') / (2^b - 1),  z = round(-min' / Δ)
  3. q = clamp(round(x / Δ) + z, 0, 2^b - 1),  x̂ = (q - z)·Δ
  4. score = mean(|x - x̂|^p)   (p = 2.4, the LAPQ-style norm of the original)
The ratio with the lowest score is kept, per row. All rows and ratios are vectorised.
A constant row gets Δ = |x| (or 1 for zeros) so it is reproduced exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_CLIP_RATIOS = tuple(i / 10 for i in range(10))
ROW_CHUNK_ELEMENTS = 1 << 24  # bounds the temporary [rows, N] tensors to ~64 MB each


def _fake_quant(x, lo, hi, levels):
    delta = (hi - lo) / (levels - 1)
    delta = torch.where(delta > 0, delta, torch.where(hi != 0, hi.abs(), torch.ones_like(hi)))
    zero = torch.round(-lo / delta)
    q = torch.clamp(torch.round(x / delta) + zero, 0, levels - 1)
    return q, delta, zero


def quantize_uaq(
    weight2d: torch.Tensor,
    bits: Sequence[int],
    clip_ratios: Sequence[float] = DEFAULT_CLIP_RATIOS,
    clip_p: float = 2.4,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Quantize each row of `weight2d` [O, N]; returns {bits: (codes uint8 [O, N], lut float32 [O, 2^b])}."""
    x_all = weight2d.float()
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    rows_per_chunk = max(1, ROW_CHUNK_ELEMENTS // max(1, x_all.shape[1]))
    for b in bits:
        levels = 1 << b
        codes = torch.empty(x_all.shape, dtype=torch.uint8)
        lut = torch.empty(x_all.shape[0], levels)
        for start in range(0, x_all.shape[0], rows_per_chunk):
            x = x_all[start : start + rows_per_chunk]
            xmax = x.amax(dim=1, keepdim=True)
            xmin = x.amin(dim=1, keepdim=True)
            best_score = torch.full_like(xmax, float("inf"))
            best_scale = torch.zeros_like(xmax)
            for r in clip_ratios:
                q, delta, zero = _fake_quant(x, xmin * (1 - r), xmax * (1 - r), levels)
                score = ((q - zero) * delta - x).abs().pow(clip_p).mean(dim=1, keepdim=True)
                better = score < best_score
                best_score = torch.where(better, score, best_score)
                best_scale = torch.where(better, torch.full_like(xmax, r), best_scale)
            q, delta, zero = _fake_quant(x, xmin * (1 - best_scale), xmax * (1 - best_scale), levels)
            codes[start : start + rows_per_chunk] = q.to(torch.uint8)
            grid = torch.arange(levels, dtype=torch.float32)
            lut[start : start + rows_per_chunk] = (grid - zero) * delta
        out[b] = (codes, lut)
    return out
