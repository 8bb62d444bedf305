"""What a saved run records besides its outputs: settings.json, provenance.json, summary.json (DESIGN rule 6)."""

from __future__ import annotations

import dataclasses
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from qsd.files import write_json
from qsd.paths import project_root

PACKAGES = ("qsd", "torch", "diffusers", "numpy", "numba", "safetensors", "scikit-learn", "pandas")


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=project_root(),
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    sha = out.stdout.strip() or "unknown"
    return sha + ("-dirty" if dirty.stdout.strip() else "")


def provenance(**extra: object) -> dict:
    """Code version, package versions and device of this process, plus `extra` (e.g. checkpoint hash)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpu = f"cpu ({platform.processor() or 'unknown'})"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu
    return {
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "packages": versions,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        **extra,
    }


def write_run_record(directory: Path, settings: object, summary: dict, **extra: object) -> None:
    """settings.json (the dataclass), provenance.json and summary.json (headline figures) in `directory`."""
    write_json(directory / "settings.json", dataclasses.asdict(settings))
    write_json(directory / "provenance.json", provenance(**extra))
    write_json(directory / "summary.json", summary)
