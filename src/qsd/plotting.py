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


def label_points(ax: plt.Axes, points: list[tuple[float, float, str]], fontsize: float = 6,
                 gap_points: float = 8.0, x_tolerance: float = 0.02) -> None:
    """Annotate each (x, y, text) to the right of its point; labels of points at the same x (within `x_tolerance`)
    are pushed apart vertically to at least `gap_points` and joined to their point by a thin line, and a label
    repeated at the same place is written once. Call after the axes' scales are set."""
    ax.autoscale_view()
    to_points = 72 / ax.figure.dpi
    unique = list(dict.fromkeys((round(x, 4), round(y, 4), text) for x, y, text in points))
    groups: dict[float, list[tuple[float, float, str]]] = {}
    for x, y, text in sorted(unique):
        key = next((k for k in groups if abs(k - x) <= x_tolerance), x)
        groups.setdefault(key, []).append((x, y, text))
    for members in groups.values():
        placed = None
        for x, y, text in sorted(members, key=lambda m: ax.transData.transform(m[:2])[1]):
            at = ax.transData.transform((x, y))[1] * to_points
            placed = at if placed is None else max(at, placed + gap_points)
            shift = placed - at
            ax.annotate(text, (x, y), xytext=(6, 2 + shift), textcoords="offset points", fontsize=fontsize,
                        va="center", arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "#999999"}
                        if shift > 1 else None)

