"""K-Means-C and K-Means-A: 1-D k-means codebooks (paper §3.1; code.md §1.2-1.3; performance.md §5).

K-Means-C fits one codebook of 2^b centroids per output channel, K-Means-A one for the whole tensor,
both minimising the squared error. The original ran randomly initialised Lloyd (sklearn) per channel in
a Python loop; here the codebooks come from the deterministic DP of `qsd.quantizers.kmeans1d`.

K-Means-C, per row (rows in parallel, numba `prange`):
  1. radix-sort the row (only over the key bits that vary), collapse equal values into (u, c)
  2. codebooks for every requested K from one DP (`solver`: "coarse_to_fine", the default, or "exact"), their
     centroids rounded to the parameter precision (FP16 by default, `round_to_param`)
  3. codes = nearest centroid = the number of centroid midpoints below the value (ties to the lower code)
K-Means-A, always exact: if every value is a float16 (or bfloat16) value, as for the fp16 checkpoints,
the distinct values and counts come from a histogram of the 65,536 bit patterns and codes from a
per-pattern table; otherwise the flattened tensor is one K-Means-C row.
Every quantizer also returns its squared error Σ(w - ŵ)² against the float32 codebook, summed in float64.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numba
import numpy as np
import torch

from qsd.quantizers.base import PARAM_DTYPES, round_to_param
from qsd.quantizers.kmeans1d import check_solver, codebooks

if "NUMBA_THREADING_LAYER" not in os.environ:
    # numba's OpenMP layer leaves its threads spinning after a parallel kernel; on a busy 2-core machine torch's
    # own OpenMP threads then crawl (ops measured up to 700× slower). The work-queue layer does not spin.
    numba.config.THREADING_LAYER = "workqueue"

ROWS_PER_TASK = 4  # rows a thread takes at a time: a busy core then delays only its current chunk

_PATTERNS = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16)
_VALUES16 = {dt: _PATTERNS.view(dt).double().numpy() for dt in (torch.float16, torch.bfloat16)}
"""The value of each 16-bit pattern (index = the pattern as uint16)."""
_ORDER16 = {dt: np.argsort(v, kind="stable")[: np.count_nonzero(~np.isnan(v))] for dt, v in _VALUES16.items()}
"""The bit patterns in ascending order of value, NaNs left out."""


# ------------------------------------------------------------------------------------------ K-Means-C
@numba.njit(cache=True, nogil=True)
def _sorted(row):
    """A float32 row sorted ascending: LSD radix sort (≤ 11-bit digits) over only the key bits that vary."""
    n = row.shape[0]
    keys = np.empty(n, dtype=np.uint32)
    bits = row.view(np.uint32)
    for t in range(n):  # order-preserving key: flip all bits of negatives, the sign bit of the rest
        keys[t] = ~bits[t] if bits[t] >> np.uint32(31) else bits[t] | np.uint32(0x80000000)
    varying = np.uint32(0)
    for t in range(n):
        varying |= keys[t] ^ keys[0]
    lo, hi = 32, 0
    for bit in range(32):
        if varying >> np.uint32(bit) & np.uint32(1):
            lo, hi = min(lo, bit), bit + 1
    passes = max(hi - lo + 10, 0) // 11
    width = (hi - lo + passes - 1) // passes if passes > 0 else 0
    mask = np.uint32((1 << width) - 1)
    other = np.empty(n, dtype=np.uint32)
    count = np.empty((1 << width) + 1, dtype=np.int64)
    for p in range(passes):
        shift = np.uint32(lo + p * width)
        count[:] = 0
        for t in range(n):
            count[((keys[t] >> shift) & mask) + 1] += 1
        for g in range(1 << width):
            count[g + 1] += count[g]
        for t in range(n):
            g = (keys[t] >> shift) & mask
            other[count[g]] = keys[t]
            count[g] += 1
        keys, other = other, keys
    for t in range(n):
        other[t] = keys[t] ^ np.uint32(0x80000000) if keys[t] >> np.uint32(31) else ~keys[t]
    return other.view(np.float32)


@numba.njit(cache=True, nogil=True)
def _distinct(sorted_row):
    """Distinct values of a sorted row centred on the row mean (float64), their counts, the mean."""
    n = sorted_row.shape[0]
    mean = 0.0
    for t in range(n):
        mean += sorted_row[t]
    mean /= n
    u = np.empty(n)
    c = np.empty(n)
    d = 0
    for t in range(n):
        if d > 0 and sorted_row[t] == sorted_row[t - 1]:
            c[d - 1] += 1.0
        else:
            u[d] = sorted_row[t] - mean
            c[d] = 1.0
            d += 1
    return u[:d], c[:d], mean


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _assign(row, lut, codes, count):
    """codes[t] = #{midpoints of lut < row[t]}; returns Σ (row - lut[codes])² in float64."""
    count[:] = 0
    for g in range(lut.shape[0] - 1):
        mid = (lut[g + 1] + lut[g]) / np.float32(2)
        for t in range(row.shape[0]):
            count[t] += row[t] > mid
    err = 0.0
    for t in range(row.shape[0]):
        codes[t] = count[t]
        e = np.float64(lut[count[t]]) - np.float64(row[t])
        err += e * e
    return err


