"""K-Means-C and K-Means-A: optimal 1-D k-means codebooks (paper §3.1; code.md §1.2-1.3; performance.md §5).

K-Means-C fits one codebook of 2^b centroids per output channel, K-Means-A one for the whole tensor.
Instead of the original's randomly initialised Lloyd runs (sklearn, per channel, in a Python loop) we
solve 1-D k-means *exactly* by dynamic programming, which is deterministic and never worse.

Notation (one row; a whole tensor is one row for K-Means-A):
  u_1 < ... < u_d   distinct sorted values, c_i their counts (the DP runs on weighted distinct values)
  C, S, Q           prefix sums of c, c·u, c·u²; cost(j, i) = Q_ij - S_ij² / C_ij is the SSE of u_{j+1..i}
  D[m][i]           least SSE of u_1..u_i in m clusters:  D[m][i] = min_j D[m-1][j] + cost(j, i)

Steps:
  1. sort each row, collapse equal values into (u, c)   (fp16/bf16 weights have ≤ 65,536 distinct values)
  2. for m = 1..K_max, fill D[m][·] by divide and conquer: the optimal split j*(i) is monotone in i,
     so each level costs O(d log d); split points are kept for every level
  3. for every requested K ≤ K_max, backtrack from D[K][d]: one DP run yields the 3- and 4-bit codebooks
  4. codes = nearest centroid (for an optimal 1-D partition this is the segment a value belongs to),
     found with a batched `searchsorted` on centroid midpoints
A row with ≤ K distinct values is reproduced exactly (its codebook is those values).
Rows run in parallel (numba `prange`); there is no Python loop over channels or elements.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import torch


@numba.njit(cache=True, nogil=True)
def _fill_level(prev, cur, arg, m, C, S, Q, d):
    """Level m of the DP (m ≥ 2) over i = m..d by divide and conquer on the monotone argmin."""
    stack = np.empty((128, 4), dtype=np.int64)
    top = 0
    stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = m, d, m - 1, d - 1
    top = 1
    while top > 0:
        top -= 1
        lo, hi, opt_lo, opt_hi = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
        if lo > hi:
            continue
        i = (lo + hi) // 2
        best = np.inf
        best_j = opt_lo
        for j in range(opt_lo, min(i - 1, opt_hi) + 1):
            w = C[i] - C[j]
            s = S[i] - S[j]
            val = prev[j] + (Q[i] - Q[j]) - s * s / w
            if val < best:
                best = val
                best_j = j
        cur[i] = best
        arg[i] = best_j
        stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = lo, i - 1, opt_lo, best_j
        top += 1
        stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = i + 1, hi, best_j, opt_hi
        top += 1


@numba.njit(cache=True, nogil=True)
def _row_codebooks(row, ks, out):
    """Optimal codebooks of one sorted row for every k in ks (ascending); writes out[len(ks), k_max]."""
    n = row.shape[0]
    mean = 0.0
    for t in range(n):
        mean += row[t]
    mean /= n
    # 1. distinct values and counts, centred for numerical stability of Q - S²/C
    u = np.empty(n)
    c = np.empty(n)
    d = 0
    for t in range(n):
        v = row[t] - mean
        if d > 0 and row[t] == row[t - 1]:
            c[d - 1] += 1.0
        else:
            u[d] = v
            c[d] = 1.0
            d += 1
    if d <= ks[0]:  # no more distinct values than centroids: the codebook is the values themselves
        for a in range(ks.shape[0]):
            for t in range(out.shape[1]):
                out[a, t] = u[min(t, d - 1)] + mean
        return
    k_max = ks[ks.shape[0] - 1]
    C = np.zeros(d + 1)
    S = np.zeros(d + 1)
    Q = np.zeros(d + 1)
    for t in range(d):
        C[t + 1] = C[t] + c[t]
        S[t + 1] = S[t] + c[t] * u[t]
        Q[t + 1] = Q[t] + c[t] * u[t] * u[t]
    levels = min(k_max, d)
    # 2. DP levels; arg[m, i] = start of the last segment of the best m-partition of u_1..u_i
    arg = np.zeros((levels + 1, d + 1), dtype=np.int32)
    prev = np.empty(d + 1)
    cur = np.empty(d + 1)
    for i in range(1, d + 1):
        prev[i] = Q[i] - S[i] * S[i] / C[i]
    for m in range(2, levels + 1):
        _fill_level(prev, cur, arg[m], m, C, S, Q, d)
        prev, cur = cur, prev
    # 3. backtrack each requested k
    for a in range(ks.shape[0]):
        k = min(ks[a], d)
        i = d
        for m in range(k, 0, -1):
            j = arg[m, i] if m > 1 else 0
            out[a, m - 1] = (S[i] - S[j]) / (C[i] - C[j]) + mean
            i = j
        for t in range(k, out.shape[1]):  # pad unused codebook entries (d < 2^b)
            out[a, t] = out[a, k - 1]


@numba.njit(parallel=True, cache=True)
def _codebooks(sorted_rows, ks):
    out = np.empty((sorted_rows.shape[0], ks.shape[0], ks[ks.shape[0] - 1]))
    for r in numba.prange(sorted_rows.shape[0]):
        _row_codebooks(sorted_rows[r], ks, out[r])
    return out


def optimal_codebooks(rows: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Exact 1-D k-means centroids of each row of `rows` [R, N]: float64 [R, len(ks), max(ks)], ascending."""
    ks_arr = np.array(sorted(ks), dtype=np.int64)
    sorted_rows = torch.sort(rows.double(), dim=1).values.numpy()
    return torch.from_numpy(_codebooks(np.ascontiguousarray(sorted_rows), ks_arr))


def assign_codes(rows: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of each row's ascending codebook (`lut` [R or 1, K]) -> uint8 [R, N]."""
    mids = (lut[:, 1:] + lut[:, :-1]) / 2
    if mids.shape[0] == 1 and rows.shape[0] != 1:
        mids = mids.expand(rows.shape[0], -1)
    return torch.searchsorted(mids.contiguous(), rows.contiguous()).to(torch.uint8)


def _codes_and_luts(rows: torch.Tensor, bits: Sequence[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    bits = sorted(bits)
    centroids = optimal_codebooks(rows, [1 << b for b in bits])
    out = {}
    for a, b in enumerate(bits):
        lut = centroids[:, a, : 1 << b].float()
        out[b] = (assign_codes(rows.float(), lut), lut)
    return out


def quantize_kmeans_c(weight2d: torch.Tensor, bits: Sequence[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """K-Means-C: one optimal codebook per output channel (row)."""
    return _codes_and_luts(weight2d, bits)


def quantize_kmeans_a(weight2d: torch.Tensor, bits: Sequence[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """K-Means-A: one optimal codebook for the whole tensor."""
    flat = _codes_and_luts(weight2d.reshape(1, -1), bits)
    return {b: (codes.reshape(weight2d.shape), lut) for b, (codes, lut) in flat.items()}
