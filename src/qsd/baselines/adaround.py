"""AdaRound (Nagel et al., ICML 2020, §3.3; baselines.md §1.5): learned up-or-down rounding of a weight on a
fixed per-output-channel affine grid, the rounding that BRECQ (`qsd.baselines.reconstruction`) learns block by block.

Notation, per output channel: Δ the step, z the zero point, L = 2^b − 1; w̃ = ⌊w/Δ⌋; the rectified sigmoid
h(α) = clamp(σ(α)·(ζ − γ) + γ, 0, 1) with γ = −0.1, ζ = 1.1; the soft weight ŵ = Δ·(clamp(w̃ + h(α) + z, 0, L) − z);
the hard weight takes h = 1[α ≥ 0]. α starts where h(α) equals the fractional part w/Δ − w̃, so the hard weight
starts as round-to-nearest. The regulariser Σ(1 − |2h(α) − 1|^β) pushes every h to 0 or 1; β is annealed linearly
from 20 to 2 after a warm-up (the first 20 % of the iterations) during which the regulariser is off.
"""

from __future__ import annotations

import torch
from torch import nn

from qsd.baselines.common import MIN_MAX
from qsd.errors import QsdError
from qsd.quantizers import QuantizerSettings, quantize_weight

GAMMA, ZETA = -0.1, 1.1
GRIDS = {"mse": QuantizerSettings(), "minmax": MIN_MAX}
"""How the grid is initialised: the paper's UAQ clipping search (`qsd.quantizers` defaults: per channel, shrink ratios
0-0.9 scored by the L2.4 error; a coarser version of the 'mse' init of Q-Diffusion's and DMQ's code) or each
channel's full range ('max'; RTN's grid)."""


def channel_grid(weight: torch.Tensor, bits: int, grid: str = "mse") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel step Δ and zero point z [O] of `weight` [O, ...] at `bits` (see `GRIDS`), at the FP16
    precision UAQ stores them in."""
    if grid not in GRIDS:
        raise QsdError(f"unknown AdaRound grid {grid!r}; one of {', '.join(GRIDS)}")
    threads = torch.get_num_threads()
    lut = quantize_weight(weight, "uaq", [bits], GRIDS[grid])[bits].lut.to(weight.device)  # lut[g] = (g − z)·Δ
    torch.set_num_threads(threads)  # numba's OpenMP kernel leaves its own thread count behind for torch's ops
    delta = (lut[:, -1] - lut[:, 0]) / ((1 << bits) - 1)
    return delta, torch.round(-lut[:, 0] / delta)


def annealed_beta(iteration: int, iters: int, warmup: float, beta: tuple[float, float]) -> float | None:
    """β of the regulariser at `iteration` of `iters`: None (regulariser off) during the warm-up fraction, then linear
    from beta[0] to beta[1]."""
    start = warmup * iters
    if iteration < start:
        return None
    progress = (iteration - start) / max(iters - start, 1)
    return beta[1] + (beta[0] - beta[1]) * max(0.0, 1.0 - progress)


class AdaRound(nn.Module):
    """Learned rounding of one weight block `weight` [O, ...] at `bits` on its per-output-channel grid (`grid`).

    `forward()` gives the soft weight (differentiable in α), or the hard one while `hard` is set."""

    def __init__(self, weight: torch.Tensor, bits: int, grid: str = "mse") -> None:
        super().__init__()
        delta, zero = channel_grid(weight, bits, grid)
        shape = (-1,) + (1,) * (weight.ndim - 1)
        scaled = weight.detach().float() / delta.reshape(shape)
        delta, zero, floor = delta.reshape(shape), zero.reshape(shape), torch.floor(scaled)
        self.register_buffer("delta", delta)
        self.register_buffer("low", -zero * delta)  # (0 − z)·Δ and (L − z)·Δ: the grid's ends
        self.register_buffer("high", ((1 << bits) - 1 - zero) * delta)
        self.register_buffer("floor", floor)
        self.hard, self.last_soft = False, None
        rest = scaled - floor
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    def soft(self) -> torch.Tensor:
        """The rectified sigmoid h(α) in [0, 1]."""
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self) -> torch.Tensor:
        """ŵ = clamp((w̃ + h)·Δ, −z·Δ, (L − z)·Δ), the module docstring's ŵ with the zero point folded into the ends."""
        if self.hard:
            rounding = (self.alpha >= 0).to(self.floor.dtype)
        else:
            rounding = self.last_soft = self.soft()
        return torch.clamp((self.floor + rounding) * self.delta, self.low, self.high)

    def regularizer(self, beta: float) -> torch.Tensor:
        """Σ(1 − |2h(α) − 1|^β) over the block (0 once every h is 0 or 1), on the h of the last soft `forward()` (the
        same iteration's: its graph is reused)."""
        soft = self.soft() if self.last_soft is None else self.last_soft
        return (1 - (2 * soft - 1).abs().pow(beta)).sum()
