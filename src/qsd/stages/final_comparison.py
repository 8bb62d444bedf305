"""Stage 06: the final comparison — Qua²SeDiMo's W3.x configurations with activation quantization against the
published baselines at W4A8 and W4A6 (paper §6, Fig. 1 and the W4A6 tables; notebook 06_final_comparison).

Steps:
  1. Read stage 02's sampling protocol and stage 01's multiquantizer; read stage 05's Qua²SeDiMo configurations at
     `budgets` (its frontier.csv, `RunFolder.frontier_config`: per budget the best labelled configuration, the search
     loop's or, where nothing built beat it, a uniform or random one, which its row name then says; a budget below
     every built one is an error naming the lowest). Nothing upstream is re-run.
  2. Calibration set for the baselines: the float model's own inputs at every solver step while it samples
     `calibration_samples` images (noise seed `calibration_seed`, never an evaluation seed).
  3. Rows, each sampled under stage 02's protocol (eagerly: activation quantizers are hooks) at `noise_seeds`
     held-out noise seeds (`evaluation_seeds`: none that stages 00-05 labelled or selected with, nor the calibration
     seed), FID and prompt accuracy (CLIP score with stage 02's CLIP) per seed:
     * the float model;
     * every baseline (`qsd.baselines`) at W4 with each of `baseline_a_bits`;
     * each Qua²SeDiMo configuration with each of `qsd_a_bits` (16 = float activations; otherwise the paper's
       token-wise online quantizer, `QuantSpec.a_bits`);
     * each Qua²SeDiMo configuration's weights with DMQ's activation treatment (per-step static ranges + power-of-two
       channel scaling) at each of `dmq_a_bits`;
     * the baseline `variants` at each of `variant_a_bits` (`VARIANTS`: RTN keeping DMQ's float layers, DMQ's
       neighbour at equal bits; ViDiT-Q's mixed precision, its published best; ViDiT-Q's channel balancing as its
       paper describes it);
     every method keeping float what its release keeps float (`RELEASED`); then, under one rule for all
     (`FIRST_LAST`: the first and last layer float), at each of `first_last_a_bits`: every baseline whose release
     keeps other layers and each Qua²SeDiMo configuration;
     * with `extended_run` (issue 31 item 8), that extended-search-space run's stage-05 configurations at `budgets`,
       applied through its own multiquantizer, at each of `qsd_a_bits` (released: as its search built them, float
       layers included) and `first_last_a_bits` ('Qua²SeDiMo-ext' rows; the held-out seeds avoid its seeds too).
  4. Real low-bit weights: each Qua²SeDiMo configuration at the lowest of `qsd_a_bits` exported packed
     (`qsd.export`), reloaded and sampled through the packed kernels at the first noise seed; its FID, resident weight
     bytes and sampling seconds against the float model's, timed in the same process.
  5. The headline (`summary.json`): the Qua²SeDiMo configuration at `w3x_budget` with A6 against the best W4A6
     baseline (released conventions), and whether it wins beyond the seed spread (its mean + std below the baseline's
     mean − std); the Pareto verdict `qsd_dominates` over every baseline row, at matched convention, activation bits
     and no more weight bits (`extended_dominates`: the same for the Qua²SeDiMo-ext rows).

Rows are saved as they finish (`rows/<key>.json` and their grid images, `qsd.row_cache`), each under what it alone
depends on: a re-run resumes from them, and changing `progress` or adding a budget re-measures only what changed.
Outputs in `data/runs/<model_id>/<run_id>/06_final_comparison/`: comparison.csv, rules.csv (`rule_table`),
packed.csv, summary.json; figures
`06_grid_<model_id>.png` (Fig. 1 style: same prompts and noise for every method) and `06_fid_a6_<model_id>.png`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from qsd.baselines import BASELINES, baseline, baseline_settings
from qsd.baselines.calibration import CalibrationSet
from qsd.baselines.common import first_and_last, quantized_copy
from qsd.baselines.viditq import PAPER_BALANCING
from qsd.config import QuantConfig
from qsd.errors import InvalidSettingError
from qsd.files import atomic_write
from qsd.label_session import LabellingSetup
from qsd.labelling import Labeller
from qsd.layers import quantizable_units
from qsd.models import load_model
from qsd.models.base import DiffusionModel
from qsd.multiquant import MultiQuantizer
from qsd.packed import export, load_quantized, memory_report
from qsd.plotting import label_points, new_figure, savefig
from qsd.provenance import write_run_record
from qsd.row_cache import RowCache, without_record
from qsd.run_folder import COMPARISON, COMPARISON_FILE, LABELS, RULES_FILE, RunFolder
from qsd.sampling import SamplingProtocol, generate
from qsd.stages import StageSettings

STAGE = COMPARISON
FLOAT_ACTIVATIONS = 16
"""`qsd_a_bits` entry meaning float (16-bit) activations."""
W_BITS = 4
"""The baselines' weight bits (the paper compares its W3.x with W4 baselines)."""
HEADLINE_A_BITS = 6
VARIANTS = {"DMQ's float layers": ("rtn", {"keep_time_embedding": True}),
            "mixed precision": ("viditq", {"mp_fraction": 0.15}),
            "paper's balancing": ("viditq", PAPER_BALANCING)}
