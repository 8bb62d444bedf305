"""House style and the one way figures are written (`savefig`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from qsd.paths import figures_dir


def set_style() -> None:
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind")


def new_figure(width: float = 8.0, height: float = 4.0, **subplots) -> tuple[plt.Figure, plt.Axes]:
    """A house-style figure; `subplots` (nrows, ncols, squeeze, ...) go to `plt.subplots`."""
    set_style()
    return plt.subplots(figsize=(width, height), layout="constrained", **subplots)


def savefig(fig: plt.Figure, name: str, directory: str | Path | None = None) -> Path:
    """Save `fig` as `<directory>/<name>.png` (default `figures/`); returns the path."""
    directory = Path(directory) if directory is not None else figures_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    fig.savefig(path, dpi=150)
    return path
