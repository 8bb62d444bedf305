"""Stage 01: every weight-quantization option of every layer (paper §3.1; notebook 01_multiquantizer).

Builds (or loads, when a file for the same weights and options exists) the MultiQuantizer of `model_id`:
UAQ, K-Means-C and K-Means-A at each bit width for every Linear/Conv layer, and writes to
`data/runs/<model_id>/<run_id>/01_multiquantizer/`:
  multiquantizer.safetensors   codes + lookup tables of every option (reloadable, verified)
  search_space.csv             one row per (layer, option): size in bits and relative error
  settings.json, provenance.json, summary.json
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from qsd.config import METHODS, QuantSpec
from qsd.errors import ModelMismatchError
from qsd.models import load_denoiser
from qsd.multiquant import DEFAULT_BITS, MultiQuantizer
from qsd.paths import stage_dir
from qsd.plotting import new_figure, savefig
from qsd.provenance import write_run_record
from qsd.quantizers import QuantizerSettings
from qsd.stages import StageSettings

STAGE = "01_multiquantizer"


@dataclass(frozen=True)
class Settings(StageSettings):
    methods: tuple[str, ...] = METHODS
    bits: tuple[int, ...] = DEFAULT_BITS
    quantizer: QuantizerSettings = field(default_factory=QuantizerSettings)
    rebuild: bool = False
    """Rebuild even if a saved multiquantizer for these weights exists."""
    progress: bool = True


@dataclass
class Result:
    settings: Settings
    directory: Path
    multiquantizer: MultiQuantizer
    search_space: pd.DataFrame
    summary: dict


def run(settings: Settings) -> Result:
    """Build or load the multiquantizer of `settings.model_id` and record its search space."""
    directory = stage_dir(settings.model_id, settings.run_id, STAGE)
    model = load_denoiser(settings.model_id, seed=settings.seed)
    path = directory / "multiquantizer.safetensors"
    options = [QuantSpec(m, b) for m in settings.methods for b in settings.bits]
    mq = None
    if path.exists() and not settings.rebuild:
        try:
            mq = MultiQuantizer.load(path, model)
        except ModelMismatchError as exc:  # the model was retrained or replaced since: the file is stale
            print(f"rebuilding the multiquantizer: {exc}")
        if mq is not None and (set(mq.options) != set(options) or mq.settings != settings.quantizer):
            mq = None  # saved with other options or heuristics: rebuild rather than mix
    if mq is None:
        mq = MultiQuantizer.build(model, options, settings.quantizer, progress=settings.progress and not settings.smoke)
        mq.save(path)
    space = mq.search_space()
    space.to_csv(directory / "search_space.csv", index=False)
    summary = {
        "model_id": settings.model_id,
        "n_units": len(mq.units),
        "n_weights": int(mq.cost(mq.uniform(None))["n_weights"]),
        "options": [s.key for s in mq.options],
        "mean_error": space.groupby("option")["error"].mean().round(8).to_dict(),
        "uniform_avg_bits": {s.key: round(mq.cost(mq.uniform(s))["avg_bits"], 6) for s in mq.options},
    }
    write_run_record(directory, settings, summary, float_weights_sha256=mq.checksum)
    return Result(settings, directory, mq, space, summary)


def option_order(spec: QuantSpec) -> tuple[int, int]:
    """Display order: methods as in METHODS, then high bits before low."""
    return METHODS.index(spec.method), -spec.w_bits


def summary_text(result: Result) -> str:
    """`summary_table` as fixed-precision text (what the notebook prints)."""
    return summary_table(result).to_string(float_format=lambda v: f"{v:.4g}")


def summary_table(result: Result) -> pd.DataFrame:
    """Per option: mean/median/max relative error over layers and the uniform configuration's avg bits."""
    table = result.search_space.groupby(["method", "w_bits"])["error"].agg(["mean", "median", "max"])
    table["uniform_avg_bits"] = [
        result.summary["uniform_avg_bits"][QuantSpec(m, b).key] for m, b in table.index
    ]
    return table.loc[sorted(table.index, key=lambda mb: option_order(QuantSpec(*mb)))]


def plot_layer_errors(result: Result) -> Figure:
    """Heatmap of each layer's relative error (log scale) by method × bits; saved to figures/."""
    space = result.search_space
    units = list(dict.fromkeys(space["unit"]))
    grid = space.pivot(index="option", columns="unit", values="error")[units]
    grid = grid.loc[[s.key for s in sorted(map(QuantSpec.parse, grid.index), key=option_order)]]
    fig, ax = new_figure(width=min(24, 4 + 0.12 * len(units)), height=3.6)
    exact = grid.to_numpy() == 0  # e.g. K-Means-C on rows with ≤ 2^b weights
    positive = grid.to_numpy()[~exact]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    sns.heatmap(grid.mask(exact), ax=ax, norm=norm, cmap="magma_r", cbar_kws={"label": "relative error"})
    ax.grid(False)
    step = max(1, int(np.ceil(len(units) / 40)))
    ax.set_xticks(np.arange(0, len(units), step) + 0.5)
    ax.set_xticklabels(units[::step], rotation=90, fontsize=6)
    ax.set_xlabel(f"layer (module order, {len(units)} units)" + ("; blank = exact (error 0)" if exact.any() else ""))
    ax.set_ylabel("method-bits")
    ax.set_title(f"{result.settings.model_id}: per-layer weight quantization error ‖W−Ŵ‖²/‖W‖²")
    directory = result.directory if result.settings.smoke else None
    savefig(fig, f"01_layer_errors_{result.settings.model_id}", directory)
    return fig