"""Baseline rows beside the methods as released, by name (their row is "<method> W4A<a> (<name>)"): the method and
the overrides of its settings. RTN keeping DMQ's float layers (its timestep path too) sits at DMQ's bits, so DMQ's
lead over RTN is not its float path; ViDiT-Q's metric-decoupled mixed precision (≈15 % of each group's layers at
W8A8, the paper's W4A8-MP) is its published best result; its channel balancing as the paper's text describes it
(every linear layer smoothed, rotated), where its released PixArt code smooths one layer and rotates none."""
RELEASED, FIRST_LAST = CONVENTIONS = ("released", "first_last")
"""Which layers a row keeps float. 'released': each method as its release keeps them (Qua²SeDiMo: none, as the
paper's search space). 'first_last': every method, Qua²SeDiMo included, keeps exactly the first and last layer a
forward pass calls (each baseline's `FIRST_LAST_FLOAT`), so a gap between rows is not the convention."""
FIRST_LAST_SUFFIX = " (first/last float)"
"""What a row's name gains under the 'first_last' convention (`convention_name`)."""
UNBUILT_SOURCES = ("uniform", "random")
"""Stage-05 frontier sources (frontier.csv `source`) that no construction built; the row name says which."""
QSD = "Qua²SeDiMo"
EXTENDED = "qsd-ext"
"""The family of the extended search space's Qua²SeDiMo rows (`extended_run`)."""
FAMILY_METHODS = {"qsd": QSD, EXTENDED: "Qua²SeDiMo-ext"}
"""A Qua²SeDiMo family's method name (its rows' names start with it)."""
FAMILY_COLOURS = {"baseline": "#777777", "qsd": "#d1495b", "qsd+dmq": "#5b8fd1", EXTENDED: "#2a9d8f"}
"""Each family's colour in the figures."""


@dataclass(frozen=True)
class Settings(StageSettings):
    budgets: tuple[float, ...] = (4.0, 3.7, 3.4)
    """Average-bit budgets of the Qua²SeDiMo configurations taken from stage 05 (the largest built budget up to
    each)."""
    w3x_budget: float = 3.7
    """The headline W3.x configuration (fixed before anything is measured)."""
    baselines: tuple[str, ...] = tuple(BASELINES)
    baseline_a_bits: tuple[int, ...] = (8, 6)
    qsd_a_bits: tuple[int, ...] = (FLOAT_ACTIVATIONS, 8, 6)
    """Activation bits of the Qua²SeDiMo rows (16 = float activations)."""
    dmq_a_bits: tuple[int, ...] = (6,)
    """Activation bits of the rows with Qua²SeDiMo weights and DMQ's activation treatment (empty: none)."""
    variants: tuple[str, ...] = tuple(VARIANTS)
    """The `VARIANTS` rows measured (each only when its method is among `baselines`)."""
    variant_a_bits: tuple[int, ...] = (HEADLINE_A_BITS,)
    """Activation bits of the variant rows."""
    conventions: tuple[str, ...] = CONVENTIONS
    """The float-layer conventions measured (`CONVENTIONS`); 'released' always."""
    first_last_a_bits: tuple[int, ...] = (HEADLINE_A_BITS,)
    """Activation bits of the rows measured under the 'first_last' convention (a baseline whose released rule is
    already that one is not measured twice)."""
    noise_seeds: int = 3
    """Every FID is the mean over this many noise seeds (its spread is in the table)."""
    calibration_samples: int = 32
    """Images whose sampling trajectories calibrate the baselines (both guidance halves, every step)."""
    calibration_seed: int = 1000
    """Noise seed of the calibration trajectories (not an evaluation seed)."""
    evaluation_seed: int | None = None
    """First of the `noise_seeds` consecutive noise seeds every row is scored at; None = one past every seed the run
    sampled with (`RunFolder.sampled_seeds`). Seeds the run labelled, selected or calibrated with are refused."""
    baseline_settings: dict = field(default_factory=dict)
    """Per baseline, overrides of its `Settings` (e.g. {"qdiffusion": {"iters": 100}})."""
    extended_run: str | None = None
    """The run_id of an extended-search-space run of this model (`qsd.space`; stages 01-05 run there): its stage-05
    configurations at `budgets` join the table as 'Qua²SeDiMo-ext' rows, measured like this run's Qua²SeDiMo rows
    (same protocol, held-out seeds, activation bits and conventions), so both spaces' frontiers stand beside the
    baselines (`extended_dominates`). None: no such rows."""
    grid_images: int = 8
    packed: bool = True
    """Export, reload and sample the Qua²SeDiMo configurations packed (step 4)."""
    progress: bool = True

    SMOKE: ClassVar[dict[str, object]] = {"noise_seeds": 2, "calibration_samples": 2, "grid_images": 4,
                                          "baseline_a_bits": (HEADLINE_A_BITS,),
                                          "qsd_a_bits": (FLOAT_ACTIVATIONS, HEADLINE_A_BITS), "progress": False}
    """A smoke run measures A6 only besides float activations (A8 rows run the same code at other bits)."""
    RANGES: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "budgets": (1, 16), "w3x_budget": (1, 16), "qsd_a_bits": (2, 16), "noise_seeds": (1, None),
        "calibration_samples": (1, None), "grid_images": (1, None)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if unknown := set(self.variants) - set(VARIANTS):
            raise InvalidSettingError(f"unknown variant(s) {sorted(unknown)}; known: {', '.join(VARIANTS)}")
        if unknown := set(self.baselines) - set(BASELINES):
            raise InvalidSettingError(f"unknown baseline(s) {sorted(unknown)}; known: {', '.join(BASELINES)}")
        if RELEASED not in self.conventions or not set(self.conventions) <= set(CONVENTIONS):
            raise InvalidSettingError(f"conventions {self.conventions} must include {RELEASED!r} and be among "
                                      f"{', '.join(CONVENTIONS)}")
        for bits in (*self.baseline_a_bits, *self.qsd_a_bits, *self.dmq_a_bits, *self.variant_a_bits,
                     *self.first_last_a_bits):
            if bits != FLOAT_ACTIVATIONS and not 2 <= bits <= 8:
                raise InvalidSettingError(f"activation bits must be 2-8 or {FLOAT_ACTIVATIONS} (float); got {bits}")


RowBuilder = Callable[[], tuple[DiffusionModel | None, dict]]
"""Builds a row's model (None: the float model) and its fixed columns."""


