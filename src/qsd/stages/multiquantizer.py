"""Stage 01: every weight-quantization option of every layer (paper §3.1; notebook 01_multiquantizer).

Builds (or loads, when a file for the same weights, options and heuristics exists) the MultiQuantizer of
`model_id`: UAQ, K-Means-C and K-Means-A at each bit width for every Linear/Conv layer, with the quantizer
settings of the model's registry entry (`ModelEntry.quantizer`) unless others are given. `space` picks the search
space (`qsd.space`): 'paper' (the reproduction), or 'extended' (also 8-bit UAQ, and keeping a layer float).
Then, because the paper's sensitivity proxies assume that a layer's weight error predicts the damage its
quantization does, it measures that damage: for each layer and each of `damage_options`, only that layer is
quantized and the mean squared pixel distance of `damage_images` samples to the float model's (same noise, same
prompts) is recorded beside the layer's weight error. Writes to `data/runs/<model_id>/<run_id>/01_multiquantizer/`:
  multiquantizer.safetensors   codes + lookup tables of every option (reloadable, verified); stages 02 and 07
                               read it and never rebuild it
  search_space.csv             one row per (layer, choice): size in bits and relative error
  layer_damage.csv             one row per (layer, damage option): relative error and sample MSE
  settings.json, provenance.json, summary.json
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from qsd.config import FLOAT_KEY, METHODS, QuantSpec, option_key, option_order, parse_option
from qsd.errors import CorruptFileError, ModelMismatchError
from qsd.metrics.proxies import sample_mse
from qsd.models import get_entry, load_denoiser, load_model
from qsd.models.base import DiffusionModel
from qsd.multiquant import DEFAULT_BITS, MultiQuantizer
from qsd.plotting import new_figure, savefig
from qsd.provenance import write_run_record
from qsd.quantizers import QuantizerSettings
from qsd.run_folder import MULTIQUANTIZER, MULTIQUANTIZER_FILE, OPTION_TABLE_FILE
from qsd.sampling import AUTO_DTYPE, SamplingProtocol, generate, resolve_compute_dtype
from qsd.space import search_space
from qsd.stages import StageSettings

STAGE = MULTIQUANTIZER


@dataclass(frozen=True)
class Settings(StageSettings):
    methods: tuple[str, ...] = METHODS
    bits: tuple[int, ...] = DEFAULT_BITS
    space: str = "paper"
    """The search space (`qsd.space`): 'paper' or 'extended' (adds 8-bit UAQ and float layers as choices)."""
    quantizer: QuantizerSettings | None = None
    """The quantizers' heuristics; None = the model's registry entry's (`ModelEntry.quantizer`)."""
    rebuild: bool = False
    """Rebuild even if a saved multiquantizer for these weights exists."""
    damage_options: tuple[str, ...] = ("uaq-3", "kmeans_c-3", "kmeans_a-3")
    """Options applied to one layer at a time to measure the damage to the images; () skips the measurement."""
    damage_images: int = 64
    """Samples per single-layer configuration."""
    damage_units: int | None = None
    """Measure only the first this many units (None = all)."""
    damage_steps: int | None = None
    """Solver steps of the damage samples (None = the model's protocol)."""
    compute_dtype: str = AUTO_DTYPE
    """The denoiser's compute precision while sampling (as in stage 02; 'auto' = bfloat16 where the CPU computes it
    natively, else float32)."""
    compile: bool = True
    """torch.compile the denoiser while sampling (as in stage 02; never in smoke runs)."""
    progress: bool = True

    SMOKE: ClassVar[dict[str, object]] = {"damage_images": 8, "damage_units": 3, "damage_steps": 4, "compile": False,
                                          "progress": False}
    RANGES: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "bits": (2, 8), "damage_images": (1, None), "damage_units": (1, None), "damage_steps": (1, None)}
    NEUTRAL: ClassVar[tuple[str, ...]] = ("rebuild",)

    def __post_init__(self) -> None:
        super().__post_init__()
        search_space(self.space)  # an unknown space is an error naming the spaces

    def resolve(self) -> Settings:
        entry = get_entry(self.model_id)
        return dataclasses.replace(self, quantizer=self.quantizer or entry.quantizer,
                                   damage_steps=self.damage_steps or entry.sampler.steps,
                                   compute_dtype=resolve_compute_dtype(self.compute_dtype))


