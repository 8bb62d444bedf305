"""ViDiT-Q (Zhao et al., ICLR 2025; baselines.md §4) in qsd's harness.

  * Weights: per-output-channel min–max round-to-nearest (`rtn_weight`) of the balanced weight.
  * Activations: dynamic per-token min–max (`TokenwiseQuantizer`) on the input of every quantized layer, and on the
    attention Q, K, V and softmax probabilities (unsigned) of every attention with a plain processor.
  * Static-dynamic channel balancing (`qsd.baselines.channel_balance`): a SmoothQuant scale per input channel,
    calibrated on the high-noise steps of the calibration set and folded into the weights, then an orthogonal
    rotation of what remains, both simulated exactly (Q(x̃R)·Q(W̃R)ᵀ). As released for PixArt (t2i `ptq.py`,
    `quant_layer.py`) by default: the smoothing scale (α 0.3, the `momentum_act_max` statistic) on one layer, the
    last block's FF output projection (`blocks.27.mlp.fc2` of PixArt-XL's 28 blocks), and no rotation; the paper's
    text (every linear layer smoothed, rotated) is `PAPER_BALANCING`. The release runs its moving average over its
    first calibration batch (its dynamic activations skip the calibration loop) and keeps updating it while it
    samples; here it runs once over the high-noise steps in batches of `smoothing_batch_rows` and then stays fixed.
  * Metric-decoupled mixed precision: the layers fall into two groups by what they affect, "alignment" (every
    projection of an attention fed by a condition: cross-attention, or joint attention's both streams) and
    "quality" (all other layers). A layer's sensitivity is the error when it alone is quantized (W/A at the target
    bits, the rest float) on a subset of the calibration set, measured by its group's own metric: the error of the
    guidance direction ε_cond − ε_uncond for alignment layers (the ε error where the calibration batch is not
    guided), the ε error for quality layers. In each group the most sensitive `mp_fraction` of layers is raised to
    W8A8. (The paper scores groups with CLIPScore / a VQA metric on generated images and also keeps the first
    quarter of timesteps at W8A8; neither the image metrics nor the timestep-wise part are reproduced here, and its
    search code is unreleased.)

Float layers as released: the paper's text quantizes every layer, its released PTS script keeps the input embedders
and the timestep path float (`released_float_layers`; `Settings.keep_released`). `Settings.keep_first_last` keeps
the first and last layer float as the U-Net baselines do.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from qsd.actquant import TokenwiseQuantizer, set_attention_quantizers, set_input_quantizer
from qsd.baselines.calibration import CalibrationSet, denoiser_output
from qsd.baselines.channel_balance import (
    ROTATIONS,
    STATISTICS,
    BalancedInputQuantizer,
    balanced_weight,
    channel_dim,
    input_channel_peaks,
    rotation_matrix,
    smoothing_scales,
    weight_absmax,
)
from qsd.baselines.common import TIME_EMBEDDING, BaselineResult, call_order, mixed_average_bits, prepared_copy
from qsd.errors import InvalidSettingError
from qsd.layers import Unit, quantizable_units

METHOD = "viditq"
SMOKE: dict = {}
"""Overrides of `Settings` in a CI smoke run (ViDiT-Q needs no gradient steps: nothing to shrink)."""
FIRST_LAST_FLOAT = {"keep_released": False, "keep_first_last": True}
"""Overrides of `Settings` that keep exactly the first and last layer a forward pass calls float (stage 06's common
convention)."""
GROUPS = ("alignment", "quality")
CONDITION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
"""The projections of a condition-fed attention that form the alignment group (those it has)."""
LATENT_KEYS = ("hidden_states", "sample")
EMBEDDERS = re.compile(r"^(pos_embed\.proj|conv_in|caption_projection\.\w+|context_embedder|encoder_hid_proj)$")
"""The input embedders ViDiT-Q's release keeps float: the patch embedder (PixArt's and DiT's `pos_embed.proj`; a
U-Net's `conv_in`, its analogue here) and the caption embedder (PixArt's `caption_projection.*`; SD3's
`context_embedder`, a U-Net's `encoder_hid_proj`)."""
FF_OUTPUT = re.compile(r"(^|\.)ff\.net\.2$")
"""A diffusers FeedForward's output projection (PixArt-XL's `mlp.fc2` in ViDiT-Q's own model code)."""
SMOOTHED_LAYERS = ("released", "all")
PAPER_BALANCING = {"smoothed_layers": "all", "scale_statistic": "absmax", "rotation": "hadamard"}
"""Overrides of `Settings` for channel balancing as the paper's text describes it (every linear layer smoothed with
scales from absolute maxima, then rotated), where the release smooths one layer and rotates none."""