@dataclass
class Result:
    settings: Settings
    directory: Path
    table: pd.DataFrame
    """One row per method: family, method, avg_bits, size_mib, a_bits, fid_mean, fid_std, fid per seed, prompt
    accuracy (and CLIP score), calibration seconds."""
    packed: pd.DataFrame
    grid: dict[str, torch.Tensor]
    summary: dict


@dataclass
class Context:
    """What every row is measured with."""

    settings: Settings
    directory: Path
    model: DiffusionModel
    multiquantizer: MultiQuantizer
    protocol: SamplingProtocol
    labeller: Labeller
    batch_size: int
    common: dict
    """What every row depends on (the protocol, the float weights, the seeds and images it is scored on)."""
    rows: RowCache


def selection_runs(settings: Settings) -> list[RunFolder]:
    """The runs whose configurations this stage evaluates: this one, and `extended_run` if given."""
    runs = [RunFolder(settings.model_id, settings.run_id)]
    return runs + ([RunFolder(settings.model_id, settings.extended_run)] if settings.extended_run else [])


def sampled_seeds(runs: Sequence[RunFolder]) -> set[int]:
    """Every noise seed any of `runs` sampled with (`RunFolder.sampled_seeds`)."""
    return set().union(*(run.sampled_seeds() for run in runs))


def evaluation_seeds(runs: Sequence[RunFolder], settings: Settings) -> list[int]:
    """The held-out noise seeds: `noise_seeds` consecutive ones from `evaluation_seed` (default: one past every seed
    the runs sampled with). Stage 05 chose its configurations with labels at stage 02's seed, so scoring them there
    would favour them; a seed a run sampled with, or the calibration seed, is refused."""
    sampled = sampled_seeds(runs)
    held_out = max(sampled) + 1
    first = held_out if settings.evaluation_seed is None else settings.evaluation_seed
    seeds = list(range(first, first + settings.noise_seeds))
    if reused := sorted(set(seeds) & (sampled | {settings.calibration_seed})):
        raise InvalidSettingError(
            f"evaluation seeds {seeds} include {reused}, which the runs already sampled with (labelling, selection "
            f"and float spread: {sorted(sampled)}; calibration: {settings.calibration_seed}); choose an "
            f"evaluation_seed whose {settings.noise_seeds} seeds avoid them, or leave it None (seeds from {held_out})")
    return seeds


def evaluation_protocol(runs: Sequence[RunFolder], settings: Settings) -> tuple[LabellingSetup, SamplingProtocol]:
    """This run's (the first's) stage-02 labelling setup and its protocol at the first held-out seed
    (`evaluation_seeds`), sampled eagerly (activation quantizers are forward hooks); `Labeller.seed_scores` takes
    the next seeds from there."""
    setup = LabellingSetup.of(runs[0].settings(LABELS))
    return setup, dataclasses.replace(setup.protocol(), seed=evaluation_seeds(runs, settings)[0], compile=False)


def measure(context: Context, name: str, variant: RowBuilder, depends_on: dict | None = None) -> dict:
    """The row `name`: `variant()` builds the model to sample (None: the float model, whose first-seed images the
    labeller holds) and the row's fixed columns; FID and prompt accuracy at every noise seed. A row saved under
    what it depends on (the context's `common` plus `depends_on`: a method's effective settings, a configuration's
    fingerprint, activation bits) is read back instead."""
    def build() -> dict:
        model, columns = variant()
        scores, images = context.labeller.seed_scores(context.settings.noise_seeds, model,
                                                      context.settings.grid_images)
        atomic_write(context.rows.path(name, ".safetensors"),
                     lambda tmp: save_file({"images": images.contiguous()}, str(tmp)))
        return {"name": name, **columns, **scores}

    return context.rows.measure(name, context.common | (depends_on or {}), build)


def grid_images(context: Context, name: str) -> torch.Tensor:
    return load_file(str(context.rows.path(name, ".safetensors")))["images"]


def qsd_method(settings: Settings) -> str:
    """The method name of this run's Qua²SeDiMo rows: 'Qua²SeDiMo-ext' when the run's search space is the extended
    one (so its rows never pass for the paper's)."""
    return QSD if settings.run_space() == "paper" else FAMILY_METHODS[EXTENDED]


def qsd_name(config_row: dict, a_bits: int, method: str = QSD) -> str:
    """'Qua²SeDiMo W<avg bits>A<a_bits>' ('Qua²SeDiMo-ext' for the extended space's), naming the configuration when
    stage 05's frontier took one it did not build (a uniform or random row that nothing built beat at its budget)."""
    name = f"{method} W{config_row['avg_bits']:.2f}A{a_bits}"
    return name + (f" ({config_row['name']})" if config_row.get("source") in UNBUILT_SOURCES else "")


def convention_name(name: str, convention: str) -> str:
    """A row's name under `convention` (released rows keep the plain name)."""
    return name if convention == RELEASED else name + FIRST_LAST_SUFFIX


def method_settings(settings: Settings, name: str, convention: str = RELEASED, extra: dict | None = None) -> object:
    """Baseline `name`'s effective settings in stage 06: smoke shrinking, the user's `baseline_settings`, the
    convention's float layers, then a row's own `extra` overrides."""
    module = baseline(name)
    overrides = ((module.SMOKE if settings.smoke else {}) | settings.baseline_settings.get(name, {})
                 | (module.FIRST_LAST_FLOAT if convention == FIRST_LAST else {}) | (extra or {}))
    return baseline_settings(name, overrides)


def first_last_aliases(settings: Settings) -> dict[str, str]:
    """The 'first_last' baseline rows that are their released row (the release already keeps exactly the first and
    last layer float, at activation bits measured anyway): alias name → released row name. They are not measured
    twice."""
    if FIRST_LAST not in settings.conventions:
        return {}
    return {convention_name(row, FIRST_LAST): row for a in settings.first_last_a_bits for name in settings.baselines
            if a in settings.baseline_a_bits and (row := f"{BASELINES[name]} W{W_BITS}A{a}")
            and method_settings(settings, name, FIRST_LAST) == method_settings(settings, name)}


