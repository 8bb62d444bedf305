"""Q-Diffusion (Li et al., ICCV 2023; baselines.md §2), on a copy of the float denoiser:
  * time-step-aware calibration: the `CalibrationSet` (the float sampler's inputs at every solver step);
  * weights: per-output-channel affine min–max grids (the released scripts' 'max' scaling; `RELEASED_GRID`) whose
    rounding BRECQ/AdaRound learns block by block (`qsd.baselines.reconstruction`); activations stay float meanwhile;
  * split quantization: the two input halves of a concatenation-fed layer have their own weight grid (their own units)
    and their own activation quantizer (`common.attach_static`);
  * activations: static per-tensor, one range shared by all time steps, initialised with the min/max over the whole
    calibration set (or an EMA of per-batch extremes, the code's `--running_stat`), then the steps Δ learned block by
    block on the reconstruction loss (`learn_activation_steps`);
  * attention: the act-to-act products' operands Q, K, V and the softmax probabilities are quantized statically too,
    the probabilities at 8 bits (unsigned; the code's default softmax width, `Settings.softmax_bits`);
  * the first and the last layer stay float.

Deviations, for tiny models on CPU: 300 AdaRound iterations per block (20k) and 100 step-size iterations per block
(5k), kept only where they lowered the block's loss; the activation ranges start from min–max, not the code's MSE
search.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import nn

from qsd.actquant import StaticQuantizer, StepClock, set_attention_quantizers
from qsd.baselines.calibration import CalibrationSet
from qsd.baselines.common import (
    BaselineResult,
    attach_static,
    average_bits,
    calibrate_ranges,
    prepared_copy,
)
from qsd.baselines.reconstruction import (
    ReconstructionSettings,
    StepSettings,
    learn_activation_steps,
    reconstruct_weights,
)
from qsd.layers import Unit

METHOD = "qdiffusion"
RELEASED_GRID = "minmax"
"""The released scripts' weight scaling ('max': per-channel min–max). The Lp clipping search ("mse") that an earlier
version started AdaRound from clips weights that AdaRound cannot bring back; on the tiny models it took uniform UAQ-4
from FID 30 to 192."""
RELEASED_SOFTMAX_BITS = 8
"""The released code quantizes the softmax probabilities at 8 bits whatever the activation bits."""
SMOKE = {"reconstruction": {"iters": 2, "batch": 4}, "act_steps": {"iters": 2, "batch": 4}}
"""Overrides of `Settings` in a CI smoke run (nested settings as dicts)."""
FIRST_LAST_FLOAT = {"keep_first_last": True}
"""Overrides of `Settings` that keep exactly the first and last layer a forward pass calls float (stage 06's common
convention)."""


@dataclass(frozen=True)
class Settings:
    reconstruction: ReconstructionSettings = ReconstructionSettings(grid=RELEASED_GRID)
    act_steps: StepSettings | None = StepSettings()
    """Learned activation step sizes (None: keep the calibrated ranges)."""
    act_momentum: float | None = None
    """EMA momentum of the range over 64-row batches (the code's running statistics); None: min/max over all."""
    quantize_attention: bool = True
    """Quantize Q, K, V and the softmax probabilities of every attention whose projections are quantized."""
    softmax_bits: int | None = RELEASED_SOFTMAX_BITS
    """Bits of the softmax probabilities (None: the activation bits)."""
    keep_first_last: bool = True


def attach_attention(model: nn.Module, units: Sequence[Unit], bits: int, n_sets: int = 1,
                     clock: StepClock | None = None, momentum: float | None = None,
                     softmax_bits: int | None = None) -> list[StaticQuantizer]:
    """Static quantizers (observe mode) on Q, K, V (at `bits`) and the softmax probabilities (unsigned, at
    `softmax_bits`, None: `bits`) of every attention whose to_q, to_k and to_v are all among `units`' layers and whose
    processor is plain attention; returns them."""
    from diffusers.models.attention_processor import Attention

    quantized = {u.module for u in units}
    quantizers: list[StaticQuantizer] = []
    for name, attn in model.named_modules():
        if isinstance(attn, Attention) and all(f"{name}.{p}" in quantized for p in ("to_q", "to_k", "to_v")):
            parts = [StaticQuantizer(bits, n_sets, clock, momentum=momentum) for _ in range(3)]
            parts.append(StaticQuantizer(softmax_bits or bits, n_sets, clock, unsigned=True, momentum=momentum))
            if set_attention_quantizers(attn, *parts):
                quantizers += parts
    return quantizers


def quantize(denoiser: nn.Module, calibration: CalibrationSet, w_bits: int = 4, a_bits: int | None = 6,
             settings: Settings = Settings(), seed: int = 0) -> BaselineResult:
    """Q-Diffusion W`w_bits`A`a_bits` (module docstring) on a copy of `denoiser`; deterministic for a `seed`."""
    start = time.perf_counter()
    model, units, keep = prepared_copy(denoiser, calibration, settings.keep_first_last)
    reconstruct_weights(denoiser, model, units, w_bits, calibration, settings.reconstruction, seed)
    record = asdict(settings) | {"float_layers": keep}
    if a_bits is not None:
        quantizers = list(attach_static(model, units, a_bits, momentum=settings.act_momentum).values())
        if settings.quantize_attention:
            quantizers += attach_attention(model, units, a_bits, momentum=settings.act_momentum,
                                           softmax_bits=settings.softmax_bits)
        calibrate_ranges(model, quantizers, calibration, seed=seed)
        if settings.act_steps is not None:
            steps = learn_activation_steps(denoiser, model, calibration, settings.act_steps, seed)
            record["learned_steps_kept"] = sorted(block for block, s in steps.items() if s["learned_kept"])
            record["learned_steps_reverted"] = sorted(block for block, s in steps.items() if not s["learned_kept"])
    return BaselineResult(METHOD, model, w_bits, a_bits, average_bits(denoiser, units, w_bits),
                          time.perf_counter() - start, record)


RELEASED_RULES = {"float layers": "first and last", "weights": "per-channel 'max' grid, AdaRound 20k it/block",
                  "activations": "static per-tensor, one range, steps learned 5k it/block",
                  "attention Q, K, V / softmax": "static / 8 bits (SD scripts: 16)",
                  "calibration": "256 samples × 20 steps"}
"""The released values (research notes, baselines.md §2), beside `rules`."""


def rules(record: dict, a_bits: int | None) -> dict[str, str]:
    """The rule table's entries for a run's settings `record` (`BaselineResult.settings`)."""
    rec, steps = record["reconstruction"], record["act_steps"]
    learned = f", steps learned {steps['iters']} it/block" if steps else ""
    return {"weights": f"per-channel {rec['grid']} grid, AdaRound {rec['iters']} it/block",
            "activations": "float" if a_bits is None else f"static per-tensor, one range{learned}, A{a_bits}",
            "attention Q, K, V / softmax": attention_rule(record, a_bits)}


def attention_rule(record: dict, a_bits: int | None) -> str:
    """The rule table's attention entry of `attach_attention`'s static quantizers (Q-Diffusion's and TFMQ-DM's)."""
    if not record["quantize_attention"] or a_bits is None:
        return "float"
    return f"static A{a_bits} / A{record['softmax_bits'] or a_bits}"
