"""One module per notebook: a `Settings` dataclass, `run(settings) -> Result`, and `plot_*` functions."""

from dataclasses import dataclass

from qsd.models import DEFAULT_MODEL_ID


@dataclass(frozen=True)
class StageSettings:
    """The parameters every notebook has (DESIGN.md rule 5); each stage's `Settings` extends it."""

    model_id: str = DEFAULT_MODEL_ID
    run_id: str = "default"
    seed: int = 0
    smoke: bool = False