def plan(context: Context, configs: dict[str, tuple[QuantConfig, dict]], calibration: Callable[[], CalibrationSet],
         extended: tuple[MultiQuantizer, dict[str, tuple[QuantConfig, dict]]] | None = None
         ) -> list[tuple[str, RowBuilder, dict]]:
    """Every row to measure, in table order: (name, builder of its model and fixed columns, what the row depends on
    beyond the context's `common`). `extended`: the extended run's multiquantizer and configurations."""
    s, model, mq = context.settings, context.model, context.multiquantizer
    n_weights = mq.cost(mq.uniform(None))["n_weights"]

    def columns(family: str, method: str, avg_bits: float, a_bits: int, seconds: float,
                convention: str = RELEASED, **extra) -> dict:
        return {"family": family, "method": method, "avg_bits": avg_bits, "a_bits": a_bits, "convention": convention,
                "size_mib": avg_bits * n_weights / 8 / 2**20, "calibration_s": seconds, **extra}

    def float_row() -> tuple[None, dict]:
        return None, columns("float", "float", 16.0, FLOAT_ACTIVATIONS, 0.0)

    def baseline_row(name: str, a_bits: int, convention: str = RELEASED, extra: dict | None = None):
        def build() -> tuple[DiffusionModel, dict]:
            result = baseline(name).quantize(model.denoiser, calibration(), W_BITS, a_bits,
                                             method_settings(s, name, convention, extra), seed=s.seed)
            return model.with_denoiser(result.denoiser), columns(
                "baseline", BASELINES[name], result.avg_bits, a_bits, result.calibration_seconds, convention,
                settings=result.settings)
        return build

    own_method = qsd_method(s)

    def qsd_row(config: QuantConfig, config_row: dict, a_bits: int, convention: str = RELEASED,
                source: MultiQuantizer = mq, family: str = "qsd", method: str = own_method):
        def build() -> tuple[DiffusionModel, dict]:
            mq.restore()  # either multiquantizer restores the same float weights
            chosen = config if convention == RELEASED else with_float_ends(config, model.denoiser, calibration())
            source.apply(chosen.with_a_bits(None if a_bits == FLOAT_ACTIVATIONS else a_bits))
            return model, columns(family, method, source.cost(chosen)["avg_bits"], a_bits, 0.0,
                                  convention, config=config_row["name"],
                                  float_layers=sorted(unit for unit, spec in chosen.items() if spec is None))
        return build

    def qsd_dmq_row(config: QuantConfig, config_row: dict, a_bits: int):
        def build() -> tuple[DiffusionModel, dict]:
            mq.restore()
            mq.apply(config)
            denoiser = quantized_copy(model.denoiser)
            mq.restore()
            start = time.perf_counter()
            treatment = baseline("dmq").activation_treatment(denoiser, calibration(), a_bits,
                                                             method_settings(s, "dmq"))
            return model.with_denoiser(denoiser), columns(
                "qsd+dmq", "Qua²SeDiMo + DMQ act.", mq.cost(config)["avg_bits"], a_bits, time.perf_counter() - start,
                config=config_row["name"], settings=treatment)
        return build

    def calibrated(name: str, a_bits: int, convention: str = RELEASED, extra: dict | None = None) -> dict:
        """What a calibrated row depends on: the method's effective settings, its bits, the calibration set."""
        return {name: dataclasses.asdict(method_settings(s, name, convention, extra)), "w_bits": W_BITS,
                "a_bits": a_bits,
                "calibration": {"samples": s.calibration_samples, "noise_seed": s.calibration_seed, "seed": s.seed}}

    rows = [("float", float_row, {})]
    rows += [(f"{BASELINES[name]} W{W_BITS}A{a}", baseline_row(name, a), calibrated(name, a))
             for a in s.baseline_a_bits for name in s.baselines]
    for a, variant in ((a, v) for a in s.variant_a_bits for v in s.variants):
        method, overrides = VARIANTS[variant]
        if method in s.baselines:
            rows.append((f"{BASELINES[method]} W{W_BITS}A{a} ({variant})", baseline_row(method, a, extra=overrides),
                         calibrated(method, a, extra=overrides)))
    for config, config_row in configs.values():
        fingerprint = {"config": config.fingerprint}
        rows += [(qsd_name(config_row, a, own_method), qsd_row(config, config_row, a), fingerprint | {"a_bits": a})
                 for a in s.qsd_a_bits]
        rows += [(qsd_name(config_row, a, own_method) + " + DMQ act.", qsd_dmq_row(config, config_row, a),
                  fingerprint | calibrated("dmq", a)) for a in s.dmq_a_bits]
    if FIRST_LAST in s.conventions:
        aliases = first_last_aliases(s)
        rows += [(name, baseline_row(method, a, FIRST_LAST), calibrated(method, a, FIRST_LAST))
                 for a in s.first_last_a_bits for method in s.baselines
                 if (name := convention_name(f"{BASELINES[method]} W{W_BITS}A{a}", FIRST_LAST)) not in aliases]
        rows += [(convention_name(qsd_name(config_row, a, own_method), FIRST_LAST),
                  qsd_row(config, config_row, a, FIRST_LAST),
                  {"config": config.fingerprint, "a_bits": a, "convention": FIRST_LAST})
                 for config, config_row in configs.values() for a in s.first_last_a_bits]
    if extended is not None:
        ext_mq, ext_configs = extended
        method = FAMILY_METHODS[EXTENDED]
        for convention, a_bits in ((RELEASED, s.qsd_a_bits), (FIRST_LAST, s.first_last_a_bits)):
            if convention not in s.conventions:
                continue
            rows += [(convention_name(qsd_name(config_row, a, method), convention),
                      qsd_row(config, config_row, a, convention, ext_mq, EXTENDED, method),
                      {"config": config.fingerprint, "a_bits": a, "convention": convention, "space": "extended"})
                     for config, config_row in ext_configs.values() for a in a_bits]
    return rows


