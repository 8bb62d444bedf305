"""What every baseline shares: the result it returns, which layers it quantizes, round-to-nearest weights, average
bits counted as the rest of qsd counts them (`qsd.bits`), and static activation quantizers calibrated on a
`CalibrationSet`.

Every baseline works on a copy of the float denoiser (`quantized_copy`): weights are fake-quantized in place of the
float ones, activation quantizers are attached as in `qsd.actquant`, and the float denoiser is never touched.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from qsd.actquant import SplitInputQuantizer, StaticQuantizer, StepClock, set_input_quantizer
from qsd.actquant.attach import channel_dim
from qsd.actquant.static import finalize_observed
from qsd.baselines.calibration import CalibrationSet, denoiser_output
from qsd.bits import FLOAT_BITS, count_bits
from qsd.layers import QUANTIZABLE_TYPES, Unit, quantizable_units
from qsd.quantizers import QuantizedWeight, QuantizerSettings, quantize_weight

MIN_MAX = QuantizerSettings(uaq_clip_ratios=(0.0,))
TIME_EMBEDDING = re.compile(
    r"(^|\.)(time_embedding|time_embed|timestep_embedder|t_embedder|add_embedding|time_text_embed|time_extra_emb"
    r"|adaln_single)\."
    r"|(^|\.)(time_emb_proj|emb_layers)(\.|$)"
    r"|(^|\.)(norm1|norm1_context|norm_out)\.linear$"
    r"|^proj_out_1$")
"""Layers that only map the timestep / class / pooled-text embedding into the conditioning vector or a block's
modulation (DMQ keeps them float as its `time_embed` and `emb_layers`; ViDiT-Q's release keeps PixArt's): the
U-Net time embedding MLP, SDXL's added embedding and each ResBlock's `time_emb_proj`; PixArt's `adaln_single.*`;
DiT's timestep embedder, its per-block adaLN-Zero projection `norm1.linear` and final-layer modulation `proj_out_1`;
the same roles in SD3 and Hunyuan-DiT (`time_text_embed`, `time_extra_emb`, `norm*.linear`)."""


def time_embedding_layers(denoiser: nn.Module) -> list[str]:
    """Names of the denoiser's quantizable layers that `TIME_EMBEDDING` matches."""
    return [u.module for u in quantizable_units(denoiser, split_concat_inputs=False) if TIME_EMBEDDING.search(u.module)]


@dataclass
class BaselineResult:
    """A quantized copy of the denoiser and how it was made."""

    method: str
    denoiser: nn.Module
    w_bits: int
    a_bits: int | None
    avg_bits: float
    """Average weight bits over the quantizable layers, overhead and float layers at FP16."""
    calibration_seconds: float
    settings: dict = field(default_factory=dict)
    """Every setting the method used (iteration counts, thresholds, which layers stay float)."""

    def record(self) -> dict:
        return {"method": self.method, "w_bits": self.w_bits, "a_bits": self.a_bits, "avg_bits": self.avg_bits,
                "calibration_seconds": self.calibration_seconds, "settings": self.settings}


def quantized_copy(denoiser: nn.Module) -> nn.Module:
    """A deep copy of `denoiser` in eval mode with gradients off (methods switch on what they learn)."""
    clone = copy.deepcopy(denoiser).eval()
    clone.requires_grad_(False)
    return clone


