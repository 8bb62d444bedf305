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
                 gap_points: float = 8.0) -> None:
    """Annotate each (x, y, text) to the right of its point, lowest first; a label that would overlap one already
    placed moves up until it clears it by `gap_points` and is joined to its point by a thin line. A label repeated at
    the same place is written once. Call after the axes' scales are set."""
    ax.autoscale_view()
    to_points = 72 / ax.figure.dpi
    placed: list[tuple[float, float, float]] = []  # (left, right, centre height) of each label, in points
    clear = gap_points * (1 - 1e-9)  # a label moved up by exactly the gap clears the one below despite rounding
    unique = dict.fromkeys((round(x, 4), round(y, 4), text) for x, y, text in points)
    for x, y, text in sorted(unique, key=lambda p: (ax.transData.transform(p[:2])[1], p[0])):
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        left, right = px + 6, px + 6 + 0.6 * fontsize * len(text)
        height = py + 2
        while clash := [h for lo, hi, h in placed if lo < right and left < hi and abs(h - height) < clear]:
            height = max(clash) + gap_points
        placed.append((left, right, height))
        shift = height - (py + 2)
        ax.annotate(text, (x, y), xytext=(6, 2 + shift), textcoords="offset points", fontsize=fontsize,
                    va="center", arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "#999999"} if shift > 1 else None)
