"""Weighted 1-D k-means by dynamic programming: the codebooks of K-Means-C/A (paper §3.1; performance.md §5).

Notation (one problem: a row for K-Means-C, a whole tensor for K-Means-A):
  u_1 < ... < u_d   distinct sorted values (centred on their mean), c_i their counts, n = Σ c_i
  C, S, Q           prefix sums of c, c·u, c·u²; cost(j, i) = Q_ij - S_ij² / C_ij is the SSE of u_{j+1..i}
  D[m][i]           least SSE of u_1..u_i in m clusters:  D[m][i] = min_j D[m-1][j] + cost(j, i)
The optimal j is monotone in i, so a level is filled by divide and conquer (O(d log d); an interval whose
candidate j is unique is filled directly). One run to K_max levels yields every requested K (the 3- and
4-bit codebooks) by backtracking; centroids are the cluster means. The DP may confine the end of the
m-th cluster to a window [lo_m, hi_m]; the two solvers differ only in those windows:
  exact           every end allowed: the optimum, O(K d log d).
  coarse_to_fine  1. cut u into cells of at most n/32 values and at most (u_d - u_1)/512 width (fine in
                     the sparse tails, so outliers can get clusters of their own); DP over cell edges only;
                  2. DP over all values with the m-th cluster's end within ±2 cells of where step 1 put it.
                  Never worse than step 1 and 4-8x faster than exact on rows of 1,152-4,608 values, but not
                  guaranteed optimal. Measured on 14,976 rows of PixArt-α-shaped heavy-tailed fp16 weights
                  (benchmarks/multiquantizer.py generator; 5 layers): SSE / optimal SSE - 1 is 0 for 98.7 %
                  (3 bits) / 96.4 % (4 bits) of rows; mean 1.8e-6 / 1.6e-5, max 1.3e-3 / 4.0e-3; per layer
                  ≤ 3.5e-5. The benchmark reports it on its rows (`kmeans_c_gap_vs_exact`), a test bounds it.
                  Problems with ≤ 2·K_max cells are solved exactly.
A problem with ≤ K distinct values is reproduced exactly (its codebook is those values, padded).
"""

from __future__ import annotations

import numba
import numpy as np

from qsd.errors import UnsupportedSpecError

SOLVERS = ("coarse_to_fine", "exact")
CELLS_BY_COUNT = 32  # coarse_to_fine: a cell holds at most n / 32 values ...
CELLS_BY_WIDTH = 512  # ... and spans at most (max - min) / 512
WINDOW_CELLS = 2  # step 2 moves each cluster end by at most this many cells


def check_solver(solver: str) -> bool:
    """True for "exact"; raises UnsupportedSpecError for an unknown solver."""
    if solver not in SOLVERS:
        raise UnsupportedSpecError(f"unknown kmeans solver {solver!r}; supported: {SOLVERS}")
    return solver == "exact"


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _fill_level(prev, cur, arg, C, S, Q, lo, hi, j_lo, j_hi):
    """cur[i] = min_{j_lo ≤ j ≤ min(j_hi, i-1)} prev[j] + cost(j, i), argmin in arg[i], for i in [lo, hi]."""
    stack = np.empty((128, 4), dtype=np.int64)
    stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = lo, hi, j_lo, j_hi
    top = 1
    while top > 0:
        top -= 1
        a, z, opt_lo, opt_hi = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
        if a > z:
            continue
        if opt_lo == opt_hi:  # one candidate left: every i in [a, z] takes it
            for i in range(a, z + 1):
                s = S[i] - S[opt_lo]
                cur[i] = prev[opt_lo] + (Q[i] - Q[opt_lo]) - s * s / (C[i] - C[opt_lo]) if i > opt_lo else np.inf
                arg[i] = opt_lo
            continue
        i = (a + z) // 2
        best = np.inf
        best_j = opt_lo
        for j in range(opt_lo, min(i - 1, opt_hi) + 1):
            s = S[i] - S[j]
            val = prev[j] + (Q[i] - Q[j]) - s * s / (C[i] - C[j])
            if val < best:
                best = val
                best_j = j
        cur[i] = best
        arg[i] = best_j
        stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = a, i - 1, opt_lo, best_j
        stack[top + 1, 0], stack[top + 1, 1], stack[top + 1, 2], stack[top + 1, 3] = i + 1, z, best_j, opt_hi
        top += 2


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _dp(C, S, Q, lo, hi):
    """The DP over points with prefix sums C, S, Q; cluster m (1-based) ends in [lo[m], hi[m]]; returns arg."""
    k_max = lo.shape[0] - 1
    arg = np.zeros((k_max + 1, C.shape[0]), dtype=np.int32)
    prev = np.empty(C.shape[0])
    cur = np.empty(C.shape[0])
    for i in range(lo[1], hi[1] + 1):
        prev[i] = Q[i] - S[i] * S[i] / C[i]
    for m in range(2, k_max + 1):
        _fill_level(prev, cur, arg[m], C, S, Q, lo[m], hi[m], lo[m - 1], hi[m - 1])
        prev, cur = cur, prev
    return arg