def call_order(denoiser: nn.Module, calibration: CalibrationSet) -> list[str]:
    """Names of the Linear/Conv layers in the order one forward pass calls them (first call counts)."""
    order: list[str] = []
    handles = [module.register_forward_pre_hook(lambda m, a, name=name: order.append(name) if name not in order
                                                else None)
               for name, module in denoiser.named_modules() if isinstance(module, QUANTIZABLE_TYPES)]
    try:
        with torch.no_grad():
            denoiser_output(denoiser, calibration.inputs(0, torch.arange(1),
                                                         next(denoiser.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return order


def first_and_last(denoiser: nn.Module, calibration: CalibrationSet) -> list[str]:
    """The first and the last layer a forward pass calls (kept float by Q-Diffusion, TFMQ-DM and DMQ)."""
    order = call_order(denoiser, calibration)
    return [order[0], order[-1]]


def embedding_path_and_ends(denoiser: nn.Module, calibration: CalibrationSet, keep_first_last: bool,
                            keep_time_embedding: bool) -> dict[str, list[str]]:
    """DMQ's rule for what stays float (baselines.md §1.2): the `TIME_EMBEDDING` layers when `keep_time_embedding`,
    and the first and last layer of the call order without them when `keep_first_last`. Returns {"time_embedding":
    [...], "first_last": [...], "all": [...]}."""
    embedding = time_embedding_layers(denoiser) if keep_time_embedding else []
    order = [n for n in call_order(denoiser, calibration) if n not in embedding]
    ends = [order[0], order[-1]] if keep_first_last and order else []
    return {"time_embedding": embedding, "first_last": ends, "all": sorted(set(embedding) | set(ends))}


def quantized_units(denoiser: nn.Module, keep_float: Iterable[str] = ()) -> list[Unit]:
    """The units (`qsd.layers`, concatenation-fed layers split) of every layer not in `keep_float`."""
    keep = set(keep_float)
    return [u for u in quantizable_units(denoiser) if u.module not in keep]


def prepared_copy(denoiser: nn.Module, calibration: CalibrationSet, keep_first_last: bool,
                  keep_float: Iterable[str] = ()) -> tuple[nn.Module, list[Unit], list[str]]:
    """What a baseline starts from: a `quantized_copy` of `denoiser`, the units it quantizes, and the layers it keeps
    float (`keep_float`, and the first and the last one called when `keep_first_last`)."""
    ends = first_and_last(denoiser, calibration) if keep_first_last else []
    keep = ends + sorted(set(keep_float) - set(ends))
    model = quantized_copy(denoiser)
    return model, quantized_units(model, keep), keep


def rtn_weight(weight: torch.Tensor, bits: int) -> QuantizedWeight:
    """Round-to-nearest per-output-channel asymmetric weights over each channel's full range."""
    return quantize_weight(weight, "uaq", [bits], MIN_MAX)[bits]


def set_weight_units(denoiser: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Write unit weights (unit name → its column block) into their layers."""
    modules = dict(denoiser.named_modules())
    for unit in quantizable_units(denoiser):
        if unit.name in weights:
            module = modules[unit.module]
            module.weight.data[:, unit.in_start:unit.in_stop] = weights[unit.name].to(module.weight.dtype)


def rtn_weights_(denoiser: nn.Module, units: Sequence[Unit], bits: int) -> None:
    """Round every unit of `units` to nearest on its own grid, in place."""
    modules = dict(denoiser.named_modules())
    set_weight_units(denoiser, {u.name: rtn_weight(u.weight_slice(modules[u.module].weight.detach()), bits)
                                .dequantize() for u in units})


def mixed_average_bits(denoiser: nn.Module, unit_bits: Mapping[str, int]) -> float:
    """Average bits per weight of the quantizable layers when each unit in `unit_bits` is that many bits per-channel
    affine (Δ and z per output channel at FP16) and every other unit is FP16 (`qsd.bits`, paper §3.1)."""
    modules = dict(denoiser.named_modules())
    layers = []
    for unit in quantizable_units(denoiser):
        piece = unit.weight_slice(modules[unit.module].weight)
        n, rows, bits = piece.numel(), piece.shape[0], unit_bits.get(unit.name)
        layers.append((n, None if bits is None else bits * n + 2 * FLOAT_BITS * rows))
    return count_bits(layers).avg_bits


def average_bits(denoiser: nn.Module, units: Sequence[Unit], bits: int) -> float:
    """`mixed_average_bits` with every unit of `units` at `bits`."""
    return mixed_average_bits(denoiser, {u.name: bits for u in units})


def attach_static(denoiser: nn.Module, units: Sequence[Unit], bits: int, n_sets: int = 1,
                  clock: StepClock | None = None, momentum: float | None = None) -> dict[str, StaticQuantizer]:
    """A static input quantizer per unit of `units` (the halves of a concatenation-fed layer separately: split
    quantization); returns unit name → quantizer, all in observe mode."""
    modules = dict(denoiser.named_modules())
    by_module: dict[str, list[Unit]] = {}
    for unit in quantizable_units(denoiser):
        by_module.setdefault(unit.module, []).append(unit)
    wanted = {u.name for u in units}
    quantizers: dict[str, StaticQuantizer] = {}
    for module_name, module_units in by_module.items():
        chosen = [u for u in module_units if u.name in wanted]
        if not chosen:
            continue
        module = modules[module_name]
        dim = channel_dim(module)
        parts = [StaticQuantizer(bits, n_sets, clock, dim, momentum=momentum) if u.name in wanted else None
                 for u in module_units]
        quantizers.update({u.name: p for u, p in zip(module_units, parts, strict=True) if p is not None})
        if len(module_units) == 1:
            set_input_quantizer(module, parts[0])
        else:
            set_input_quantizer(module, SplitInputQuantizer([(u.in_start, u.in_stop) for u in module_units], parts,
                                                            dim))
    return quantizers


def calibrate_ranges(denoiser: nn.Module, quantizers: Iterable[StaticQuantizer], calibration: CalibrationSet,
                     batch_rows: int = 64, seed: int = 0) -> None:
    """Observe every calibration row once (in batches of `batch_rows`) with `quantizers` in observe mode, then fix their
    ranges (`StaticQuantizer.finalize`).

    The batches are drawn as a shuffled loader would: each step's rows permuted, the (step, batch) pairs in random
    order (`seed`). With guidance the rows are [unconditional | conditional]; read in order, an EMA range (momentum
    0.95) would be almost the unconditional half's alone and clip the conditional activations, an error that the
    guidance scale then amplifies (TFMQ-DM's FID on tiny_pixart went from 209 to the RTN level with this order)."""
    quantizers = list(quantizers)
    for q in quantizers:
        q.set_mode("observe")
    generator = torch.Generator().manual_seed(seed)
    batches = [(step, rows) for step in range(len(calibration))
               for rows in torch.randperm(calibration.batch, generator=generator).split(batch_rows)]
    device = next(denoiser.parameters()).device
    with torch.no_grad():
        for i in torch.randperm(len(batches), generator=generator).tolist():
            step, rows = batches[i]
            denoiser_output(denoiser, calibration.inputs(step, rows.sort().values, device))
    finalize_observed(quantizers)