@numba.njit(cache=True, nogil=True)
def _round_codebook(lut, mantissa, min_exp):
    """Centroids to the parameter precision, in place (rounding is monotone: the codebook stays sorted)."""
    for g in range(lut.shape[0]):
        lut[g] = round_to_param(lut[g], mantissa, min_exp)


@numba.njit(parallel=True, cache=True)
def _kmeans_c(x, ks, exact, mantissa, min_exp, codes, luts, sse):
    """Every row of x [R, N] (float32): codes[a] [R, N], luts[a] [R, ks[a]], sse [len(ks), R]."""
    for r in numba.prange(x.shape[0]):
        row = x[r]
        u, c, mean = _distinct(_sorted(row))
        codebooks(u, c, mean, ks, exact, [luts[a][r] for a in range(ks.shape[0])])
        count = np.empty(row.shape[0], dtype=np.uint8)
        for a in range(ks.shape[0]):
            _round_codebook(luts[a][r], mantissa, min_exp)
            sse[a, r] = _assign(row, luts[a][r], codes[a][r], count)


def quantize_kmeans_c(
    weight2d: torch.Tensor, bits: Sequence[int], solver: str = "coarse_to_fine", param_dtype: str = "float16"
) -> dict[int, tuple[torch.Tensor, torch.Tensor, float]]:
    """K-Means-C: one codebook per output channel (row), centroids at `param_dtype`; {bits: (codes [O, N],
    lut [O, 2^b], SSE)}."""
    exact = check_solver(solver)
    mantissa, min_exp = PARAM_DTYPES[param_dtype]
    bits = sorted(bits)
    x = np.ascontiguousarray(weight2d.float().numpy())
    codes = tuple(np.empty(x.shape, dtype=np.uint8) for _ in bits)
    luts = tuple(np.empty((x.shape[0], 1 << b), dtype=np.float32) for b in bits)
    sse = np.empty((len(bits), x.shape[0]))
    with numba.parallel_chunksize(ROWS_PER_TASK):
        _kmeans_c(x, np.array([1 << b for b in bits]), exact, mantissa, min_exp, codes, luts, sse)
    return {b: (torch.from_numpy(codes[a]), torch.from_numpy(luts[a]), float(sse[a].sum())) for a, b in enumerate(bits)}


# ------------------------------------------------------------------------------------------ K-Means-A
@numba.njit(inline="always")
def _narrow_bits(b, bfloat):
    """The float16 (bfloat=False) or bfloat16 bit pattern of the float32 with bits b; -1 if not exactly one."""
    if bfloat:
        return np.int64(b >> 16) if b & 0xFFFF == 0 else -1
    sign = np.int64((b >> 16) & 0x8000)
    e = np.int64((b >> 23) & 0xFF)
    full = np.int64(b & 0x7FFFFF) | 0x800000
    if e == 0 and full == 0x800000:  # ±0
        return sign
    if 113 <= e <= 142:  # float16 normal: the 13 low mantissa bits must be zero
        return sign | ((e - 112) << 10) | ((full & 0x7FFFFF) >> 13) if full & 0x1FFF == 0 else -1
    if 103 <= e <= 112:  # float16 subnormal: value = s·2^-24 with s = full >> (126 - e)
        return sign | (full >> (126 - e)) if full & ((1 << (126 - e)) - 1) == 0 else -1
    return -1


@numba.njit(cache=True)
def _histogram16(x, bfloat, patterns):
    """Narrow the float32 values x to float16 (or bfloat16) bit patterns and count each of the 65,536.

    Writes `patterns`; returns the counts, or None unless every value was exactly representable.
    """
    bits = x.view(np.uint32)
    counts = np.zeros(1 << 16, dtype=np.int64)
    inexact = 0
    for t in range(x.shape[0]):
        p = _narrow_bits(bits[t], bfloat)
        inexact += p < 0
        patterns[t] = p & 0xFFFF
        counts[p & 0xFFFF] += 1
    return counts if inexact == 0 else None