@dataclass
class Result:
    settings: Settings
    directory: Path
    multiquantizer: MultiQuantizer
    search_space: pd.DataFrame
    damage: pd.DataFrame | None
    summary: dict


def _build_or_load(settings: Settings, denoiser: torch.nn.Module, path: Path) -> MultiQuantizer:
    """Reuse the saved file when it was built for these weights, options and heuristics; otherwise (re)build."""
    space = search_space(settings.space)
    options = space.options([QuantSpec(m, b) for m in settings.methods for b in settings.bits])
    if path.exists() and not settings.rebuild:
        try:
            mq = MultiQuantizer.load(path, denoiser)
            if (set(mq.options) == set(options) and mq.float_option == space.float_option
                    and mq.settings == settings.quantizer):
                return mq
            print("rebuilding the multiquantizer: it was saved with other options or quantizer settings")
        except (ModelMismatchError, CorruptFileError) as exc:  # retrained weights, or an older file format
            print(f"rebuilding the multiquantizer: {exc}")
    mq = MultiQuantizer.build(denoiser, options, settings.quantizer, progress=settings.progress,
                              float_option=space.float_option)
    mq.save(path)
    return mq


def damage_protocol(settings: Settings) -> SamplingProtocol:
    """The model's own protocol (guidance, seed; steps unless `damage_steps`) at `damage_images` images."""
    return SamplingProtocol.for_model(get_entry(settings.model_id), n_images=settings.damage_images,
                                      steps=settings.damage_steps, seed=settings.seed,
                                      compute_dtype=settings.compute_dtype, compile=settings.compile)


def layer_damage(model: DiffusionModel, mq: MultiQuantizer, options: list[QuantSpec], protocol: SamplingProtocol,
                 units: list[str], progress: bool = True) -> pd.DataFrame:
    """Per unit and option: the unit's relative weight error and the sample MSE to the float model's images when
    only that unit is quantized with that option (every other layer float)."""
    float_images = generate(model, protocol, progress=False)
    rows = []
    jobs = [(unit, spec) for unit in units for spec in options]
    for unit, spec in tqdm(jobs, desc="single-layer damage", unit="config", disable=not progress):
        mq.apply(mq.uniform(None).with_layers({unit: spec}))
        try:
            images = generate(model, protocol, progress=False)
        finally:
            mq.restore()
        rows.append({"unit": unit, "option": spec.key, "method": spec.method, "w_bits": spec.w_bits,
                     "error": mq.errors[unit][spec], "sample_mse": sample_mse(images, float_images)})
    return pd.DataFrame(rows)


def damage_correlations(damage: pd.DataFrame) -> dict[str, float | None]:
    """Spearman correlation of weight error and sample MSE across layers, per option (None with < 3 layers)."""
    return {option: (round(float(spearmanr(rows["error"], rows["sample_mse"]).statistic), 4) if len(rows) >= 3
                     else None)
            for option, rows in damage.groupby("option", sort=False)}


def run(settings: Settings) -> Result:
    """Build or load the multiquantizer of `settings.model_id`, record its search space and single-layer damage."""
    settings = settings.effective()
    directory = settings.output_dir(STAGE)
    entry = get_entry(settings.model_id)
    model = load_model(settings.model_id) if entry.loader is not None else None  # random test models cannot sample
    denoiser = model.denoiser if model is not None else load_denoiser(settings.model_id, seed=settings.seed)
    mq = _build_or_load(settings, denoiser, directory / MULTIQUANTIZER_FILE)
    space = mq.search_space()
    space.to_csv(directory / OPTION_TABLE_FILE, index=False)
    damage = None
    if model is not None and settings.damage_options:
        damage = layer_damage(model, mq, [QuantSpec.parse(k) for k in settings.damage_options],
                              damage_protocol(settings), mq.unit_names[:settings.damage_units], settings.progress)
        damage.to_csv(directory / "layer_damage.csv", index=False)
    summary = {
        "model_id": settings.model_id,
        "n_units": len(mq.unit_names),
        "n_weights": int(mq.cost(mq.uniform(None))["n_weights"]),
        "space": settings.space,
        "options": [option_key(s) for s in mq.choices],
        "quantizer": mq.settings.to_json(),
        "mean_error": space.groupby("option")["error"].mean().round(8).to_dict(),
        "uniform_avg_bits": {option_key(s): round(mq.cost(mq.uniform(s))["avg_bits"], 6) for s in mq.choices},
        "damage_spearman_error_vs_sample_mse": None if damage is None else damage_correlations(damage),
    }
    write_run_record(directory, settings, summary, float_weights_sha256=mq.checksum)
    return Result(settings, directory, mq, space, damage, summary)


