"""One module per notebook: a `Settings` dataclass, `run(settings) -> Result`, and `plot_*` functions.

Every stage's `Settings` extends `StageSettings`, and every `run` starts from `settings.effective()`: the
settings it actually uses, which are what its `settings.json` records. Its outputs go to
`settings.output_dir(STAGE)`, which refuses a run folder whose results were made with other settings unless the
user asks to overwrite them. Stages read what earlier stages wrote through `qsd.run_folder.RunFolder`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

from qsd.errors import InvalidSettingError, SettingsMismatchError
from qsd.models import DEFAULT_MODEL_ID, get_entry
from qsd.run_folder import RunFolder
from qsd.store import protocol_difference

RESULT_NEUTRAL = ("model_id", "run_id", "progress", "overwrite")
"""Settings of every stage that never change its results (the run folder already names the model and run: a copied
run folder is the same run)."""


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
    overwrite: bool = False
    """Re-run into a run folder whose saved results were made with other settings, replacing them (saved rows that
    still apply are reused). Without it such a re-run is refused before anything is written."""

    SMOKE: ClassVar[dict[str, object]] = {}
    """Field name → its smoke value (each stage lists its own)."""
    RANGES: ClassVar[dict[str, tuple[float | None, float | None]]] = {}
    """Field name → its accepted (lowest, highest) value, None = unbounded; a tuple field must also be non-empty,
    each element in range (each stage lists its own)."""
    NEUTRAL: ClassVar[tuple[str, ...]] = ()
    """The stage's settings that do not change its results (besides `RESULT_NEUTRAL`): how it runs, not what."""

    def __post_init__(self) -> None:
        for name, (low, high) in self.RANGES.items():
            value = getattr(self, name)
            if value is None:  # "the model's default"
                continue
            values = value if isinstance(value, tuple | list) else (value,)
            accepted = f"{'-∞' if low is None else low} … {'∞' if high is None else high}"
            if not values or any(isinstance(v, bool) or not isinstance(v, int | float)
                                 or (low is not None and v < low) or (high is not None and v > high) for v in values):
                kind = "a non-empty list of numbers, each" if isinstance(value, tuple | list) else "a number"
                raise InvalidSettingError(f"{type(self).__module__.rsplit('.', 1)[-1]} setting {name} = {value!r} is "
                                          f"out of range: it must be {kind} in {accepted}")

    def output_dir(self, stage: str) -> Path:
        """This run's folder of `stage` (created). If it holds results made with settings that differ in anything
        that changes results, the run is refused before anything is written, unless `overwrite`. A setting the saved
        run does not have (added to qsd later) is no difference at its default value, resolved for this run (e.g.
        stage 02's `design`: None resolves to the run's space's own), which keeps the old behaviour."""
        path = RunFolder(self.model_id, self.run_id).path(stage)
        saved_path = path / "settings.json"
        if saved_path.is_file() and not self.overwrite:
            neutral = {*RESULT_NEUTRAL, *self.NEUTRAL}
            saved, now = json.loads(saved_path.read_text()), dataclasses.asdict(self)
            added = {f.name: f.default for f in dataclasses.fields(self) if f.name not in saved}
            at_default = dataclasses.asdict(dataclasses.replace(self, **added).resolve())
            neutral |= {k for k in added if now[k] in (added[k], at_default[k])}  # added later, at its default
            differences = protocol_difference({k: v for k, v in saved.items() if k not in neutral},
                                              {k: v for k, v in now.items() if k not in neutral})
            if differences:
                listed = "\n  ".join(differences)
                raise SettingsMismatchError(
                    f"{path} holds results made with other settings (saved -> now):\n  {listed}\nRe-running here "
                    f"would replace results that later stages read. Use another run_id (e.g. "
                    f"run_id={self.run_id + '-2'!r}), or pass overwrite=True (notebooks: -p overwrite True) to replace "
                    "them.")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run_space(self) -> str:
        """The run's search space (`RunFolder.space`)."""
        return RunFolder(self.model_id, self.run_id).space()

    def subject(self) -> str:
        """What a figure title names: the model, and the search space unless it is the paper's."""
        space = self.run_space()
        return self.model_id if space == "paper" else f"{self.model_id} ({space} space)"

    def figure_name(self, prefix: str) -> str:
        """`<prefix>_<model_id>`, with `_<space>` after it unless the run's space is the paper's (so the two spaces'
        figures sit side by side in figures/)."""
        space = self.run_space()
        return f"{prefix}_{self.model_id}" + ("" if space == "paper" else f"_{space}")

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
