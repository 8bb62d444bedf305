"""One module per notebook: a `Settings` dataclass, `run(settings) -> Result`, and `plot_*` functions.

Every stage's `Settings` extends `StageSettings`, and every `run` starts from `settings.effective()`: the
settings it actually uses, which are what its `settings.json` records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

from qsd.models import DEFAULT_MODEL_ID, get_entry


def smoke_value(value: object, smoke: object) -> object:
    """The one smoke-shrinking rule: a number is capped at its smoke value (None, "as large as the model's
    protocol", becomes the cap); anything else — a flag, a tuple — takes the smoke value."""
    numbers = isinstance(smoke, int | float) and not isinstance(smoke, bool)
    if numbers and value is not None:
        return min(value, smoke)
    return smoke


@dataclass(frozen=True)
class StageSettings:
    """The parameters every notebook has (DESIGN.md rule 5); each stage's `Settings` extends it."""

    model_id: str = DEFAULT_MODEL_ID
    run_id: str = "default"
    seed: int = 0
    smoke: bool = False
    """A smoke run (CI): the fields named in the stage's `SMOKE` shrink by `smoke_value`."""

    SMOKE: ClassVar[dict[str, object]] = {}
    """Field name → its smoke value (each stage lists its own)."""

    def figures_to(self, directory: Path) -> Path | None:
        """Where this run's figures go: `figures/` (None), except that a smoke run keeps them in `directory`."""
        return directory if self.smoke else None

    def resolve(self) -> Self:
        """These settings with every 'None = the model's default' field filled in (per stage)."""
        return self

    def effective(self) -> Self:
        """The settings a run uses: resolved, then shrunk for a smoke run."""
        settings = self.resolve()
        if not settings.smoke:
            return settings
        return dataclasses.replace(settings, **{name: smoke_value(getattr(settings, name), value)
                                                for name, value in self.SMOKE.items()})


@dataclass(frozen=True)
class SamplingSettings(StageSettings):
    """Settings of a stage that samples the model under its own protocol (`SamplingProtocol.for_model`)."""

    n_images: int = 64
    steps: int | None = None
    """Solver steps; None = the model's protocol."""

    def resolve(self) -> Self:
        return dataclasses.replace(self, steps=self.steps or get_entry(self.model_id).sampler.steps)