def with_float_ends(config: QuantConfig, denoiser: torch.nn.Module, calibration: CalibrationSet) -> QuantConfig:
    """`config` with the units of the first and last layer a forward pass calls set float (the 'first_last'
    convention; their FP16 weights count in the average bits as everywhere)."""
    ends = set(first_and_last(denoiser, calibration))
    end_units = {u.name for u in quantizable_units(denoiser) if u.module in ends}
    return QuantConfig({unit: None if unit in end_units else config[unit] for unit in config})


def stage_configs(settings: Settings, run: RunFolder) -> dict[str, tuple[QuantConfig, dict]]:
    """Stage 05's configurations at `budgets` plus `w3x_budget`, keyed by name (budgets mapping to the same built
    configuration appear once)."""
    configs = {}
    for budget in sorted({*settings.budgets, settings.w3x_budget}, reverse=True):
        config, row = run.frontier_config(budget)
        configs.setdefault(row["name"], (config, row | {"avg_bits": float(row["avg_bits"])}))
    return configs


def run(settings: Settings) -> Result:
    """Measure every row (see the module docstring), resuming from saved rows."""
    settings = settings.effective()
    runs = selection_runs(settings)
    run_folder = runs[0]
    labelling, protocol = evaluation_protocol(runs, settings)
    configs = stage_configs(settings, run_folder)
    w3x_name = run_folder.frontier_config(settings.w3x_budget)[1]["name"]
    model = load_model(settings.model_id, device=labelling.device)
    mq = run_folder.multiquantizer(model.denoiser)
    extended = None
    if settings.extended_run:
        if (space := runs[1].space()) != "extended":
            raise InvalidSettingError(f"extended_run={settings.extended_run!r} is a {space!r}-space run; name a run "
                                      "whose notebook 01 ran with space='extended'")
        extended = runs[1].multiquantizer(model.denoiser), stage_configs(settings, runs[1])
    directory = settings.output_dir(STAGE)
    labeller = Labeller(model, protocol, labelling.n_probe, labelling.batch_size, progress=False,
                        clip_dir=labelling.clip_dir)
    common = {"protocol": dataclasses.asdict(protocol), "float_weights_sha256": mq.checksum,
              "batch_size": labelling.batch_size, "clip_dir": labelling.clip_dir,
              "noise_seeds": settings.noise_seeds, "grid_images": settings.grid_images}
    context = Context(settings, directory, model, mq, protocol, labeller, labelling.batch_size, common,
                      RowCache(directory / "rows"))
    cache: list[CalibrationSet] = []

    def calibration() -> CalibrationSet:
        if not cache:
            cache.append(CalibrationSet.from_model(model, protocol, settings.calibration_samples,
                                                   settings.calibration_seed))
        return cache[0]

    rows = plan(context, configs, calibration, extended)
    measured = []
    for name, build, depends_on in tqdm(rows, desc="final comparison", unit="row", disable=not settings.progress):
        try:
            measured.append(measure(context, name, build, depends_on))
        finally:
            mq.restore()
    by_name = {row["name"]: row for row in measured}
    measured += [by_name[released] | {"name": alias, "convention": FIRST_LAST}
                 for alias, released in first_last_aliases(settings).items()]
    table = pd.DataFrame([without_record(row) for row in measured])
    table.drop(columns=[c for c in ("settings",) if c in table]).to_csv(directory / COMPARISON_FILE, index=False)
    packed = packed_rows(context, configs) if settings.packed else pd.DataFrame()
    if len(packed):
        packed.to_csv(directory / "packed.csv", index=False)
    grid = {name: grid_images(context, name) for name, *_ in rows}  # aliases share their released row's images
    summary = _summary(settings, table, w3x_name, packed) | {
        "evaluation_seeds": list(range(protocol.seed, protocol.seed + settings.noise_seeds)),
        "sampled_seeds": sorted(sampled_seeds(runs))}
    result = Result(settings, directory, table, packed, grid, summary)
    rule_table(result).rename_axis(["method", "source"]).reset_index().to_csv(directory / RULES_FILE, index=False)
    write_run_record(directory, settings, summary)
    return result


def timed_generate(model: DiffusionModel, protocol: SamplingProtocol, batch_size: int) -> tuple[torch.Tensor, float]:
    """The protocol's images and their wall seconds, after a one-image warm-up."""
    generate(model, protocol, batch_size=batch_size, progress=False, n_images=1)
    start = time.perf_counter()
    images = generate(model, protocol, batch_size=batch_size, progress=False)
    return images, time.perf_counter() - start


def packed_rows(context: Context, configs: dict[str, tuple[QuantConfig, dict]]) -> pd.DataFrame:
    """Step 4: each configuration at the lowest Qua²SeDiMo activation bits, exported, reloaded and sampled packed at
    the first noise seed, against the float model sampled in the same process (rows saved and resumed as in
    `measure`)."""
    s, model, mq = context.settings, context.model, context.multiquantizer
    a_bits = min(s.qsd_a_bits)
    float_seconds: list[float] = []

    def packed_row(name: str, config: QuantConfig, config_row: dict) -> dict:
        if not float_seconds:
            float_seconds.append(timed_generate(model, context.protocol, context.batch_size)[1])
        activated = config.with_a_bits(None if a_bits == FLOAT_ACTIVATIONS else a_bits)
        path = export(model.denoiser, activated, context.directory / f"{Path(config_row['path']).stem}.safetensors",
                      model_id=s.model_id, multiquantizer=mq)
        packed = model.with_denoiser(load_quantized(path, s.model_id))
        images, seconds = timed_generate(packed, context.protocol, context.batch_size)
        memory = memory_report(packed.denoiser)
        return {"name": qsd_name(config_row, a_bits, qsd_method(context.settings)), "config": name,
                "avg_bits": mq.cost(config)["avg_bits"],
                "a_bits": a_bits, "fid_packed": context.labeller.score(images)["fid"],
                "packed_layers_mib": memory["packed_layers_bytes"] / 2**20,
                "fp16_layers_mib": memory["packed_layers_fp16_bytes"] / 2**20,
                "denoiser_mib": memory["denoiser_bytes"] / 2**20,
                "float_denoiser_mib": memory["denoiser_fp32_bytes"] / 2**20, "file_mib": path.stat().st_size / 2**20,
                "seconds_packed": seconds, "seconds_float": float_seconds[0]}

    rows = []
    for name, (config, config_row) in configs.items():
        depends_on = {"protocol": context.common["protocol"], "float_weights_sha256": mq.checksum,
                      "batch_size": context.batch_size, "config": config.fingerprint, "a_bits": a_bits}
        rows.append(context.rows.measure(f"packed {name}", depends_on, partial(packed_row, name, config, config_row)))
    return pd.DataFrame([without_record(row) for row in rows])