@dataclass(frozen=True)
class Settings:
    alpha: float = 0.3
    """Smoothing strength α of s_j = max|X_j|^α / max|W_j|^(1−α) (the released configuration's; 0.5 before issue
    28)."""
    smoothing: bool = True
    """Apply the static (smoothing) part of channel balancing."""
    smoothed_layers: str = "released"
    """Which balanced layers are smoothed: "released" (the last FF output projection called, `released_smoothed`)
    or "all" (every balanced layer, the paper's text)."""
    scale_statistic: str = "momentum"
    """The activation peak max|X_j| of the smoothing scale (`qsd.baselines.channel_balance.input_channel_peaks`):
    "momentum" (released: moving average of per-sample maxima) or "absmax"."""
    momentum: float = 0.95
    """The moving average's momentum (released 0.95)."""
    smoothing_batch_rows: int = 4
    """Rows per batch of the moving average (the released calibration batch)."""
    balance_fraction: float = 0.25
    """Share of the calibration steps, highest-noise first, that the smoothing scales are calibrated on."""
    rotation: str = "none"
    """The dynamic part: "hadamard" (randomised Hadamard at power-of-two widths, random orthogonal otherwise),
    "random" (random orthogonal) or "none" (released for PixArt: its t2i code has no rotation)."""
    balance_convs: bool = False
    """Balance convolutions too (exact for every kernel size). Off: ViDiT-Q smooths linear layers; in the DiTs the
    only convolution is the patch embedding."""
    mp_fraction: float = 0.0
    """Share of each group's layers raised to W8A8 (0: plain fixed bits; the paper's W4A8-MP keeps ~15 %)."""
    mp_w_bits: int = 8
    mp_a_bits: int = 8
    mp_steps: int = 4
    """Calibration steps (evenly spread, first and last included) the sensitivities are measured on."""
    mp_rows: int = 16
    """Samples per step for the sensitivities (with guidance: this many of each half, the same samples)."""
    keep_released: bool = True
    """Keep the layers ViDiT-Q's release keeps float (`released_float_layers`); False quantizes every layer, as the
    paper's text describes."""
    keep_first_last: bool = False
    """Keep the first and last layer float as well (the U-Net baselines' rule)."""
    quantize_attention: bool = True
    """Token-wise quantizers on attention Q, K, V and the softmax probabilities."""
    batch_rows: int = 64
    """Rows per forward while calibrating."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise InvalidSettingError(f"alpha must lie in [0, 1], not {self.alpha}")
        if not 0.0 < self.balance_fraction <= 1.0:
            raise InvalidSettingError(f"balance_fraction must lie in (0, 1], not {self.balance_fraction}")
        if self.rotation not in ROTATIONS:
            raise InvalidSettingError(f"unknown rotation {self.rotation!r}; one of {', '.join(ROTATIONS)}")
        if self.smoothed_layers not in SMOOTHED_LAYERS:
            raise InvalidSettingError(f"unknown smoothed_layers {self.smoothed_layers!r}; one of "
                                      f"{', '.join(SMOOTHED_LAYERS)}")
        if self.scale_statistic not in STATISTICS:
            raise InvalidSettingError(f"unknown scale_statistic {self.scale_statistic!r}; one of "
                                      f"{', '.join(STATISTICS)}")
        if not 0.0 <= self.momentum < 1.0:
            raise InvalidSettingError(f"momentum must lie in [0, 1), not {self.momentum}")
        if not 0.0 <= self.mp_fraction <= 1.0:
            raise InvalidSettingError(f"mp_fraction must lie in [0, 1], not {self.mp_fraction}")
        if min(self.mp_steps, self.mp_rows, self.batch_rows, self.smoothing_batch_rows) < 1:
            raise InvalidSettingError("mp_steps, mp_rows, batch_rows and smoothing_batch_rows must be positive")


@dataclass
class LayerPlan:
    """How one layer is balanced: its quantization units (input blocks), the smoothing scale over its input
    channels (None: none) and each block's rotation (None: none)."""

    name: str
    units: list[Unit]
    smooth: torch.Tensor | None
    rotations: list[torch.Tensor | None]
    channel_dim: int


def balance_steps(calibration: CalibrationSet, fraction: float) -> list[int]:
    """The highest-noise `fraction` of the calibration steps (at least one), by timestep."""
    if not 0.0 < fraction <= 1.0:
        raise InvalidSettingError(f"balance_fraction must lie in (0, 1], not {fraction}")
    order = sorted(range(len(calibration)), key=lambda k: -calibration.timesteps[k])
    return sorted(order[:max(1, round(fraction * len(calibration)))])


