"""RTN, the floor every baseline must beat: round-to-nearest per-output-channel asymmetric weights over each
channel's full range, and static per-tensor activation ranges from the min/max over the calibration set (one range
for all timesteps). The first and last layers stay float, as in the methods it is the floor of (baselines.md §2);
`Settings.keep_time_embedding` also keeps DMQ's timestep path float, so RTN can sit at DMQ's bits beside it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from torch import nn

from qsd.baselines.calibration import CalibrationSet
from qsd.baselines.common import (
    BaselineResult,
    attach_static,
    average_bits,
    calibrate_ranges,
    embedding_path_and_ends,
    prepared_copy,
    rtn_weights_,
)

METHOD = "rtn"
SMOKE: dict = {}
"""Overrides of `Settings` in a CI smoke run (RTN has nothing to shrink)."""
FIRST_LAST_FLOAT = {"keep_first_last": True}
"""Overrides of `Settings` that keep exactly the first and last layer a forward pass calls float (stage 06's common
convention)."""


@dataclass(frozen=True)
class Settings:
    keep_first_last: bool = True
    """Keep the first and last layer float (of the call order without the time-embedding layers when those stay
    float, as DMQ)."""
    keep_time_embedding: bool = False
    """Also keep the `TIME_EMBEDDING` layers float: DMQ's float layers (`embedding_path_and_ends`), at DMQ's bits."""


def quantize(denoiser: nn.Module, calibration: CalibrationSet, w_bits: int = 4, a_bits: int | None = 6,
             settings: Settings = Settings(), seed: int = 0) -> BaselineResult:
    """RTN weights and min/max static activations on a copy of `denoiser` (`seed` is unused: RTN is deterministic)."""
    start = time.perf_counter()
    kept = embedding_path_and_ends(denoiser, calibration, settings.keep_first_last, settings.keep_time_embedding)
    model, units, keep = prepared_copy(denoiser, calibration, False, kept["all"])
    rtn_weights_(model, units, w_bits)
    if a_bits is not None:
        calibrate_ranges(model, attach_static(model, units, a_bits).values(), calibration)
    return BaselineResult(METHOD, model, w_bits, a_bits, average_bits(denoiser, units, w_bits),
                          time.perf_counter() - start, asdict(settings) | {"float_layers": keep})


RELEASED_RULES = {"float layers": "first and last (the methods it is the floor of)",
                  "weights": "per-channel min–max, round to nearest", "activations": "static per-tensor min–max",
                  "attention Q, K, V / softmax": "float", "calibration": "(no release: the floor)"}
"""What the rule table shows beside `rules` (RTN has no release of its own)."""


def rules(record: dict, a_bits: int | None) -> dict[str, str]:
    """The rule table's entries for a run's settings `record` (`BaselineResult.settings`)."""
    return {"weights": "per-channel min–max, round to nearest",
            "activations": "float" if a_bits is None else f"static per-tensor min–max, one range, A{a_bits}",
            "attention Q, K, V / softmax": "float"}