@numba.njit(cache=True, nogil=True)
def _backtrack(arg, k, end):
    """Cluster boundaries b[0] = 0 < ... < b[k] = end of the best k-partition ending at `end`."""
    b = np.empty(k + 1, dtype=np.int64)
    b[k] = end
    for m in range(k, 1, -1):
        b[m - 1] = arg[m, b[m]]
    b[0] = 0
    return b


@numba.njit(cache=True, nogil=True)
def _cell_edges(u, c, n):
    """Edges 0 = e_0 < ... < e_last = d of cells of ≤ n/CELLS_BY_COUNT values and ≤ range/CELLS_BY_WIDTH width."""
    d = u.shape[0]
    count_cap = n / CELLS_BY_COUNT
    width_cap = (u[d - 1] - u[0]) / CELLS_BY_WIDTH
    edges = np.empty(d + 1, dtype=np.int64)
    edges[0] = 0
    cells = 0
    count = 0.0
    for t in range(d):
        if t > edges[cells] and (count + c[t] > count_cap or u[t] - u[edges[cells]] > width_cap):
            cells += 1
            edges[cells] = t
            count = 0.0
        count += c[t]
    edges[cells + 1] = d
    return edges[: cells + 2].copy()


@numba.njit(cache=True, nogil=True)
def _partitions(u, c, C, S, Q, ks, exact):
    """Boundaries [len(ks), K_max + 1] of the k-partition for each k in ks (ascending, each < d)."""
    d = u.shape[0]
    k_max = ks[ks.shape[0] - 1]
    out = np.zeros((ks.shape[0], k_max + 1), dtype=np.int64)
    edges = np.empty(0, dtype=np.int64)
    cells = 0
    if not exact:
        edges = _cell_edges(u, c, C[d])
        cells = edges.shape[0] - 1
    if cells <= 2 * k_max:  # exact, or too few cells for two steps to pay
        arg = _dp(C, S, Q, np.arange(k_max + 1), np.full(k_max + 1, d))
        for a in range(ks.shape[0]):
            out[a, : ks[a] + 1] = _backtrack(arg, ks[a], d)
        return out
    coarse = _dp(C[edges], S[edges], Q[edges], np.arange(k_max + 1), np.full(k_max + 1, cells))  # 1. cell edges
    for a in range(ks.shape[0]):
        k = ks[a]
        cell_end = _backtrack(coarse, k, cells)
        lo = np.full(k + 1, d)  # 2. all values, cluster m ends within ±WINDOW_CELLS cells of its coarse end
        hi = np.full(k + 1, d)
        for m in range(1, k):
            lo[m] = max(edges[max(cell_end[m] - WINDOW_CELLS, 0)], m)
            hi[m] = edges[min(cell_end[m] + WINDOW_CELLS, cells)]
        out[a, : k + 1] = _backtrack(_dp(C, S, Q, lo, hi), k, d)
    return out


@numba.njit(cache=True, nogil=True)
def codebooks(u, c, mean, ks, exact, luts):
    """Write into luts[a][:ks[a]] the ascending centroids (+ mean) of values u (centred) with counts c."""
    d = u.shape[0]
    small = 0  # ks[:small] have fewer centroids than distinct values; the rest reproduce every value
    while small < ks.shape[0] and ks[small] < d:
        small += 1
    for a in range(small, ks.shape[0]):
        for t in range(ks[a]):
            luts[a][t] = u[min(t, d - 1)] + mean
    if small == 0:
        return
    C = np.zeros(d + 1)
    S = np.zeros(d + 1)
    Q = np.zeros(d + 1)
    for t in range(d):
        C[t + 1] = C[t] + c[t]
        S[t + 1] = S[t] + c[t] * u[t]
        Q[t + 1] = Q[t] + c[t] * u[t] * u[t]
    bounds = _partitions(u, c, C, S, Q, ks[:small], exact)
    for a in range(small):
        b = bounds[a]
        for t in range(ks[a]):
            luts[a][t] = (S[b[t + 1]] - S[b[t]]) / (C[b[t + 1]] - C[b[t]]) + mean
