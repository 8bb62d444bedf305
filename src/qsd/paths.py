"""Where the checkout and figures live (DESIGN.md); a run's stage folders are `qsd.run_folder.RunFolder`'s."""

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


def figures_dir() -> Path:
    path = project_root() / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path