def released_smoothed(model: nn.Module, calibration: CalibrationSet, candidates: Sequence[str]) -> list[str]:
    """The layer ViDiT-Q's released PixArt script smooths, by role: the FF output projection (`FF_OUTPUT`) of the
    last transformer block, i.e. the last one of `candidates` a forward pass calls (none if no candidate is one)."""
    wanted = set(candidates)
    ff_outputs = [n for n in call_order(model, calibration) if n in wanted and FF_OUTPUT.search(n)]
    return ff_outputs[-1:]


def plan_balancing(model: nn.Module, units: Sequence[Unit], calibration: CalibrationSet, settings: Settings,
                   seed: int = 0) -> dict[str, LayerPlan]:
    """Smoothing scales (from the float `model`'s inputs on the high-noise steps) for the layers
    `settings.smoothed_layers` names and rotations for every layer that `units` quantizes; convolutions get neither
    unless `settings.balance_convs`. One rotation per width, drawn from `seed` in order of width."""
    modules = dict(model.named_modules())
    by_module: dict[str, list[Unit]] = {}
    for unit in units:
        by_module.setdefault(unit.module, []).append(unit)
    balanced = [n for n in by_module if settings.balance_convs or isinstance(modules[n], nn.Linear)]
    smoothed = balanced if settings.smoothed_layers == "all" else released_smoothed(model, calibration, balanced)
    act_max = (input_channel_peaks(model, smoothed, calibration,
                                   balance_steps(calibration, settings.balance_fraction),
                                   settings.batch_rows if settings.scale_statistic == "absmax"
                                   else settings.smoothing_batch_rows,
                                   settings.scale_statistic, settings.momentum)
               if settings.smoothing and smoothed else {})
    generator = torch.Generator().manual_seed(seed)
    widths = sorted({u.in_stop - u.in_start for n in balanced for u in by_module[n]})
    rotations = {w: rotation_matrix(w, settings.rotation, generator) for w in widths}
    plans = {}
    for name, module_units in by_module.items():
        module = modules[name]
        smooth, blocks = None, [None] * len(module_units)
        if name in balanced:
            if name in act_max:
                smooth = smoothing_scales(act_max[name], weight_absmax(module.weight), settings.alpha)
            blocks = [rotations[u.in_stop - u.in_start] for u in module_units]
        plans[name] = LayerPlan(name, module_units, smooth, blocks, channel_dim(module))
    return plans


def apply_layer_(module: nn.Module, plan: LayerPlan, float_weight: torch.Tensor, w_bits: int | None,
                 a_bits: int | None) -> None:
    """Write the balanced, `w_bits`-quantized weight (from `float_weight`) into `module` and give it the balanced
    token-wise input quantizer at `a_bits` (None: no quantization of that side)."""
    weight = float_weight.detach().clone()
    quantizers = []
    for unit, rotation in zip(plan.units, plan.rotations, strict=True):
        block = slice(unit.in_start, unit.in_stop)
        smooth = None if plan.smooth is None else plan.smooth[block]
        weight[:, block] = balanced_weight(float_weight[:, block], smooth, rotation, w_bits).to(weight.dtype)
        quantizers.append(None if a_bits is None else TokenwiseQuantizer(a_bits))
    module.weight.data.copy_(weight)
    bounds = [(u.in_start, u.in_stop) for u in plan.units]
    set_input_quantizer(module, BalancedInputQuantizer(plan.smooth, bounds, plan.rotations, quantizers,
                                                       plan.channel_dim))


def restore_layer_(module: nn.Module, float_weight: torch.Tensor) -> None:
    """Put `module` back to float: its float weight, no input quantizer."""
    module.weight.data.copy_(float_weight)
    set_input_quantizer(module, None)


def condition_fed_layers(model: nn.Module) -> list[str]:
    """The alignment group: every `CONDITION_PROJECTIONS` layer of an attention fed by a condition (cross-attention,
    or joint attention with an added condition stream)."""
    from diffusers.models.attention_processor import Attention

    modules = dict(model.named_modules())
    names = []
    for name, attn in modules.items():
        if isinstance(attn, Attention) and (attn.is_cross_attention or getattr(attn, "add_k_proj", None) is not None):
            names += [f"{name}.{p}" for p in CONDITION_PROJECTIONS if f"{name}.{p}" in modules]
    return names


