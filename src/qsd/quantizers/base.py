"""The compact form every weight quantizer returns, its size accounting and the shared error definition.

A quantized weight of shape `[O, ...]` is stored as integer codes `[O, N]` (N = weight elements per
output channel) and a lookup table: one row of 2^b values per output channel (UAQ, K-Means-C) or one
row for the whole tensor (K-Means-A). UAQ's table row is `(q - z) * Δ` for q = 0..2^b-1, so one
dequantization path serves every method; its *size* is still accounted as the scale and zero a
deployment stores (paper §3.1; code.md §1.4).

Scales, zero points and codebooks are *stored* at the model's parameter precision (`PARAM_DTYPES`, FP16 by
default as in the paper's size accounting): every quantizer rounds its table entries (UAQ: Δ and z) to that
precision with `round_to_param` before it assigns codes, so the table that fake quantization looks up, the one
the packed export stores and the one `size_bits` counts are the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np
import torch

PARAM_DTYPES = {"float16": (10, -14), "bfloat16": (7, -126), "float32": (23, -126)}
"""Parameter precisions: (explicit mantissa bits, smallest normal exponent)."""


def param_dtype_bits(name: str) -> int:
    """Storage bits of one parameter at precision `name`."""
    return 32 if name == "float32" else 16


@numba.njit(inline="always")
def round_to_param(v, mantissa, min_exp):
    """float32 `v` rounded to the nearest value with `mantissa` explicit bits and exponent ≥ `min_exp` (below it:
    the subnormal grid), ties to even: float16 is (10, -14), bfloat16 (7, -126); mantissa 23 leaves v as is.
    Exact in float64; overflow (|v| beyond the format's range) is not handled (weights never get there)."""
    if mantissa >= 23 or v == 0 or not np.isfinite(v):
        return v
    exponent = max(math.frexp(np.float64(v))[1] - 1, min_exp)
    ulp = math.ldexp(1.0, exponent - mantissa)
    return np.float32(np.rint(np.float64(v) / ulp) * ulp)


@dataclass(frozen=True)
class QuantizedWeight:
    """Codes + lookup table for one weight (or one input-channel slice of it).

    Notation: O output channels, N = elements per output channel, b = `bits`.
    """

    method: str
    bits: int
    codes: torch.Tensor  # uint8 [O, N], values in 0..2^b-1
    lut: torch.Tensor  # float32 [O, 2^b] (per channel) or [1, 2^b] (per tensor)
    shape: tuple[int, ...]  # shape of the float weight this reproduces
    error: float | None = field(default=None, compare=False)
    """relative_error(weight, self.dequantize()) as the quantizer measured it; None when loaded from a file."""

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The fake-quantized float weight, in `shape`."""
        if self.codes.device.type == "cpu":
            values = np.empty(self.codes.shape, dtype=np.float32)
            _lookup(self.codes.numpy(), self.lut.float().numpy(), values)
            values = torch.from_numpy(values)
        elif self.lut.shape[0] == 1:
            values = self.lut[0][self.codes.long()]
        else:
            values = torch.gather(self.lut, 1, self.codes.long())
        return values.reshape(self.shape).to(dtype)

    @property
    def numel(self) -> int:
        return self.codes.numel()

    def overhead_bits(self, param_bits: int) -> int:
        """Bits beyond the indices, stored at the model's precision `param_bits` (code.md §1.4)."""
        out_channels = self.codes.shape[0]
        if self.method == "uaq":
            return 2 * param_bits * out_channels  # one scale and one zero per output channel
        if self.method == "kmeans_c":
            return (1 << self.bits) * param_bits * out_channels  # a codebook per output channel
        return (1 << self.bits) * param_bits  # kmeans_a: one codebook for the tensor

    def size_bits(self, param_bits: int) -> int:
        """Index bits plus overhead."""
        return self.bits * self.numel + self.overhead_bits(param_bits)


@numba.njit(cache=True)
def _lookup(codes, lut, out):
    """out[r, t] = lut[r, codes[r, t]] (lut [R, K]) or lut[0, codes[r, t]] (lut [1, K])."""
    shared = lut.shape[0] == 1
    for r in range(codes.shape[0]):
        table = lut[0] if shared else lut[r]
        for t in range(codes.shape[1]):
            out[r, t] = table[codes[r, t]]


@numba.njit(fastmath=True, cache=True)
def _sum_squares(x):
    """Σ x² in float64 over a float32 [R, N] array."""
    acc = 0.0
    for r in range(x.shape[0]):
        for t in range(x.shape[1]):
            acc += np.float64(x[r, t]) * np.float64(x[r, t])
    return acc


def relative_errors_from_sse(weight2d: torch.Tensor, sse: dict[int, float]) -> dict[int, float]:
    """relative_error of approximations of `weight2d` (float32, CPU) given their squared errors Σ(w - ŵ)²."""
    power = _sum_squares(np.ascontiguousarray(weight2d.numpy()))
    return {k: float(np.float32(v / power if power > 0 else v / weight2d.numel())) for k, v in sse.items()}


def relative_error(weight: torch.Tensor, approx: torch.Tensor) -> float:
    """The one error definition for every method: mean squared error / mean square of the weight.

    Computed and returned in float32 precision or better (the original stored fp16 and mixed two
    reductions across methods; code.md §1.3).
    """
    w = weight.double()
    power = w.square().mean()
    err = (w - approx.double()).square().mean()
    return float((err / power).float()) if power > 0 else float(err.float())
