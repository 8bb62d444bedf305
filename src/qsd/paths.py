"""Where runs and figures live: `data/runs/<model_id>/<run_id>/<NN_stage>/` and `figures/` (DESIGN.md)."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout root: $QSD_ROOT, else the nearest parent of the working directory holding
    `pyproject.toml` and `notebooks/` (so notebooks work from `notebooks/` and from the root)."""
    if os.environ.get("QSD_ROOT"):
        return Path(os.environ["QSD_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / "notebooks").is_dir():
            return candidate
    return here


def stage_dir(model_id: str, run_id: str, stage: str) -> Path:
    """Output folder of one stage of one run (created)."""
    path = project_root() / "data" / "runs" / model_id / run_id / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir() -> Path:
    path = project_root() / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path