def attach_attention_quantizers(model: nn.Module, a_bits: Mapping[str, int | None]) -> list[str]:
    """Token-wise quantizers on the Q, K, V of every attention at the input bits of its `to_q`, `to_k`, `to_v`
    (`a_bits`: layer name → bits; absent or None: float) and on its probabilities (unsigned) at `to_q`'s. Returns
    the attentions whose processor is not plain attention, which stay float."""
    from diffusers.models.attention_processor import Attention

    left_float = []
    for name, attn in model.named_modules():
        if not isinstance(attn, Attention):
            continue
        bits = [a_bits.get(f"{name}.{p}") for p in ("to_q", "to_k", "to_v")]
        query, key, value = (None if b is None else TokenwiseQuantizer(b) for b in bits)
        probs = None if bits[0] is None else TokenwiseQuantizer(bits[0], unsigned=True)
        if not set_attention_quantizers(attn, query, key, value, probs):
            left_float.append(name)
    return left_float


def is_guided(calibration: CalibrationSet) -> bool:
    """Whether every batch holds classifier-free-guidance halves: an even batch whose two halves share latents and
    timesteps (`qsd.sampling` feeds both halves the same latents)."""
    if calibration.batch % 2:
        return False
    half = calibration.batch // 2
    for step in calibration.steps:
        latent = next((step[k] for k in LATENT_KEYS if isinstance(step.get(k), torch.Tensor)), None)
        timestep = torch.as_tensor(step["timestep"]).reshape(-1)
        if latent is None or not torch.equal(latent[:half], latent[half:]):
            return False
        if timestep.numel() == calibration.batch and not torch.equal(timestep[:half], timestep[half:]):
            return False
    return True


def sensitivity_subset(calibration: CalibrationSet, settings: Settings) -> tuple[list[int], torch.Tensor, bool]:
    """The steps and rows the sensitivities are measured on, and whether the rows are guided pairs (the first half
    unconditional, the second the same samples conditional)."""
    k = len(calibration)
    steps = sorted({round(i * (k - 1) / max(1, settings.mp_steps - 1)) for i in range(min(k, settings.mp_steps))})
    guided = is_guided(calibration)
    if guided:
        half = calibration.batch // 2
        n = min(settings.mp_rows, half)
        rows = torch.cat([torch.arange(n), torch.arange(n) + half])
    else:
        rows = torch.arange(min(settings.mp_rows, calibration.batch))
    return steps, rows, guided


def subset_outputs(model: nn.Module, calibration: CalibrationSet, steps: Sequence[int],
                   rows: torch.Tensor) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    with torch.no_grad():
        return [denoiser_output(model, calibration.inputs(s, rows, device)).float().cpu() for s in steps]


