"""DMQ (Lee et al., "Dissecting Outliers of Diffusion Models for Post-Training Quantization", ICCV 2025;
baselines.md §1) in qsd's harness.

Pipeline (baselines.md §1.2), on a copy of the float denoiser:
  1. calibration set: the float model's inputs at every solver step (`CalibrationSet`, given);
  2. LES (`qsd.baselines.les`): a learned per-input-channel γ per quantized layer, trained layer by layer with both
     weights and activations dynamically quantized and the adaptive timestep weighting; W·γ is stored in the layer
     and the layer's input quantizer divides by γ (`StaticQuantizer.smooth`);
  3. the weight grid is re-initialised on W·γ by an MSE search per output channel;
  4. weight reconstruction (BRECQ/AdaRound, `qsd.baselines.reconstruction`, settings `reconstruction`) against the
     float network's block outputs, activation quantization off (the quantizers still divide by γ). It performs step 3
     itself on the float W·γ it is given, with its default "mse" grid: qsd's UAQ clipping search, ratios 0, 0.1, …,
     0.9 scored by the L2.4 error (DMQ searches 80 ratios 1 % apart). With `reconstruction.iters = 0` steps 3-4 are
     round-to-nearest on a grid searched over `grid_ratios` ratios 1 % apart by the L`grid_p` error (DMQ's 80 and
     L2.4) instead;
  5. per-step static activation ranges (one set per calibration step, EMA 0.95 over batches of 16, chosen at run time
     by a step clock hooked to the copy) and PTS voting on the `pts_layers` (`qsd.baselines.pts`).

What stays float (DMQ's choices, followed): the timestep-embedding layers (U-Net `time_embedding.*` and every
ResBlock's `time_emb_proj`, DMQ's `time_embed`/`emb_layers`, and their transformer analogues, see
`qsd.baselines.common.TIME_EMBEDDING`), the first and last layer of the remaining call order, and every attention
act-to-act product (Q·Kᵀ, softmax·V: only the inputs of the q/k/v/out projections are quantized). The two halves
of a concatenation-fed layer get their own activation and weight quantizers (split quantization).

PTS layers: DMQ applies PTS to its `skip_connection` quantizers, the 1×1 ResBlock shortcut convolutions, both split
halves; here the modules whose name contains "conv_shortcut" (diffusers' name for them). The transformers have no
such layer (their residual additions are unquantized), so PTS applies to none there unless `pts_layers` names
layers or is "all"; the record says which units it applied to.

Scaled-down defaults for the tiny models (the paper's values in `PAPER`): LES 100 iterations per layer (learning
rate unchanged) over a pool of 16 rows per calibration step, reconstruction 300 iterations per block. Without
activation quantization (a_bits None) LES is skipped: it exists to trade range between activations and weights.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from qsd.actquant import (
    StaticQuantizer,
    StepClock,
    set_attention_quantizers,
    set_input_quantizer,
)
from qsd.actquant.attach import channel_dim, input_quantizer
from qsd.baselines.calibration import CalibrationSet
from qsd.baselines.common import (
    BaselineResult,
    attach_static,
    average_bits,
    call_order,
    embedding_path_and_ends,
    quantized_copy,
    quantized_units,
    set_weight_units,
)
from qsd.baselines.les import fold_scales_, learn_scales
from qsd.baselines.pts import PtsPart, calibrate_steps
from qsd.baselines.reconstruction import ReconstructionSettings, reconstruct_weights
from qsd.errors import InvalidSettingError
from qsd.layers import Unit, quantizable_units
from qsd.quantize import units_by_module
from qsd.quantizers import QuantizerSettings, quantize_weight

METHOD = "dmq"
SMOKE = {"les_iters": 2, "les_batch": 4, "reconstruction": {"iters": 2, "batch": 4}}
"""Overrides of `Settings` in a CI smoke run."""
FIRST_LAST_FLOAT = {"keep_first_last": True, "keep_time_embedding": False}
"""Overrides of `Settings` that keep exactly the first and last layer a forward pass calls float (stage 06's common
convention)."""
PAPER = {"les_iters": 6000, "les_batch": 32, "les_rows_per_step": 256, "reconstruction": {"iters": 20000, "batch": 32},
         "calibration_steps": 20, "act_batch": 16}
"""DMQ's own values for the LDM U-Nets (baselines.md §1.3-1.5), recorded beside the scaled-down ones used."""


