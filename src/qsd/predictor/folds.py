"""Seeded K-fold splits of the labelled configurations (paper §4; code.md §5 "Folds").

The released code sorted the entries by target, shuffled them with a fixed seed and cut the list into K
contiguous 20 % test chunks. Sorting before a shuffle changes nothing, so here the indices are simply permuted
with `seed` and cut into K contiguous, near-equal test chunks; each index is tested exactly once.
"""

from __future__ import annotations

import numpy as np

from qsd.errors import InvalidSettingError


def kfold_splits(n: int, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train indices, test indices) pairs over `range(n)`, both sorted; deterministic for `seed`."""
    for name, value in (("n", n), ("k", k), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise InvalidSettingError(f"kfold_splits: {name} must be an integer; got {value!r}")
    if k < 2 or n < k:
        raise InvalidSettingError(
            f"kfold_splits needs 2 <= k <= n (every fold tests at least one item); got n={n}, k={k}")
    if seed < 0:
        raise InvalidSettingError(f"kfold_splits: seed must be >= 0; got {seed}")
    chunks = np.array_split(np.random.default_rng(seed).permutation(n), k)
    return [(np.sort(np.concatenate(chunks[:i] + chunks[i + 1:])), np.sort(test)) for i, test in enumerate(chunks)]