def summary_text(result: Result) -> str:
    """`summary_table` as fixed-precision text, and the error-vs-damage correlations (what the notebook prints)."""
    text = summary_table(result).to_string(float_format=lambda v: f"{v:.4g}")
    correlations = result.summary["damage_spearman_error_vs_sample_mse"]
    if correlations:
        text += "\nSpearman(layer weight error, single-layer sample MSE): " + ", ".join(
            f"{option} {'n/a' if rho is None else f'{rho:.3f}'}" for option, rho in correlations.items())
    return text


def summary_table(result: Result) -> pd.DataFrame:
    """Per choice of the space: mean/median/max relative error over layers and the uniform configuration's avg
    bits."""
    table = result.search_space.groupby("option")["error"].agg(["mean", "median", "max"])
    table["uniform_avg_bits"] = [result.summary["uniform_avg_bits"][key] for key in table.index]
    return table.loc[sorted(table.index, key=lambda key: option_order(parse_option(key)))]


def plot_layer_errors(result: Result) -> Figure:
    """Heatmap of each layer's relative error (log scale) by method × bits; saved to figures/."""
    space = result.search_space[result.search_space["option"] != FLOAT_KEY]  # a float layer has no error
    units = list(dict.fromkeys(space["unit"]))
    grid = space.pivot(index="option", columns="unit", values="error")[units]
    grid = grid.loc[[s.key for s in sorted(map(QuantSpec.parse, grid.index), key=QuantSpec.display_order)]]
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
    ax.set_title(f"{result.settings.subject()}: per-layer weight quantization error ‖W−Ŵ‖²/‖W‖²")
    directory = result.settings.figures_to(result.directory)
    savefig(fig, result.settings.figure_name("01_layer_errors"), directory)
    return fig


def plot_layer_damage(result: Result) -> Figure | None:
    """Each layer's weight error against the damage of quantizing only that layer (sample MSE to the float
    model), one panel per option with its Spearman ρ; saved to figures/ (None: not measured)."""
    damage = result.damage
    if damage is None or damage.empty:
        return None
    options = list(dict.fromkeys(damage["option"]))
    correlations = result.summary["damage_spearman_error_vs_sample_mse"]
    fig, axes = new_figure(4.2 * len(options), 3.8, ncols=len(options), squeeze=False, sharey=True)
    for ax, option in zip(axes[0], options, strict=True):
        rows = damage[damage["option"] == option]
        ax.scatter(rows["error"], rows["sample_mse"].clip(lower=1e-12), s=14, alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        rho = correlations[option]
        ax.set_title(f"{option}: Spearman ρ = {'n/a' if rho is None else f'{rho:.2f}'}", fontsize=9)
        ax.set_xlabel("layer weight error ‖W−Ŵ‖²/‖W‖²")
        for row in rows.nlargest(3, "sample_mse").itertuples():
            ax.annotate(row.unit, (row.error, row.sample_mse), fontsize=5, textcoords="offset points", xytext=(3, 2))
    axes[0][0].set_ylabel("sample MSE to float (only this layer quantized)")
    fig.suptitle(f"{result.settings.subject()}: does a layer's weight error predict the damage it does? "
                 f"({len(damage) // len(options)} layers)", fontsize=10)
    directory = result.settings.figures_to(result.directory)
    savefig(fig, result.settings.figure_name("01_layer_damage"), directory)
    return fig