@dataclass(frozen=True)
class Settings:
    les_iters: int = 100
    """LES Adam iterations per layer (paper: 6,000; 0 skips LES)."""
    les_batch: int = 32
    """LES mini-batch, drawn from the pool with all steps mixed (paper: 32)."""
    les_lr: float = 1e-3
    """LES Adam learning rate, cosine-annealed to 0 (paper: 1e-3)."""
    les_rows_per_step: int = 16
    """LES pool: rows of every calibration step whose float layer inputs are cached (paper: all 256)."""
    les_momentum: float = 0.95
    """EMA momentum of the per-step error buffer Λ."""
    les_power: float = 20.0
    """Exponent r of λ_k = (1 − Λ_k/ΣΛ)^r (paper: 20; 25 for LSUN-Churches)."""
    les_weighting: str = "adaptive"
    """"adaptive" (DMQ) or "uniform" (λ = 1, the ablation without timestep weighting)."""
    grid_ratios: int = 80
    """Weight grid MSE search: clipping ratios 0, 1 %, …, (grid_ratios − 1) % tried per output channel."""
    grid_p: float = 2.4
    """Weight grid MSE search: the Lp norm that scores a ratio."""
    reconstruction: ReconstructionSettings = ReconstructionSettings()
    """Weight reconstruction (paper: 20,000 iterations per block); `iters` 0: round to nearest on the MSE grid
    instead."""
    per_step_ranges: bool = True
    """One static activation range per calibration step (DMQ); False: one range for all steps."""
    act_batch: int = 16
    """Rows per observation batch of the activation ranges (the EMA runs over these batches)."""
    act_momentum: float = 0.95
    """EMA momentum of the observed activation min/max."""
    pts_layers: str = "conv_shortcut"
    """Where PTS applies: comma-separated module-name substrings, "all" (every activation quantizer) or "none"."""
    pts_kappa: float = 0.85
    """PTS vote threshold κ."""
    pts_max_shift: int = 3
    """PTS largest exponent D (candidate steps Δ … Δ/2^D)."""
    pts_rows: int | None = None
    """Rows of each calibration step that vote (None: all of them, as DMQ)."""
    keep_first_last: bool = True
    """Keep the first and last layer (of the call order without the time-embedding layers) float."""
    keep_time_embedding: bool = True
    """Keep the `TIME_EMBEDDING` layers float."""

    def __post_init__(self) -> None:
        if not 0 < self.pts_kappa <= 1:
            raise InvalidSettingError(f"pts_kappa must lie in (0, 1], not {self.pts_kappa}")
        if not 1 <= self.grid_ratios <= 100:
            raise InvalidSettingError(f"grid_ratios must be 1..100 (ratios are 1 % apart), not {self.grid_ratios}")


def float_layers(denoiser: nn.Module, calibration: CalibrationSet, settings: Settings = Settings()) -> dict:
    """DMQ's float layers of `denoiser` (`embedding_path_and_ends` under `settings`)."""
    return embedding_path_and_ends(denoiser, calibration, settings.keep_first_last, settings.keep_time_embedding)


def pts_units(units: Sequence[Unit], pts_layers: str) -> list[Unit]:
    """The units PTS applies to under the `pts_layers` setting."""
    spec = pts_layers.strip()
    if spec.lower() in ("", "none"):
        return []
    if spec.lower() == "all":
        return list(units)
    patterns = [p.strip() for p in spec.split(",") if p.strip()]
    return [u for u in units if any(p in u.module for p in patterns)]


def attach_scaled(denoiser: nn.Module, units: Sequence[Unit], bits: int, n_sets: int, clock: StepClock | None,
                  momentum: float | None, gammas: dict[str, torch.Tensor] | None = None
                  ) -> dict[str, StaticQuantizer]:
    """`attach_static`'s quantizers (one on the input of every unit of `units`, split layers: one per half), each
    carrying its slice of the layer's γ where `gammas` has one; replaces any input quantizer the layers had. Returns
    unit name → quantizer, in observe mode."""
    quantizers = attach_static(denoiser, units, bits, n_sets, clock, momentum)
    for module_name, module_units in units_by_module(quantizable_units(denoiser)):
        gamma = None if gammas is None else gammas.get(module_name)
        scaled = [u for u in module_units if u.name in quantizers]
        if gamma is None or not scaled:
            continue
        if len(scaled) < len(module_units):
            raise InvalidSettingError(f"{module_name}: LES scales both halves of a split layer; quantize both")
        for u in scaled:
            quantizers[u.name].smooth = gamma[u.in_start:u.in_stop].clone()
    return quantizers