def _summary(settings: Settings, table: pd.DataFrame, w3x_name: str, packed: pd.DataFrame) -> dict:
    a6 = table[(table["a_bits"] == HEADLINE_A_BITS) & (table["convention"] == RELEASED)]
    baselines = as_released(a6)
    headline = a6[(a6["family"] == "qsd") & (a6["config"] == w3x_name)] if "config" in a6 else a6.iloc[:0]
    summary = {"float_fid": float(table.loc[table["family"] == "float", "fid_mean"].iloc[0]),
               "noise_seeds": settings.noise_seeds,
               "rows": {r["name"]: {"avg_bits": round(r["avg_bits"], 4), "fid_mean": round(r["fid_mean"], 3),
                                    "fid_std": round(r["fid_std"], 3)} for _, r in table.iterrows()}}
    if len(headline) and len(baselines):
        q, best = headline.iloc[0], baselines.loc[baselines["fid_mean"].idxmin()]
        beaten = [r["name"] for _, r in baselines.iterrows()
                  if q["fid_mean"] + q["fid_std"] < r["fid_mean"] - r["fid_std"]]
        paired = {r["name"]: paired_difference(r["fid_seeds"], q["fid_seeds"]) for _, r in baselines.iterrows()}
        summary |= {"qsd_w3x_a6_fid": round(float(q["fid_mean"]), 3), "qsd_w3x_a6_fid_std": round(float(q["fid_std"]),
                                                                                                   3),
                    "qsd_w3x_a6_bits": round(float(q["avg_bits"]), 4), "qsd_w3x_config": w3x_name,
                    "best_baseline_w4a6_fid": round(float(best["fid_mean"]), 3),
                    "best_baseline_w4a6_fid_std": round(float(best["fid_std"]), 3),
                    "best_baseline_w4a6": best["method"],
                    "qsd_w3x_a6_beats_every_w4a6_baseline_beyond_spread": len(beaten) == len(baselines),
                    "w4a6_baselines_beaten_beyond_spread": beaten,
                    "w4a6_paired_fid_differences": paired,
                    "w4a6_baselines_beaten_paired": [name for name, d in paired.items() if d["beaten"]]}
    summary["qsd_dominates"] = qsd_dominates(table)
    if settings.extended_run:
        summary |= {"extended_run": settings.extended_run, "extended_dominates": qsd_dominates(table, EXTENDED)}
    summary["baseline_rows"] = int((table["family"] == "baseline").sum())
    if len(packed):
        summary["packed"] = {r["name"]: {"fid_packed": round(r["fid_packed"], 3),
                                         "packed_layers_vs_fp16": round(r["packed_layers_mib"] / r["fp16_layers_mib"],
                                                                        4),
                                         "seconds_packed": round(r["seconds_packed"], 3),
                                         "seconds_float": round(r["seconds_float"], 3)} for _, r in packed.iterrows()}
    return summary


def as_released(table: pd.DataFrame) -> pd.DataFrame:
    """The baseline rows of `table` that are a method as released (not one of the `VARIANTS`)."""
    return table[(table["family"] == "baseline") & ~table["name"].str.endswith(tuple(f" ({v})" for v in VARIANTS))]


def paired_difference(baseline_fids: Sequence[float], qsd_fids: Sequence[float]) -> dict:
    """Baseline FID minus Qua²SeDiMo FID at each noise seed (both sampled from the same noise: common random numbers,
    so the seed-to-seed swing cancels). `beaten`: lower at every seed, and the mean difference above its standard
    deviation. The unpaired rule (mean + std below the other's mean − std) ignores the pairing and is stricter."""
    d = np.asarray(baseline_fids, dtype=float) - np.asarray(qsd_fids, dtype=float)
    std = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    return {"mean": round(float(d.mean()), 3), "std": round(std, 3), "per_seed": [round(float(x), 3) for x in d],
            "beaten": bool((d > 0).all() and d.mean() > std)}


def qsd_dominates(table: pd.DataFrame, family: str = "qsd") -> dict[str, dict]:
    """The Pareto verdict at matched cost: the baseline rows some Qua²SeDiMo row (of `family`: "qsd", or
    `EXTENDED` for the extended space's) dominates — same float-layer convention, same activation bits, no more
    average weight bits, and lower FID paired by noise seed (`paired_difference` beaten). Per dominated baseline: the
    dominating row with the largest mean difference, both rows' bits and the paired difference."""
    qsd, dominated = table[table["family"] == family], {}
    for _, base in table[table["family"] == "baseline"].iterrows():
        rivals = qsd[(qsd["a_bits"] == base["a_bits"]) & (qsd["avg_bits"] <= base["avg_bits"])
                     & (qsd["convention"] == base["convention"])]
        wins = [(paired_difference(base["fid_seeds"], q["fid_seeds"]), q) for _, q in rivals.iterrows()]
        wins = [(d, q) for d, q in wins if d["beaten"]]
        if wins:
            d, q = max(wins, key=lambda win: win[0]["mean"])
            dominated[base["name"]] = {"by": q["name"], "qsd_bits": round(float(q["avg_bits"]), 4),
                                       "baseline_bits": round(float(base["avg_bits"]), 4), "paired": d}
    return dominated


