"""Seeded K-fold splits (code.md §5 "Folds")."""

import numpy as np
import pytest

from qsd.errors import InvalidSettingError
from qsd.predictor.folds import kfold_splits


@pytest.mark.parametrize("n, k", [(10, 5), (131, 5), (7, 3), (2, 2)])
def test_every_index_is_tested_exactly_once(n, k):
    splits = kfold_splits(n, k, seed=3)
    assert len(splits) == k
    tests = np.concatenate([test for _, test in splits])
    np.testing.assert_array_equal(np.sort(tests), np.arange(n))
    sizes = [len(test) for _, test in splits]
    assert max(sizes) - min(sizes) <= 1
    for train, test in splits:
        assert not set(train) & set(test)
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(n))


def test_deterministic_for_a_seed_and_different_across_seeds():
    first, again, other = kfold_splits(50, 5, 0), kfold_splits(50, 5, 0), kfold_splits(50, 5, 1)
    assert all(np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("n, k, seed, message", [
    (10, 1, 0, "2 <= k <= n"), (3, 5, 0, "2 <= k <= n"), (10, 2, -1, "seed must be >= 0"),
    (10.0, 2, 0, "n must be an integer"), (10, True, 0, "k must be an integer"),
])
def test_bad_arguments_are_refused(n, k, seed, message):
    with pytest.raises(InvalidSettingError, match=message):
        kfold_splits(n, k, seed)
