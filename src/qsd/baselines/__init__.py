"""The published PTQ baselines in qsd's harness (baselines.md): one method per file, each
`quantize(denoiser, calibration, w_bits, a_bits, settings, seed) -> BaselineResult` on a copy of the float denoiser,
with a frozen `Settings` dataclass (every heuristic a setting; defaults as released), `SMOKE`, the overrides of a CI
smoke run, and `FIRST_LAST_FLOAT`, the overrides that keep exactly the first and last layer float."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from types import ModuleType

from qsd.errors import InvalidSettingError

BASELINES = {"rtn": "RTN", "qdiffusion": "Q-Diffusion", "tfmqdm": "TFMQ-DM", "viditq": "ViDiT-Q", "dmq": "DMQ"}
"""Module name → display name, in the order tables show them."""


def baseline(name: str) -> ModuleType:
    """The module of baseline `name` (one of `BASELINES`)."""
    if name not in BASELINES:
        raise InvalidSettingError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return importlib.import_module(f"qsd.baselines.{name}")


def baseline_settings(name: str, overrides: Mapping) -> object:
    """Baseline `name`'s `Settings` with `overrides` (a nested settings dataclass may be given as a dict of its
    fields); unknown names are refused."""
    cls = baseline(name).Settings
    defaults = cls()
    fields = {f.name for f in dataclasses.fields(cls)}
    if unknown := set(overrides) - fields:
        raise InvalidSettingError(f"{name} has no setting(s) {sorted(unknown)}; its settings: {sorted(fields)}")
    values = {}
    for key, value in overrides.items():
        default = getattr(defaults, key)
        nested = dataclasses.is_dataclass(default) and isinstance(value, Mapping)
        values[key] = dataclasses.replace(default, **value) if nested else value
    return cls(**values)
