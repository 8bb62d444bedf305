"""UAQ: asymmetric uniform quantization per output channel with a clipping search (paper §3.1, code.md §1.1).

For each row x (one output channel) and each shrink ratio r in `clip_ratios`:
  1. max' = max(x)·(1-r), min' = min(x)·(1-r)   (the range shrinks toward 0)
  2. Δ = (max' - min') / (2^b - 1),  z = round(-min' / Δ), both rounded to the parameter precision (FP16)
  3. q = clamp(round(x / Δ) + z, 0, 2^b - 1),  x̂ = (q - z)·Δ
  4. score = mean(|x - x̂|^p)   (p = 2.4, the LAPQ-style norm of the original)
The ratio with the lowest score is kept, per row. A constant row gets Δ = |x| (or 1 for zeros) so it is
reproduced exactly.

One numba kernel for all bit widths, rows in parallel: each candidate is scored in one pass over the row with
no temporaries (float32 arithmetic, as in the paper's code), then the winner's codes, lookup table and
squared error (summed in float64) are written in a last pass. |e|^p = 2^(p·log2|e|) is evaluated with a
bit-level range reduction and short polynomials (relative error < 1e-5) so that the pass vectorises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from qsd.quantizers.base import PARAM_DTYPES, round_to_param

DEFAULT_CLIP_RATIOS = tuple(i / 10 for i in range(10))
ROWS_PER_TASK = 8  # rows a thread takes at a time: a busy core then delays only its current chunk
FAST = {"reassoc", "contract", "nsz"}  # lets the score sums vectorise; divisions stay exact
_F = np.float32
_LN2 = 0.6931471805599453


@intrinsic
def _bits(typingctx, x):
    """The int32 bit pattern of a float32."""
    return types.int32(types.float32), lambda context, builder, sig, args: builder.bitcast(args[0], ir.IntType(32))


@intrinsic
def _from_bits(typingctx, x):
    """The float32 with int32 bit pattern x."""
    return types.float32(types.int32), lambda context, builder, sig, args: builder.bitcast(args[0], ir.FloatType())


@numba.njit(inline="always", fastmath=FAST, error_model="numpy")
def _abs_pow(e, p):
    """|e|^p for float32 e, p > 0: |e| = 2^k·m, m in [0.75, 1.5), ln m by its atanh series, 2^f by Taylor.

    Results below 2^-126 are 0; |e|^p must stay below 2^128 (weight errors do by far).
    """
    b = _bits(e) & np.int32(0x7FFFFFFF)
    k = (b - np.int32(0x3F400000)) >> np.int32(23)
    m = _from_bits(b - (k << np.int32(23)))
    s = (m - _F(1)) / (m + _F(1))
    s2 = s * s
    ln_m = _F(2) * s * (_F(1) + s2 * (_F(1 / 3) + s2 * (_F(1 / 5) + s2 * (_F(1 / 7) + s2 * _F(1 / 9)))))
    z = p * (_F(k) + ln_m * _F(1 / _LN2))
    n = np.floor(z + _F(0.5))
    f = (z - n) * _F(_LN2)
    two_f = _F(1) + f * (
        _F(1) + f * (_F(1 / 2) + f * (_F(1 / 6) + f * (_F(1 / 24) + f * (_F(1 / 120) + f * _F(1 / 720)))))
    )
    ni = np.int32(n)
    scaled = two_f * _from_bits((max(ni, np.int32(-126)) + np.int32(127)) << np.int32(23))
    return scaled if (b != 0 and ni > -126) else _F(0)


@numba.njit(inline="always", error_model="numpy")
def _grid(lo, hi, levels, mantissa, min_exp):
    """(Δ, z) of the asymmetric grid on [lo, hi] at the parameter precision (`round_to_param`); a degenerate
    range gets Δ = |hi| (or 1), a Δ below the precision's smallest value gets that value."""
    delta = (hi - lo) / _F(levels - 1)
    if not delta > 0:
        delta = abs(hi) if hi != 0 else _F(1)
    delta = max(round_to_param(delta, mantissa, min_exp), _F(math.ldexp(1.0, min_exp - mantissa)))
    return delta, round_to_param(np.rint(-lo / delta), mantissa, min_exp)


@numba.njit(parallel=True, fastmath=FAST, error_model="numpy", cache=True)
def _uaq_rows(x, bits, factors, p, mantissa, min_exp, codes, luts, sse):
    """Per row of x [R, N] (float32) and bit width bits[a]: the best shrink factor (1 - r) by the Lp score.

    Writes codes[a] [R, N], luts[a] [R, 2^bits[a]] and sse [len(bits), R].
    """
    n = x.shape[1]
    for r in numba.prange(x.shape[0]):
        row = x[r]
        xmax, xmin = row.max(), row.min()
        for a in range(bits.shape[0]):
            levels = 1 << bits[a]
            top = _F(levels - 1)
            best, best_f = np.inf, factors[0]
            for f in factors:
                delta, zero = _grid(xmin * f, xmax * f, levels, mantissa, min_exp)
                score = _F(0)
                for t in range(n):
                    q = min(max(np.rint(row[t] / delta) + zero, _F(0)), top)
                    score += _abs_pow((q - zero) * delta - row[t], p)
                if score < best:
                    best, best_f = score, f
            delta, zero = _grid(xmin * best_f, xmax * best_f, levels, mantissa, min_exp)
            for g in range(levels):
                luts[a][r, g] = (_F(g) - zero) * delta
            err = 0.0
            for t in range(n):
                q = min(max(np.rint(row[t] / delta) + zero, _F(0)), top)
                codes[a][r, t] = np.uint8(q)
                e = np.float64((q - zero) * delta) - np.float64(row[t])
                err += e * e
            sse[a, r] = err


def quantize_uaq(
    weight2d: torch.Tensor,
    bits: Sequence[int],
    clip_ratios: Sequence[float] = DEFAULT_CLIP_RATIOS,
    clip_p: float = 2.4,
    param_dtype: str = "float16",
) -> dict[int, tuple[torch.Tensor, torch.Tensor, float]]:
    """Quantize each row of `weight2d` [O, N] with (Δ, z) at `param_dtype`; returns {bits: (codes uint8 [O, N],
    lut float32 [O, 2^b], SSE)}."""
    mantissa, min_exp = PARAM_DTYPES[param_dtype]
    x = np.ascontiguousarray(weight2d.float().numpy())
    bits = list(bits)
    factors = np.array([1 - r for r in clip_ratios], dtype=np.float32)
    codes = tuple(np.empty(x.shape, dtype=np.uint8) for _ in bits)
    luts = tuple(np.empty((x.shape[0], 1 << b), dtype=np.float32) for b in bits)
    sse = np.empty((len(bits), x.shape[0]))
    with numba.parallel_chunksize(ROWS_PER_TASK):
        _uaq_rows(x, np.array(bits), factors, np.float32(clip_p), mantissa, min_exp, codes, luts, sse)
    return {b: (torch.from_numpy(codes[a]), torch.from_numpy(luts[a]), float(sse[a].sum())) for a, b in enumerate(bits)}