def eps_error(outputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    """Mean squared error of the denoiser outputs, averaged over steps."""
    return float(sum(((o - r) ** 2).mean() for o, r in zip(outputs, reference, strict=True)) / len(outputs))


def guidance_error(outputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    """Mean squared error of the guidance direction ε_cond − ε_uncond (second half minus first half of each
    output), averaged over steps."""
    def direction(o: torch.Tensor) -> torch.Tensor:
        uncond, cond = o.chunk(2)
        return cond - uncond
    return eps_error([direction(o) for o in outputs], [direction(r) for r in reference])


def layer_sensitivities(model: nn.Module, plans: Mapping[str, LayerPlan], groups: Mapping[str, str],
                        calibration: CalibrationSet, w_bits: int, a_bits: int | None,
                        settings: Settings) -> tuple[dict[str, float], dict[str, str]]:
    """Each layer's error when it alone is balanced and quantized at (`w_bits`, `a_bits`) in the float `model`,
    by its group's metric (`groups`: layer → group); returns (layer → sensitivity, group → metric used)."""
    steps, rows, guided = sensitivity_subset(calibration, settings)
    metrics = {"alignment": guidance_error if guided else eps_error, "quality": eps_error}
    reference = subset_outputs(model, calibration, steps, rows)
    modules = dict(model.named_modules())
    sensitivity = {}
    for name, plan in plans.items():
        module = modules[name]
        float_weight = module.weight.detach().clone()
        apply_layer_(module, plan, float_weight, w_bits, a_bits)
        try:
            sensitivity[name] = metrics[groups[name]](subset_outputs(model, calibration, steps, rows), reference)
        finally:
            restore_layer_(module, float_weight)
    return sensitivity, {g: metrics[g].__name__ for g in GROUPS}


def most_sensitive(sensitivity: Mapping[str, float], members: Sequence[str], fraction: float) -> list[str]:
    """The round(`fraction`·|members|) most sensitive `members` (at least one when `fraction` > 0), in layer order."""
    if not members or fraction <= 0:
        return []
    count = min(len(members), max(1, math.floor(fraction * len(members) + 0.5)))
    ranked = sorted(members, key=lambda n: -sensitivity[n])
    chosen = set(ranked[:count])
    return [n for n in members if n in chosen]


def released_float_layers(denoiser: nn.Module) -> list[str]:
    """The layers ViDiT-Q's released PTS script keeps float, by role: the input embedders (`EMBEDDERS`) and the
    timestep embedder with its adaLN path (`qsd.baselines.common.TIME_EMBEDDING`). On PixArt: `pos_embed.proj`,
    `adaln_single.*`, `caption_projection.*`."""
    names = {u.module for u in quantizable_units(denoiser, split_concat_inputs=False)}
    return sorted(n for n in names if EMBEDDERS.match(n) or TIME_EMBEDDING.search(n))


def quantize(denoiser: nn.Module, calibration: CalibrationSet, w_bits: int = 4, a_bits: int | None = 6,
             settings: Settings = Settings(), seed: int = 0) -> BaselineResult:
    """ViDiT-Q on a copy of `denoiser` (see module docstring); `seed` draws the rotations."""
    start = time.perf_counter()
    released = released_float_layers(denoiser) if settings.keep_released else []
    model, units, keep = prepared_copy(denoiser, calibration, settings.keep_first_last, released)
    plans = plan_balancing(model, units, calibration, settings, seed)
    alignment = set(condition_fed_layers(model))
    groups = {name: "alignment" if name in alignment else "quality" for name in plans}
    raised: dict[str, list[str]] = {g: [] for g in GROUPS}
    record: dict = {}
    if settings.mp_fraction > 0:
        sensitivity, metrics = layer_sensitivities(model, plans, groups, calibration, w_bits, a_bits, settings)
        for group in GROUPS:
            raised[group] = most_sensitive(sensitivity, [n for n in plans if groups[n] == group], settings.mp_fraction)
        record = {"mp_metrics": metrics, "mp_sensitivity": sensitivity}
    high = {n for names in raised.values() for n in names}
    modules = dict(model.named_modules())
    layer_bits = {n: (settings.mp_w_bits, None if a_bits is None else settings.mp_a_bits) if n in high
                  else (w_bits, a_bits) for n in plans}
    for name, plan in plans.items():
        apply_layer_(modules[name], plan, modules[name].weight.detach().clone(), *layer_bits[name])
    float_attention = []
    if settings.quantize_attention and a_bits is not None:
        float_attention = attach_attention_quantizers(model, {n: b[1] for n, b in layer_bits.items()})
    unit_bits = {u.name: layer_bits[u.module][0] for u in units}
    return BaselineResult(METHOD, model, w_bits, a_bits, mixed_average_bits(denoiser, unit_bits),
                          time.perf_counter() - start,
                          asdict(settings) | {"float_layers": keep, "w8a8_layers": raised,
                                              "group_sizes": {g: sum(v == g for v in groups.values())
                                                              for g in GROUPS},
                                              "guided_calibration": is_guided(calibration),
                                              "smoothing_steps": balance_steps(calibration, settings.balance_fraction),
                                              "smoothed": [n for n, p in plans.items() if p.smooth is not None],
                                              "float_attention": float_attention} | record)


RELEASED_RULES = {"float layers": "patch embedder, timestep embedder and block, caption embedder",
                  "weights": "per-channel min–max of the smoothed weight (no rotation)",
                  "activations": "dynamic per token; smoothing α 0.3 on the last block's FF output (moving average "
                                 "of per-sample maxima)",
                  "attention Q, K, V / softmax": "per token", "calibration": "statistics only, no gradient steps"}
"""The released values (research notes, baselines.md §4), beside `rules`."""


def rules(record: dict, a_bits: int | None) -> dict[str, str]:
    """The rule table's entries for a run's settings `record` (`BaselineResult.settings`)."""
    smoothed, statistic = record["smoothed"], {"momentum": "moving average of per-sample maxima",
                                               "absmax": "absolute maxima"}[record["scale_statistic"]]
    where = smoothed[0] if len(smoothed) == 1 else f"{len(smoothed)} layers"
    smoothing = f"smoothing α {record['alpha']} on {where} ({statistic})" if smoothed else "no smoothing"
    attention = (f"per token A{a_bits} / A{a_bits}" if record["quantize_attention"] and a_bits is not None
                 else "float")
    rotation = "no rotation" if record["rotation"] == "none" else f"{record['rotation']} rotation"
    return {"weights": f"per-channel min–max of the balanced weight ({rotation})",
            "activations": "float" if a_bits is None else f"dynamic per token, A{a_bits}; {smoothing}",
            "attention Q, K, V / softmax": attention}