RULE_COLUMNS = ("float layers", "weights", "activations", "attention Q, K, V / softmax", "calibration")


def layer_list(names: Sequence[str]) -> str:
    """Layer names as a table cell: all of up to three, else the count and the first two."""
    names = list(names)
    if not names:
        return "none"
    return ", ".join(names) if len(names) <= 3 else f"{len(names)} layers: {', '.join(names[:2])}, …"


def rule_table(result: Result) -> pd.DataFrame:
    """Per method, the rules this run applied — read from its released-convention A6 row (a baseline's effective
    settings record, `rules` of its module; Qua²SeDiMo's configuration) — and, beside them, the release's
    (`RELEASED_RULES`)."""
    t, s = result.table, result.settings
    rows = t[(t["a_bits"] == HEADLINE_A_BITS) & (t["convention"] == RELEASED)]
    modules = {display: name for name, display in BASELINES.items()}
    calibration = f"{s.calibration_samples} images, every solver step, both guidance halves"
    out = {}
    for _, r in as_released(rows).iterrows():
        module = baseline(modules[r["method"]])
        out[(r["method"], "this run")] = {"float layers": layer_list(r["settings"]["float_layers"]),
                                          **module.rules(r["settings"], r["a_bits"]), "calibration": calibration}
        out[(r["method"], "released")] = module.RELEASED_RULES
    headline = rows[(rows["family"] == "qsd") & (rows["config"] == result.summary.get("qsd_w3x_config"))]
    if len(headline):
        q = headline.iloc[0]
        out[("Qua²SeDiMo", "this run")] = {
            "float layers": layer_list(q["float_layers"]),
            "weights": f"per-layer UAQ / K-Means-C / K-Means-A at 3-4 bits ({q['avg_bits']:.2f} avg)",
            "activations": f"dynamic per token, A{q['a_bits']}", "attention Q, K, V / softmax":
            f"per token A{q['a_bits']} / A{q['a_bits']}", "calibration": "none (stages 02-05's labels)"}
        out[("Qua²SeDiMo", "released")] = {
            "float layers": "none (every layer in the search space)", "weights": "per-layer options at 3-4 bits",
            "activations": "dynamic per token (the paper's A6/A8; the code never switches it on)",
            "attention Q, K, V / softmax": "per token", "calibration": "labels of random configurations"}
    return pd.DataFrame.from_dict(out, orient="index", columns=list(RULE_COLUMNS))


def comparison_table(result: Result) -> pd.DataFrame:
    """The table as printed: one row per method, FID as mean ± std over the noise seeds, the first seed's pixel MSE to
    the float model's images."""
    t = result.table
    shown = pd.DataFrame({"avg bits": t["avg_bits"].round(2), "A": t["a_bits"].map(lambda a: f"A{a}"),
                          "size MiB": t["size_mib"].round(4),
                          "FID": [f"{m:.1f} ± {s:.1f}" for m, s in zip(t["fid_mean"], t["fid_std"], strict=True)]})
    for metric, label in (("prompt_accuracy", "prompt acc."), ("clip_score", "CLIP")):
        if metric in t:
            shown[label] = t[metric].round(3)
    if "sample_mse" in t:  # rows saved before the column existed show NaN
        shown["MSE to float"] = t["sample_mse"].map(lambda v: f"{v:.2e}")
    shown["calibration s"] = t["calibration_s"].round(1)
    return shown.set_axis(t["name"].to_numpy())


def summary_text(result: Result) -> str:
    s = result.summary
    lines = [f"float FID {s['float_fid']:.1f} (mean over {s['noise_seeds']} noise seeds)"]
    if "qsd_w3x_a6_fid" in s:
        verdict = ("beats every W4A6 baseline beyond the seed spread"
                   if s["qsd_w3x_a6_beats_every_w4a6_baseline_beyond_spread"] else
                   f"beats {len(s['w4a6_baselines_beaten_beyond_spread'])} W4A6 baseline(s) beyond the seed spread")
        lines.append(f"Qua²SeDiMo {s['qsd_w3x_config']} at A6: {s['qsd_w3x_a6_bits']:.2f} bits, FID "
                     f"{s['qsd_w3x_a6_fid']:.1f} ± {s['qsd_w3x_a6_fid_std']:.1f}; best W4A6 baseline "
                     f"{s['best_baseline_w4a6']}: {s['best_baseline_w4a6_fid']:.1f} ± "
                     f"{s['best_baseline_w4a6_fid_std']:.1f}; the W3.x {verdict}")
        lines.append(f"paired by noise seed (lower FID at every seed, mean difference above its std): beats "
                     f"{len(s['w4a6_baselines_beaten_paired'])} of {len(s['w4a6_paired_fid_differences'])} W4A6 "
                     f"baselines")
    if "qsd_dominates" in s:
        lines.append(f"Pareto (same activation bits, no more weight bits, lower FID at every paired seed): "
                     f"Qua²SeDiMo dominates {len(s['qsd_dominates'])} of {s['baseline_rows']} baseline rows")
    if "extended_dominates" in s:
        lines.append(f"extended search space (run {s['extended_run']!r}): Qua²SeDiMo-ext dominates "
                     f"{len(s['extended_dominates'])} of {s['baseline_rows']} baseline rows: "
                     + (", ".join(f"{base} by {v['by']}" for base, v in s["extended_dominates"].items()) or "none"))
    return "\n".join(lines)


