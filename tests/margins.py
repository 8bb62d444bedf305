"""Comparison verdicts (a method beats another, a score clears a bar) asserted with a stated relative margin.

A verdict between two floating-point results holds on another CPU only if its gap exceeds what other kernels and
accumulation orders move (issue 26: a 0.3 % win on one machine was a 0.8 % loss on another). So each such test says
how large a gap it needs, `margin`: a round number below the smallest gap that `benchmarks/comparison_margins.py`
measured for it under native, generic and one-thread kernels (docs/measurements.md, the tests on other kernels).

When the environment variable QSD_MARGIN_REPORT names a file, every check appends its observed gap there as one
JSON line: `benchmarks/comparison_margins.py` runs the comparison tests under other kernels and thread counts and
reports the smallest gap each one kept.
"""

from __future__ import annotations

import json
import os


def _check(value: float, bound: float, margin: float, what: str, side: int) -> None:
    """Record and assert side·(value − bound) > margin·|bound| (side −1: below, +1: above); the gap is relative to
    |bound|, absolute where the bound is 0 (a correlation's sign, a difference)."""
    value, bound = float(value), float(bound)
    gap = side * (value - bound) / (abs(bound) or 1.0)
    path = os.environ.get("QSD_MARGIN_REPORT")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
        with open(path, "a") as f:
            f.write(json.dumps({"test": test, "what": what, "value": value, "bound": bound, "gap": gap,
                                "margin": margin}) + "\n")
    shown = "{:+.3g}" if bound == 0 else "{:+.2%}"
    assert gap > margin, (f"{what}: {value:.6g} is not {shown.format(margin)[1:]} {'below' if side < 0 else 'above'} "
                          f"{bound:.6g} (gap {shown.format(gap)})")


def below(value: float, bound: float, margin: float, what: str) -> None:
    """Assert `value` lies below `bound` by more than `margin` of |bound| (of 1 where the bound is 0)."""
    _check(value, bound, margin, what, -1)


def above(value: float, bound: float, margin: float, what: str) -> None:
    """Assert `value` lies above `bound` by more than `margin` of |bound| (of 1 where the bound is 0)."""
    _check(value, bound, margin, what, +1)
