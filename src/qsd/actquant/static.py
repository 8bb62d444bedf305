"""Static (calibrated) activation quantizers for the baselines (baselines.md §1-3).

One asymmetric per-tensor range, fixed after calibration, optionally one range per sampling step (TFMQ-DM's
finite-set calibration; DMQ keeps one set per step for every activation), chosen at run time by a `StepClock`
that reads the timestep the denoiser is called with. On top of the per-tensor step Δ:
  * a learnable Δ (Q-Diffusion's learned step size: rounding passes gradients straight through, Δ gets them);
  * a per-channel power-of-two step Δ·2^(−s_c), s_c ∈ {0..3} (DMQ's channel-wise power-of-two scaling, §1.4);
  * a per-channel divisor γ_c applied before quantizing (SmoothQuant / DMQ's learned equivalent scaling: the layer
    then holds W·γ, so Q(x/γ)·Q(Wγ) replaces x·W).

Notation: levels L = 2^b − 1; Δ = (max − min)/L; z = round(−min/Δ); x̂ = (clamp(round(x/Δ_c) + z, 0, L) − z)·Δ_c.

Modes: "observe" records min/max of what passes (running extremes, or an EMA with `momentum`, DMQ's 0.95) and
returns it unquantized (divided by γ when smoothing); "quantize" applies the fixed ranges; "dynamic" takes min/max
of each batch (DMQ's LES training); "float" passes x (divided by γ) on unquantized, the float function; `finalize()`
turns what was observed into Δ and z.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from qsd.config import check_a_bits
from qsd.errors import QsdError
from qsd.models.base import denoiser_arguments

MODES = ("observe", "quantize", "dynamic", "float")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round, with the identity as gradient."""
    return x + (torch.round(x) - x).detach()


class StepClock:
    """Which of the sampling steps `timesteps` the denoiser is evaluating: `attach(denoiser)` sets `index` before every
    forward to the step whose timestep is closest to the call's `timestep` argument (its first element)."""

    def __init__(self, timesteps: Sequence[float]) -> None:
        self.timesteps = torch.as_tensor([float(t) for t in timesteps])
        self.index = 0

    def set_timestep(self, timestep: torch.Tensor | float) -> None:
        t = float(torch.as_tensor(timestep).reshape(-1)[0])
        self.index = int(torch.argmin((self.timesteps - t).abs()))

    def attach(self, denoiser: nn.Module):
        """Hook `denoiser` so that each call sets the clock; returns the hook handle. The hook is this clock's bound
        method, so a deep copy of the denoiser drives the copied clock its copied quantizers read."""
        return denoiser.register_forward_pre_hook(self.on_forward, with_kwargs=True)

    def on_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        arguments = denoiser_arguments(module, args, kwargs)
        if arguments.get("timestep") is None:
            raise QsdError("per-step activation quantizers need the denoiser called with a timestep")
        self.set_timestep(arguments["timestep"])


class StaticQuantizer(nn.Module):
    """A calibrated per-tensor activation quantizer (see module docstring) with `n_sets` ranges chosen by `clock`."""

    def __init__(self, bits: int, n_sets: int = 1, clock: StepClock | None = None, channel_dim: int = -1,
                 unsigned: bool = False, momentum: float | None = None) -> None:
        super().__init__()
        check_a_bits(bits)
        if n_sets > 1 and clock is None:
            raise QsdError(f"{n_sets} per-step ranges need a StepClock to choose between them")
        self.bits, self.n_sets, self.clock = bits, n_sets, clock
        self.channel_dim, self.unsigned, self.momentum = channel_dim, unsigned, momentum
        self.mode = "observe"
        self.register_buffer("low", torch.full((n_sets,), float("inf")))
        self.register_buffer("high", torch.full((n_sets,), float("-inf")))
        self.register_buffer("zero", torch.zeros(n_sets))
        self.delta = nn.Parameter(torch.ones(n_sets), requires_grad=False)
        self.shifts: torch.Tensor | None = None  # [n_sets, C] integer exponents s_c
        self.smooth: torch.Tensor | None = None  # [C] divisors γ_c

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    @property
    def set_index(self) -> int:
        return 0 if self.clock is None else self.clock.index

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise QsdError(f"unknown quantizer mode {mode!r}; one of {', '.join(MODES)}")
        self.mode = mode

    def channel_view(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-channel `values` shaped to broadcast against `x` along `channel_dim`."""
        shape = [1] * x.ndim
        shape[self.channel_dim] = -1
        return values.reshape(shape).to(x.dtype)

    def observe(self, x: torch.Tensor) -> None:
        data = self.scaled(x).detach()
        k = self.set_index
        low = torch.zeros((), device=x.device) if self.unsigned else data.min().float()
        high = data.max().float()
        if self.momentum is None or not torch.isfinite(self.low[k]):
            self.low[k], self.high[k] = torch.minimum(self.low[k], low), torch.maximum(self.high[k], high)
        else:
            m = self.momentum
            self.low[k], self.high[k] = m * self.low[k] + (1 - m) * low, m * self.high[k] + (1 - m) * high

    def finalize(self) -> None:
        """Δ and z of every set from the observed ranges (a set that saw nothing takes the union of the others)."""
        seen = torch.isfinite(self.low)
        if not seen.any():
            raise QsdError("finalize() before any activation was observed: run calibration inputs first")
        low = torch.where(seen, self.low, self.low[seen].min()).clamp(max=0)
        high = torch.where(seen, self.high, self.high[seen].max()).clamp(min=0)
        delta = ((high - low) / self.levels).clamp(min=1e-8)
        self.delta.data = delta
        self.zero = torch.round(-low / delta)
        self.mode = "quantize"

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.smooth is None else x / self.channel_view(self.smooth, x)

    def quantize(self, x: torch.Tensor, delta: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        x = self.scaled(x)
        step = delta.to(x.dtype)
        if self.shifts is not None:
            step = step * self.channel_view(torch.exp2(-self.shifts[self.set_index].float()), x)
        codes = torch.clamp(round_ste(x / step) + zero, 0, self.levels)
        return (codes - zero) * step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            self.observe(x)
        if self.mode in ("observe", "float"):
            return self.scaled(x)  # the layer holds W·γ: the float function is (x/γ)·(Wγ)
        if self.mode == "dynamic":
            data = self.scaled(x).detach()
            low = torch.zeros((), device=x.device) if self.unsigned else data.min().clamp(max=0)
            delta = ((data.max().clamp(min=0) - low) / self.levels).clamp(min=1e-8)
            return self.quantize(x, delta, torch.round(-low / delta))
        k = self.set_index
        return self.quantize(x, self.delta[k], self.zero[k])

    def extra_repr(self) -> str:
        extras = [f"sets={self.n_sets}"] if self.n_sets > 1 else []
        extras += ["power-of-two channels"] * (self.shifts is not None) + ["smoothed"] * (self.smooth is not None)
        return ", ".join([f"A{self.bits}", self.mode, *extras])


def finalize_observed(quantizers: Iterable[StaticQuantizer]) -> int:
    """`finalize()` every quantizer that observed something; the others (their layer is never called as a module:
    HunyuanDiT's attention pooling reads its projections' weights directly) pass their input on in "float" mode, with
    a warning. Returns how many stayed float."""
    unseen = 0
    for q in quantizers:
        if torch.isfinite(q.low).any():
            q.finalize()
        else:
            q.set_mode("float")
            unseen += 1
    if unseen:
        warnings.warn(f"{unseen} activation quantizer(s) saw no input during calibration (their layer is never "
                      f"called as a module): they stay float", stacklevel=2)
    return unseen