def packed_table(result: Result) -> pd.DataFrame:
    p = result.packed
    return pd.DataFrame({"avg bits": p["avg_bits"].round(2), "FID packed (first seed)": p["fid_packed"].round(1),
                         "layers MiB packed": p["packed_layers_mib"].round(4), "layers MiB fp16":
                         p["fp16_layers_mib"].round(4), "s packed": p["seconds_packed"].round(2),
                         "s float": p["seconds_float"].round(2)}).set_axis(p["name"].to_numpy())


def plot_grid(result: Result) -> Figure:
    """Fig. 1 style: the same prompts and noise (first noise seed) for the float model and every A6 row (each method
    under its released convention)."""
    t = result.table
    names = ["float", *t.loc[(t["a_bits"] == HEADLINE_A_BITS) & (t["convention"] == RELEASED), "name"]]
    rows = [result.grid[n].permute(0, 2, 3, 1).numpy() for n in names]  # [images, H, W, C] in [0, 1]
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    fig, ax = new_figure(0.75 * len(rows[0]) + 3.2, 0.75 * len(rows) + 0.8)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
    ax.set_anchor("E")  # the slack an equal-aspect image leaves goes to the row labels
    height = rows[0].shape[1]
    fids = dict(zip(t["name"], t["fid_mean"], strict=True))
    ax.set_yticks([height * (i + 0.5) for i in range(len(names))], [f"{n} (FID {fids[n]:.0f})" for n in names],
                  fontsize=7)
    ax.set_xticks([])
    ax.grid(False)
    ax.set_title(f"{result.settings.model_id}: same prompts and noise,\nA6 activations", fontsize=9)
    savefig(fig, f"06_grid_{result.settings.model_id}", result.settings.figures_to(result.directory))
    return fig


def plot_fid_a6(result: Result) -> Figure:
    """FID (mean ± std over the noise seeds, log scale) of every A6 row, the float model as a line."""
    t = result.table
    a6 = t[t["a_bits"] == HEADLINE_A_BITS].reset_index(drop=True)
    fig, ax = new_figure(8, 0.35 * len(a6) + 1.4)
    for i, r in a6.iterrows():
        ax.errorbar(r["fid_mean"], i, xerr=r["fid_std"], fmt="o", color=FAMILY_COLOURS[r["family"]], capsize=3)
        ax.annotate(f"{r['fid_mean']:.1f}", (r["fid_mean"], i), xytext=(6, 3), textcoords="offset points", fontsize=7)
    ax.axvline(float(t.loc[t["family"] == "float", "fid_mean"].iloc[0]), color="black", ls="--", lw=1, label="float")
    ax.set_yticks(range(len(a6)), [f"{n} ({b:.2f} bits)" for n, b in zip(a6["name"], a6["avg_bits"], strict=True)],
                  fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"FID (mean ± std over {result.settings.noise_seeds} noise seeds; log scale)")
    ax.set_title(f"{result.settings.model_id}, A6: baselines at W4 (grey), Qua²SeDiMo (red), extended space (teal),\n"
                 "Qua²SeDiMo weights with DMQ's activations (blue)", fontsize=9)
    ax.legend(fontsize=8)
    savefig(fig, f"06_fid_a6_{result.settings.model_id}", result.settings.figures_to(result.directory))
    return fig


def plot_pareto(result: Result) -> Figure:
    """The matched-cost view: FID (mean ± std over the noise seeds, log scale) against average weight bits for every
    quantized row, one panel per activation width of the baselines; circles: each method's released float layers,
    squares: first and last layer float for all; Qua²SeDiMo's rows joined in bit order per convention, the baselines
    it dominates (`qsd_dominates`) drawn hollow, the float model as a line."""
    t, dominated = result.table, result.summary.get("qsd_dominates", {})
    a_bits = sorted(set(t.loc[t["family"] == "baseline", "a_bits"]) | {HEADLINE_A_BITS}, reverse=True)
    fig, axes = new_figure(5.5 * len(a_bits), 4.6, ncols=len(a_bits), squeeze=False)
    float_fid = float(t.loc[t["family"] == "float", "fid_mean"].iloc[0])
    for ax, a in zip(axes[0], a_bits, strict=True):
        rows = t[(t["a_bits"] == a) & (t["family"] != "float")].sort_values("avg_bits")
        labels = []
        for (family, convention), group in rows.groupby(["family", "convention"]):
            marker = "o" if convention == RELEASED else "s"
            if family in ("qsd", EXTENDED):
                ax.plot(group["avg_bits"], group["fid_mean"], color=FAMILY_COLOURS[family], lw=1, alpha=0.6,
                        ls="-" if convention == RELEASED else ":")
            for _, r in group.iterrows():
                hollow = r["name"] in dominated
                ax.errorbar(r["avg_bits"], r["fid_mean"], yerr=r["fid_std"], fmt=marker, capsize=3,
                            color=FAMILY_COLOURS[family], mfc="white" if hollow else FAMILY_COLOURS[family])
                label = r["name"].replace("Qua²SeDiMo-ext ", "Qx ").replace("Qua²SeDiMo ", "Q ").replace(f" W4A{a}", "")
                labels.append((r["avg_bits"], r["fid_mean"], label.removesuffix(FIRST_LAST_SUFFIX)))
        ax.axhline(float_fid, color="black", ls="--", lw=1, label="float")
        ax.set_yscale("log")
        label_points(ax, labels)
        ax.set_xlabel("average weight bits (FP16 overhead and float layers included)")
        ax.set_ylabel(f"FID (mean ± std over {result.settings.noise_seeds} seeds; log)")
        ax.set_title(f"A{a}: W4 baselines (grey; hollow = dominated), Qua²SeDiMo (red; extended space: teal),\n"
                     "its weights + DMQ activations (blue); circles: released float layers, squares: first/last float",
                     fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"{result.settings.model_id}: FID against bits at held-out seeds", fontsize=10)
    savefig(fig, f"06_pareto_{result.settings.model_id}", result.settings.figures_to(result.directory))
    return fig