def mse_grid_weights_(denoiser: nn.Module, units: Sequence[Unit], bits: int, ratios: int = 80,
                      p: float = 2.4) -> None:
    """Round every unit of `units` to nearest on its MSE-searched per-output-channel grid, in place."""
    settings = QuantizerSettings(uaq_clip_ratios=tuple(i / 100 for i in range(ratios)), uaq_clip_p=p)
    modules = dict(denoiser.named_modules())
    threads = torch.get_num_threads()
    set_weight_units(denoiser, {u.name: quantize_weight(u.weight_slice(modules[u.module].weight.detach()), "uaq",
                                                        [bits], settings)[bits].dequantize() for u in units})
    torch.set_num_threads(threads)  # numba's parallel kernel resets the OpenMP thread count torch shares


def _unit_bounds(denoiser: nn.Module, units: Sequence[Unit]) -> dict[str, list[tuple[int, int]]]:
    bounds: dict[str, list[tuple[int, int]]] = {}
    for u in units:
        bounds.setdefault(u.module, []).append((u.in_start, u.in_stop))
    return bounds


def _pts_parts(denoiser: nn.Module, chosen: Sequence[Unit], quantizers: dict) -> dict[str, list[PtsPart]]:
    """PTS layer name → its parts (one per chosen unit)."""
    modules = dict(denoiser.named_modules())
    parts: dict[str, list[PtsPart]] = {}
    for u in chosen:
        parts.setdefault(u.module, []).append(PtsPart(u.name, quantizers[u.name], u.in_start, u.in_stop,
                                                      channel_dim(modules[u.module])))
    return parts


def _activations(model: nn.Module, units: Sequence[Unit], calibration: CalibrationSet, a_bits: int,
                 settings: Settings, gammas: dict[str, torch.Tensor] | None
                 ) -> tuple[dict[str, StaticQuantizer], list[Unit]]:
    """Attach the per-step static quantizers (and the `StepClock` choosing their set) to `model`; returns them and
    the PTS units."""
    n_sets = len(calibration) if settings.per_step_ranges else 1
    clock = None
    if n_sets > 1:
        clock = StepClock(calibration.timesteps)
        clock.attach(model)
    quantizers = attach_scaled(model, units, a_bits, n_sets, clock, settings.act_momentum, gammas)
    return quantizers, pts_units(units, settings.pts_layers)


def _calibrate(model: nn.Module, quantizers: dict, chosen: Sequence[Unit], calibration: CalibrationSet,
               settings: Settings, seed: int) -> dict:
    parts = _pts_parts(model, chosen, quantizers)
    stats = calibrate_steps(model, list(quantizers.values()), parts, calibration, batch=settings.act_batch,
                            pts_rows=settings.pts_rows, kappa=settings.pts_kappa, max_shift=settings.pts_max_shift,
                            seed=seed)
    return {"pts_units": [u.name for u in chosen],
            "pts_note": None if chosen else f"PTS applied to no layer: no module matches {settings.pts_layers!r}",
            "pts_scaled_channels": {unit: [s["scaled_channels"] for s in steps] for unit, steps in stats.items()},
            "pts_mean_share": {unit: sum(s["mean_share"] for s in steps) / max(len(steps), 1)
                               for unit, steps in stats.items()}}


