"""FID-versus-bits frontiers and dominance (paper Fig. 1/§6: fewer bits and lower FID are both better)."""

from __future__ import annotations

import numpy as np


def pareto_front(bits: np.ndarray, fid: np.ndarray) -> np.ndarray:
    """Indices of the points no other point dominates (≤ bits and ≤ FID, one of them strictly), by ascending bits."""
    bits, fid = np.asarray(bits, float), np.asarray(fid, float)
    order = np.lexsort((fid, bits))
    front, best = [], np.inf
    for i in order:
        if fid[i] < best:
            front.append(i)
            best = fid[i]
    return np.array(front, dtype=int)


def frontier_fid(front_bits: np.ndarray, front_fid: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """The frontier's step function at `bits`: the lowest FID among its points with at most that many bits
    (inf below its first point)."""
    front_bits, front_fid = np.asarray(front_bits, float), np.asarray(front_fid, float)
    order = np.argsort(front_bits, kind="stable")
    running = np.minimum.accumulate(front_fid[order])
    position = np.searchsorted(front_bits[order], np.asarray(bits, float), side="right") - 1
    return np.where(position >= 0, running[np.maximum(position, 0)], np.inf)


def dominated_fraction(front_bits: np.ndarray, front_fid: np.ndarray, bits: np.ndarray, fid: np.ndarray,
                       upto: float = np.inf) -> tuple[float, int]:
    """(fraction of the points some frontier point weakly dominates, how many points were judged). Judged are the
    points between the frontier's fewest bits and `upto` (e.g. its largest budget): below, nothing on the frontier
    can dominate them; above, the frontier was not asked to compete."""
    bits, fid = np.asarray(bits, float), np.asarray(fid, float)
    judged = (bits >= np.min(front_bits)) & (bits <= upto)
    if not judged.any():
        return float("nan"), 0
    dominated = frontier_fid(front_bits, front_fid, bits[judged]) <= fid[judged]
    return float(dominated.mean()), int(judged.sum())
