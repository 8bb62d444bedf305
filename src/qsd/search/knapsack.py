"""Exact bit-budget selection: one variant per candidate, maximum total score, average bits ≤ B (a multiple-choice
knapsack; beyond the paper, whose released code had no budget and moved the bit width only through the λ of its
target equation — code.md §6 "Building the configuration").

    maximise   Σ_u Σ_v s_uv · x_uv
    subject to Σ_v x_uv = 1 for every candidate u,     Σ_u Σ_v b_uv · x_uv ≤ B · N,     x_uv ∈ {0, 1}

Notation: s_uv score and b_uv size in bits (indices + overhead, FP16) of variant v of candidate u (a layer or a
subgraph); N the number of weights of all candidates, so Σ b / N is the paper's average bit width.

Solved exactly by `scipy.optimize.milp` (HiGHS branch and bound) after removing, per candidate, every variant that
another one dominates (no more bits and at least the score; ties keep the first), which cannot change the optimum.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from qsd.errors import InfeasibleBudgetError, InvalidSettingError, QsdError

TOLERANCE = 1e-9


@dataclass(frozen=True)
class KnapsackSolution:
    """The chosen variant index per candidate, its total score and average bits, and the solver's message."""

    choice: tuple[int, ...]
    score: float
    avg_bits: float
    budget: float
    message: str


def pareto_variants(sizes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of the variants no other variant dominates (fewer or equal bits and a higher or equal score; of
    equal pairs the first is kept), in ascending size."""
    order = np.lexsort((np.arange(len(sizes)), -scores, sizes))
    keep, best = [], -np.inf
    for i in order:
        if scores[i] > best + TOLERANCE:
            keep.append(i)
            best = scores[i]
    return np.array(keep, dtype=int)


def solve_budget(sizes: Sequence[np.ndarray], scores: Sequence[np.ndarray], n_weights: float, budget: float
                 ) -> KnapsackSolution:
    """The best choice (one variant per candidate) with Σ sizes ≤ budget · n_weights. `sizes[u]`, `scores[u]`: arrays
    over candidate u's variants. Raises `InfeasibleBudgetError` when even the smallest variants exceed the budget."""
    if len(sizes) != len(scores) or not sizes:
        raise InvalidSettingError(f"solve_budget needs one size and one score array per candidate; got {len(sizes)} "
                                  f"and {len(scores)}")
    sizes = [np.asarray(s, dtype=float) for s in sizes]
    scores = [np.asarray(s, dtype=float) for s in scores]
    for u, (size, score) in enumerate(zip(sizes, scores, strict=True)):
        if size.shape != score.shape or size.ndim != 1 or not len(size):
            raise InvalidSettingError(f"candidate {u}: sizes {size.shape} and scores {score.shape} must be equal, "
                                      "non-empty 1-d arrays")
        if not (np.isfinite(size).all() and np.isfinite(score).all()):
            raise InvalidSettingError(f"candidate {u}: sizes and scores must be finite")
    if n_weights <= 0:
        raise InvalidSettingError(f"n_weights must be positive, got {n_weights}")
    per_weight = [s / n_weights for s in sizes]  # bits per weight: O(1) coefficients keep HiGHS exact at any size
    smallest = sum(float(s.min()) for s in per_weight)
    if smallest > budget + TOLERANCE:
        raise InfeasibleBudgetError(f"no configuration fits {budget:.3f} average bits: the smallest variants of "
                                    f"every unit already need {smallest:.3f}")
    kept = [pareto_variants(size, score) for size, score in zip(per_weight, scores, strict=True)]
    unit_of = np.concatenate([np.full(len(k), u) for u, k in enumerate(kept)])
    size = np.concatenate([s[k] for s, k in zip(per_weight, kept, strict=True)])
    score = np.concatenate([s[k] for s, k in zip(scores, kept, strict=True)])
    one_each = np.zeros((len(kept), len(size)))
    one_each[unit_of, np.arange(len(size))] = 1.0
    constraints = [LinearConstraint(one_each, 1, 1), LinearConstraint(size[None, :], -np.inf, budget)]
    with _native_output_silenced():
        result = milp(-score, constraints=constraints, integrality=np.ones(len(size)), bounds=Bounds(0, 1),
                      options={"mip_rel_gap": 0.0})
    if result.x is None:
        raise QsdError(f"the knapsack solver failed at {budget:.3f} average bits: {result.message}")
    picked = np.flatnonzero(result.x > 0.5)
    choice = [0] * len(kept)
    for j in picked:
        u = unit_of[j]
        choice[u] = int(kept[u][j - np.flatnonzero(unit_of == u)[0]])
    total = sum(float(s[c]) for s, c in zip(scores, choice, strict=True))
    bits = sum(float(s[c]) for s, c in zip(sizes, choice, strict=True)) / n_weights
    return KnapsackSolution(tuple(choice), total, bits, budget, str(result.message))


@contextmanager
def _native_output_silenced() -> Iterator[None]:
    """Keep the process's stdout/stderr file descriptors quiet: HiGHS prints some MIP debugging lines straight to
    them whatever its options (ERGO-Code/HiGHS, "transformNewIntegerFeasibleSolution")."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