def quantize(denoiser: nn.Module, calibration: CalibrationSet, w_bits: int = 4, a_bits: int | None = 6,
             settings: Settings = Settings(), seed: int = 0) -> BaselineResult:
    """DMQ on a copy of `denoiser` (see module docstring); `seed` drives every random choice (LES pool and batches,
    reconstruction, observation batches)."""
    start = time.perf_counter()
    kept = float_layers(denoiser, calibration, settings)
    model = quantized_copy(denoiser)
    units = quantized_units(model, kept["all"])
    record: dict = {"float_layers": kept["all"], "time_embedding_layers": kept["time_embedding"],
                    "first_last": kept["first_last"], "attention_matmuls": "float", "paper": PAPER}
    gammas, seconds = None, {}
    if a_bits is not None and settings.les_iters > 0:
        gammas, les_stats = learn_scales(model, _unit_bounds(model, units), calibration, w_bits, a_bits,
                                         settings.les_iters, settings.les_batch, settings.les_lr,
                                         settings.les_rows_per_step, settings.les_momentum, settings.les_power,
                                         settings.les_weighting, order=call_order(model, calibration), seed=seed)
        fold_scales_(model, gammas)
        seconds["les"] = time.perf_counter() - start
        record["les"] = {"layers": len(gammas), "stats": les_stats,
                         "mean_loss_before": _mean(s["loss_before"] for s in les_stats.values()),
                         "mean_loss_after": _mean(s["loss_after"] for s in les_stats.values())}
    else:
        record["les"] = {"layers": 0, "note": "skipped: " + ("activations float" if a_bits is None
                                                             else "les_iters = 0")}
    quantizers: dict = {}
    weights_start = time.perf_counter()
    if a_bits is not None:
        quantizers, chosen = _activations(model, units, calibration, a_bits, settings, gammas)
        for q in quantizers.values():
            q.set_mode("float")  # x/γ only: the float function, for the weight steps
    if settings.reconstruction.iters > 0:
        threads = torch.get_num_threads()
        record["reconstruction_stats"] = reconstruct_weights(denoiser, model, units, w_bits, calibration,
                                                             settings.reconstruction, seed=seed)
        torch.set_num_threads(threads)  # its grid search (numba) resets the OpenMP thread count torch shares
    else:
        mse_grid_weights_(model, units, w_bits, settings.grid_ratios, settings.grid_p)
        record["reconstruction_stats"] = {"note": "reconstruction.iters = 0: round to nearest on the MSE grid"}
    seconds["weights"] = time.perf_counter() - weights_start
    if a_bits is not None:
        activations_start = time.perf_counter()
        record |= _calibrate(model, quantizers, chosen, calibration, settings, seed)
        seconds["activations"] = time.perf_counter() - activations_start
    record["seconds"] = seconds
    return BaselineResult(METHOD, model, w_bits, a_bits, average_bits(denoiser, units, w_bits),
                          time.perf_counter() - start, asdict(settings) | record)


def activation_treatment(quant_denoiser: nn.Module, calibration: CalibrationSet, a_bits: int,
                         settings: Settings = Settings(), seed: int = 0) -> dict:
    """DMQ's activation part alone on `quant_denoiser` (weights already quantized by another method; changed in
    place): per-step static ranges on the inputs of every layer but DMQ's float layers, PTS voting on the
    `pts_layers`; no LES (the weights are fixed). Any input quantizer on a float layer and any quantized attention
    processor is removed (DMQ keeps those float). Returns the settings and statistics."""
    start = time.perf_counter()
    kept = float_layers(quant_denoiser, calibration, settings)
    units = quantized_units(quant_denoiser, kept["all"])
    modules = dict(quant_denoiser.named_modules())
    for name in kept["all"]:
        if input_quantizer(modules[name]) is not None:
            set_input_quantizer(modules[name], None)
    for module in modules.values():
        if hasattr(module, "set_processor") and hasattr(module, "processor"):
            set_attention_quantizers(module, None, None, None, None)
    quantizers, chosen = _activations(quant_denoiser, units, calibration, a_bits, settings, None)
    record = _calibrate(quant_denoiser, quantizers, chosen, calibration, settings, seed)
    return {"method": METHOD, "a_bits": a_bits, "calibration_seconds": time.perf_counter() - start,
            "settings": asdict(settings), "float_layers": kept["all"], "attention_matmuls": "float",
            "les": "not applied (weights fixed)"} | record


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


RELEASED_RULES = {"float layers": "time embedding (time_embed, emb_layers), first and last",
                  "weights": "per-channel MSE grid (80 ratios, L2.4), reconstruction 20k it/block",
                  "activations": "static per-tensor, a range per step (EMA 0.95, 256 rows); LES 6k it/layer; PTS on "
                                 "skip connections",
                  "attention Q, K, V / softmax": "float", "calibration": "256 samples × 20 steps"}
"""The released values (research notes, baselines.md §1), beside `rules`."""


def rules(record: dict, a_bits: int | None) -> dict[str, str]:
    """The rule table's entries for a run's settings `record` (`BaselineResult.settings`)."""
    rec, les = record["reconstruction"], record["les"]
    return {"weights": f"per-channel MSE grid ({record['grid_ratios']} ratios, L{record['grid_p']}), "
                       f"reconstruction {rec['iters']} it/block",
            "activations": "float" if a_bits is None else
            f"static per-tensor, a range per step (EMA {record['act_momentum']}); LES {record['les_iters']} it/layer "
            f"({les['layers']} layers); PTS on {record['pts_layers']}, A{a_bits}",
            "attention Q, K, V / softmax": record["attention_matmuls"]}
