"""Where runs and figures live: `data/runs/<model_id>/<run_id>/<NN_stage>/` and `figures/` (DESIGN.md)."""

from __future__ import annotations

import os
from pathlib import Path

from qsd.errors import QsdError


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


def kernel_source(name: str) -> Path:
    """`kernels/<name>` (native kernel sources ship with the repository, not the package): of the checkout qsd is
    installed from (editable src layout), else of `project_root()`."""
    roots = (Path(__file__).resolve().parents[2], project_root())
    for root in roots:
        if (root / "kernels" / name).is_file():
            return root / "kernels" / name
    raise QsdError(f"kernels/{name} is in neither {roots[0]} (next to the qsd sources) nor {roots[1]} (the project "
                   "root): install qsd editable from a checkout (pip install -e .) or set QSD_ROOT to one")


def stage_dir(model_id: str, run_id: str, stage: str) -> Path:
    """Output folder of one stage of one run (created)."""
    path = project_root() / "data" / "runs" / model_id / run_id / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir() -> Path:
    path = project_root() / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path