@numba.njit(cache=True)
def _weighted_distinct(counts, values, order):
    """The present values in ascending order (equal values, i.e. ±0, merged) centred on their mean; counts; mean."""
    n = 0.0
    total = 0.0
    for p in order:
        if counts[p] > 0:
            n += counts[p]
            total += counts[p] * values[p]
    mean = total / n
    u = np.empty(order.shape[0])
    c = np.empty(order.shape[0])
    d = 0
    for p in order:
        if counts[p] == 0:
            continue
        if d > 0 and values[p] - mean == u[d - 1]:
            c[d - 1] += counts[p]
        else:
            u[d] = values[p] - mean
            c[d] = counts[p]
            d += 1
    return u[:d], c[:d], mean


@numba.njit(cache=True)
def _pattern_codes(lut, values, order, counts, table):
    """table[p] = code of bit pattern p (by midpoints, as _assign); returns Σ counts·(value - lut[code])²."""
    code = 0
    err = 0.0
    for p in order:  # ascending values: the code only grows
        v = np.float32(values[p])
        while code < lut.shape[0] - 1 and (lut[code + 1] + lut[code]) / np.float32(2) < v:
            code += 1
        table[p] = code
        if counts[p] > 0:
            e = np.float64(lut[code]) - values[p]
            err += counts[p] * e * e
    return err


@numba.njit(cache=True)
def _gather(patterns, table, codes):
    for t in range(patterns.shape[0]):
        codes[t] = table[patterns[t]]


def _patterns16(x: np.ndarray) -> tuple[torch.dtype, np.ndarray, np.ndarray] | None:
    """(dtype, bit patterns, their counts) if every value of the flat float32 x is a float16 (or bfloat16) value."""
    patterns = np.empty(x.shape, dtype=np.uint16)
    for dtype in _VALUES16:
        counts = _histogram16(x, dtype == torch.bfloat16, patterns)
        if counts is not None:
            return dtype, patterns, counts
    return None


def quantize_kmeans_a(
    weight2d: torch.Tensor, bits: Sequence[int], param_dtype: str = "float16"
) -> dict[int, tuple[torch.Tensor, torch.Tensor, float]]:
    """K-Means-A: one optimal codebook for the whole tensor, centroids at `param_dtype`; {bits: (codes [O, N],
    lut [1, 2^b], SSE)}."""
    bits = sorted(bits)
    ks = np.array([1 << b for b in bits])
    x = np.ascontiguousarray(weight2d.float().numpy()).reshape(-1)
    narrow = _patterns16(x)
    if narrow is None:  # genuinely 32-bit values
        fitted = quantize_kmeans_c(torch.from_numpy(x[None]), bits, "exact", param_dtype)
        return {b: (codes.reshape(weight2d.shape), lut, sse) for b, (codes, lut, sse) in fitted.items()}
    dtype, patterns, counts = narrow
    values, order = _VALUES16[dtype], _ORDER16[dtype]
    u, c, mean = _weighted_distinct(counts, values, order)
    luts = [np.empty(k, dtype=np.float32) for k in ks]
    codebooks(u, c, mean, ks, True, numba.typed.List(luts))
    out = {}
    for b, lut in zip(bits, luts, strict=True):
        _round_codebook(lut, *PARAM_DTYPES[param_dtype])
        table = np.zeros(1 << 16, dtype=np.uint8)
        sse = _pattern_codes(lut, values, order, counts, table)
        codes = np.empty(x.shape, dtype=np.uint8)
        _gather(patterns, table, codes)
        out[b] = (torch.from_numpy(codes).reshape(weight2d.shape), torch.from_numpy(lut)[None], sse)
    return out


# ------------------------------------------------------------------------------------------ reference
@numba.njit(parallel=True, cache=True)
def _rows_codebooks(x, ks, exact, out):
    for r in numba.prange(x.shape[0]):
        u, c, mean = _distinct(np.sort(x[r]))
        codebooks(u, c, mean, ks, exact, [out[r, a] for a in range(ks.shape[0])])


def optimal_codebooks(rows: torch.Tensor, ks: Sequence[int], solver: str = "exact") -> torch.Tensor:
    """1-D k-means centroids of each row of `rows` [R, N] in float64 by `solver` (the optimum for "exact").

    Returns [R, len(ks), max(ks)], codebooks ascending, ks ascending; for tests and gap measurements.
    """
    exact = check_solver(solver)
    ks_arr = np.array(sorted(ks), dtype=np.int64)
    out = np.zeros((rows.shape[0], len(ks_arr), ks_arr[-1]))
    _rows_codebooks(np.ascontiguousarray(rows.double().numpy()), ks_arr, exact, out)
    return torch.from_numpy(out)
