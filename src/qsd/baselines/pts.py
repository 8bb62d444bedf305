"""Channel-wise power-of-two scaling (PTS) with voting, inside DMQ's per-step static activation calibration (DMQ,
Lee et al., ICCV 2025, §3.4; baselines.md §1.4).

A per-tensor activation step Δ set by min/max covers the widest channel and wastes levels on the narrow ones. PTS
gives channel c the step Δ·2^(−s_c), a shift that moves into the integer weights as a bit shift. The exponent is not
chosen by the error of the few calibration samples (which overfits) but by a vote over them.

Notation:
  u        what a PTS quantizer quantizes at one calibration step: its input x, divided by LES's γ where set,
           N samples × C channels × M elements per channel (positions / tokens)
  Δ, z     the quantizer's per-tensor step and zero point at that step (static min/max EMA; z is shared by every
           channel, as in DMQ's code)
  s        an exponent in {0, …, D}, D = 3: the candidate steps Δ, Δ/2, Δ/4, Δ/8
  v_{n,c}  sample n's vote for channel c: argmin_s mean_m (Q_s(u_{n,c,m}) − u_{n,c,m})² (ties: the smaller s)
  mode_c   the most frequent vote (ties: the smaller s);  r_c its share of the N votes
  s_c      mode_c if r_c ≥ κ (0.85), else 0 (no scaling)

Per-step calibration (`calibrate_steps`), for every calibration step k in turn (DMQ §1.4's order):
  1. every quantizer observes set k with activations float and weights quantized: an EMA (momentum 0.95) of the
     per-batch min/max, started from one random batch of `batch` rows, then all rows in shuffled batches of `batch`
     (the rows are stored unconditional half first: batches in order would leave the EMA mostly on one half);
  2. the ranges are fixed (`finalize`), so from here on everything is quantized;
  3. PTS: one pass of the quantized network (weights and activations) over the step's voting rows, all in one batch;
     whenever it reaches a PTS layer, that layer votes on its input (both halves of a split layer, each on its own)
     and sets its shifts for set k *before* quantizing that input, and the pass goes on with them. Every later
     decision therefore sees the quantization error, shifts included, of everything before it: the same inputs as
     DMQ's block-by-block propagation, in a single forward pass per step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qsd.actquant.static import StaticQuantizer, finalize_observed
from qsd.baselines.calibration import CalibrationSet, denoiser_output


def vote_shifts(u: torch.Tensor, delta: float | torch.Tensor, zero: float | torch.Tensor, bits: int,
                channel_dim: int, max_shift: int = 3, kappa: float = 0.85) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor]:
    """PTS exponents of `u` (samples on dim 0, channels on `channel_dim`): returns (s [C] long, mode [C] long,
    share r [C]) as in the module docstring."""
    levels = (1 << bits) - 1
    channels = u.shape[channel_dim]
    v = u.detach().float().movedim(channel_dim, 1).reshape(u.shape[0], channels, -1)
    delta, zero = torch.as_tensor(delta, dtype=torch.float32), torch.as_tensor(zero, dtype=torch.float32)
    errors = []
    for s in range(max_shift + 1):
        step = delta * 2.0 ** -s
        q = (torch.clamp(torch.round(v / step) + zero, 0, levels) - zero) * step
        errors.append((q - v).square().mean(-1))
    votes = torch.stack(errors).argmin(0)  # [N, C]
    counts = F.one_hot(votes, max_shift + 1).sum(0)  # [C, D + 1]
    mode = counts.argmax(1)
    share = counts.gather(1, mode[:, None])[:, 0].float() / u.shape[0]
    return torch.where(share >= kappa, mode, torch.zeros_like(mode)), mode, share


@dataclass(frozen=True)
class PtsPart:
    """One PTS quantizer: unit `unit` of layer `module`, quantizing input channels [start, stop) on `channel_dim`."""

    unit: str
    quantizer: StaticQuantizer
    start: int
    stop: int
    channel_dim: int


class _Stop(Exception):
    """Ends a forward pass once every PTS layer has voted."""


def _vote_module(parts: Sequence[PtsPart], x: torch.Tensor, max_shift: int, kappa: float) -> dict[str, dict]:
    """Vote every part of one layer on its raw input `x`, for the set the clock is at, and set its shifts."""
    stats = {}
    for part in parts:
        q = part.quantizer
        k = q.set_index
        u = q.scaled(x.narrow(part.channel_dim, part.start, part.stop - part.start))
        shifts, _, share = vote_shifts(u, q.delta[k].detach(), q.zero[k], q.bits, part.channel_dim, max_shift, kappa)
        q.shifts[k] = shifts.to(q.shifts)
        stats[part.unit] = {"scaled_channels": int((shifts > 0).sum()), "mean_share": float(share.mean())}
    return stats


def vote_pass(model: nn.Module, pts: Mapping[str, Sequence[PtsPart]], calibration: CalibrationSet, step: int,
              rows: torch.Tensor, max_shift: int = 3, kappa: float = 0.85) -> dict[str, dict]:
    """One quantized forward pass over `rows` of `step` in which every PTS layer, when reached, votes on its input and
    sets its shifts before quantizing it (module docstring, step 3); stops after the last one. Returns per-unit
    statistics."""
    named = dict(model.named_modules())
    stats: dict[str, dict] = {}
    voted: set[str] = set()

    def hook(name: str, args: tuple) -> None:
        if name not in voted:
            voted.add(name)
            stats.update(_vote_module(pts[name], args[0], max_shift, kappa))
        if len(voted) == len(pts):
            raise _Stop

    handles = [named[m].register_forward_pre_hook(lambda mod, args, m=m: hook(m, args), prepend=True) for m in pts]
    try:
        with torch.no_grad():
            denoiser_output(model, calibration.inputs(step, rows, next(model.parameters()).device))
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return stats


def calibrate_steps(model: nn.Module, quantizers: Sequence[StaticQuantizer], pts: Mapping[str, Sequence[PtsPart]],
                    calibration: CalibrationSet, batch: int = 16, pts_rows: int | None = None, kappa: float = 0.85,
                    max_shift: int = 3, seed: int = 0) -> dict[str, list[dict]]:
    """Per-step static ranges for `quantizers` (each with one set per calibration step chosen by a `StepClock` attached
    to `model`, or a single set; momentum as constructed) and PTS shifts for the `pts` layers (module name → its
    parts), as in the module docstring; leaves every quantizer in quantize mode. Returns per-unit PTS statistics, one
    entry per step."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    for parts in pts.values():
        for part in parts:
            part.quantizer.shifts = torch.zeros(part.quantizer.n_sets, part.stop - part.start, dtype=torch.long)
    n = calibration.batch
    stats: dict[str, list[dict]] = {p.unit: [] for parts in pts.values() for p in parts}
    for step in range(len(calibration)):
        for q in quantizers:
            q.set_mode("observe")
        first = torch.randperm(n, generator=generator)[:batch]
        with torch.no_grad():
            for rows in [first, *torch.randperm(n, generator=generator).split(batch)]:
                denoiser_output(model, calibration.inputs(step, rows, device))
        finalize_observed(quantizers)
        if pts:
            rows = torch.randperm(n, generator=generator)[:pts_rows].sort().values if pts_rows else torch.arange(n)
            for unit, s in vote_pass(model, pts, calibration, step, rows, max_shift, kappa).items():
                stats[unit].append(s)
    return stats
