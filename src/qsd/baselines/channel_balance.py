"""Static-dynamic channel balancing (ViDiT-Q §4.3; baselines.md §4), simulated exactly.

A layer y = x·Wᵀ is rewritten, without changing what it computes in float, as
    y = (x·diag(1/s)·R) · (W·diag(s)·R)ᵀ,
where
  * s (the *static* part) is a SmoothQuant-style per-input-channel scale
    s_j = max|X_j|^α / max|W_j|^(1−α), with max|X_j| an activation peak over calibration inputs of the high-noise
    timesteps (`input_channel_peaks`: the absolute maximum, or the released code's moving average of per-sample
    maxima) and max|W_j| over the weight's column j. Dividing the input by s moves the channel imbalance into the
    weight.
  * R (the *dynamic* part) is an orthogonal matrix over the input channels: it spreads whatever imbalance is left
    (and the part s could not anticipate, since s is fixed while the imbalance moves with the timestep) across all
    channels, so no single channel sets a token's range.

Quantization then acts on the balanced operands: the layer computes Q(x̃R)·Q(W̃R)ᵀ with x̃ = x/s and W̃ = W·s. The
layer's weight stays in its original coordinates, holding dequant(Q(W̃R))·Rᵀ, and its input quantizer
(`BalancedInputQuantizer`) returns Q(x̃R)·Rᵀ; since RᵀR = I the product is the one above. With no quantizers the
whole construction is the identity up to float rounding.

Convolutions. Mixing or scaling input channels commutes with any convolution (zero padding stays zero), so the
construction is exact for every kernel size, with the channel axis being dim 1; whether convolutions are balanced at
all is the caller's choice (qsd.baselines.viditq, `Settings.balance_convs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from qsd.baselines.calibration import CalibrationSet, denoiser_output
from qsd.baselines.common import rtn_weight
from qsd.errors import InvalidSettingError

ROTATIONS = ("hadamard", "random", "none")


def hadamard(n: int) -> torch.Tensor:
    """The n×n Sylvester Hadamard matrix (±1 entries; n a power of two), float64."""
    if n < 1 or n & (n - 1):
        raise InvalidSettingError(f"a Sylvester Hadamard matrix needs a power-of-two size, not {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-distributed n×n orthogonal matrix (QR of a Gaussian, column signs fixed by R's diagonal), float64."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))


def rotation_matrix(width: int, kind: str, generator: torch.Generator) -> torch.Tensor | None:
    """An orthogonal `width`×`width` matrix (float32), or None for no rotation (`kind` "none", or width 1):
      * "hadamard": diag(±1)·H/√n, random signs then a normalised Hadamard (QuaRot's randomised Hadamard) where the
        width is a power of two; a random orthogonal matrix otherwise;
      * "random": a random orthogonal matrix.
    Both draw from `generator`."""
    if kind not in ROTATIONS:
        raise InvalidSettingError(f"unknown rotation {kind!r}; one of {', '.join(ROTATIONS)}")
    if kind == "none" or width < 2:
        return None
    if kind == "hadamard" and not width & (width - 1):
        signs = torch.randint(0, 2, (width,), generator=generator).to(torch.float64) * 2 - 1
        return (signs[:, None] * hadamard(width) / width ** 0.5).float()
    return random_orthogonal(width, generator).float()


def channel_dim(module: nn.Module) -> int:
    """Where a layer's input channels are: the last dim for Linear, dim 1 for convolutions."""
    return -1 if isinstance(module, nn.Linear) else 1


STATISTICS = ("momentum", "absmax")


def input_channel_peaks(denoiser: nn.Module, module_names: Iterable[str], calibration: CalibrationSet,
                        steps: Sequence[int], batch_rows: int = 64, statistic: str = "absmax",
                        momentum: float = 0.95) -> dict[str, torch.Tensor]:
    """A per-input-channel activation peak of each named layer over calibration `steps`, fed in that order in
    batches of `batch_rows` rows; a layer that was never called is left out. `statistic`:
      * "absmax": max|X_j| over every row and token;
      * "momentum" (ViDiT-Q's released `momentum_act_max`): each batch gives the mean over its samples of the
        sample's own max|X_j| (over its tokens, or positions), and m ← momentum·m + (1 − momentum)·batch value,
        starting from the first batch's."""
    if statistic not in STATISTICS:
        raise InvalidSettingError(f"unknown statistic {statistic!r}; one of {', '.join(STATISTICS)}")
    if not 0.0 <= momentum < 1.0:
        raise InvalidSettingError(f"momentum must lie in [0, 1), not {momentum}")
    modules = dict(denoiser.named_modules())
    found: dict[str, torch.Tensor] = {}

    def hook(module, args, name):
        x = args[0].detach()
        dim = channel_dim(module) % x.ndim
        within = [d for d in range(1, x.ndim) if d != dim]
        per_sample = (x.abs().float().amax(dim=within) if within else x.abs().float()).cpu()
        batch = per_sample.amax(0) if statistic == "absmax" else per_sample.mean(0)
        if name not in found:
            found[name] = batch
        elif statistic == "absmax":
            found[name] = torch.maximum(found[name], batch)
        else:
            found[name] = momentum * found[name] + (1 - momentum) * batch

    handles = [modules[name].register_forward_pre_hook(lambda m, a, name=name: hook(m, a, name))
               for name in module_names]
    device = next(denoiser.parameters()).device
    try:
        with torch.no_grad():
            for step in steps:
                for start in range(0, calibration.batch, batch_rows):
                    rows = torch.arange(start, min(calibration.batch, start + batch_rows))
                    denoiser_output(denoiser, calibration.inputs(step, rows, device))
    finally:
        for handle in handles:
            handle.remove()
    return found


def weight_absmax(weight: torch.Tensor) -> torch.Tensor:
    """max|W_j| per input channel j (dim 1) of a Linear or convolution weight."""
    w = weight.detach().abs().float()
    return w.amax(dim=[d for d in range(w.ndim) if d != 1]).cpu()


def smoothing_scales(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^α / max|W_j|^(1−α); 1 where either maximum is 0 (a dead channel needs no balancing)."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidSettingError(f"the smoothing strength alpha must lie in [0, 1], not {alpha}")
    a, w = act_max.double(), weight_max.double()
    live = (a > 0) & (w > 0)
    s = a.clamp(min=1e-30) ** alpha / w.clamp(min=1e-30) ** (1 - alpha)
    return torch.where(live, s, torch.ones_like(s)).float()


def _along(values: torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return values.reshape(shape)


def _rotate(x: torch.Tensor, matrix: torch.Tensor, dim: int) -> torch.Tensor:
    """x with its `dim` axis multiplied by `matrix` (x_dim ↦ x_dim·matrix)."""
    if dim % x.ndim == x.ndim - 1:
        return x @ matrix.to(x.dtype)
    return (x.movedim(dim, -1) @ matrix.to(x.dtype)).movedim(-1, dim)


def balanced_weight(weight: torch.Tensor, smooth: torch.Tensor | None, rotation: torch.Tensor | None,
                    bits: int | None) -> torch.Tensor:
    """dequant(Q(W·diag(s)·R))·Rᵀ for a weight (or input-column block of one) [O, C, ...]: per-output-channel
    min–max round-to-nearest at `bits` (None: no quantization), in float32 and the original coordinates."""
    w = weight.detach().double()
    if smooth is not None:
        w = w * _along(smooth.double(), w.ndim, 1)
    if rotation is not None:
        w = _rotate(w, rotation.double(), 1)
    if bits is not None:
        w = rtn_weight(w.float(), bits).dequantize().double()
    if rotation is not None:
        w = _rotate(w, rotation.double().T, 1)
    return w.float()


class BalancedInputQuantizer(nn.Module):
    """A layer's input quantizer under channel balancing: divides by `smooth` (per input channel; None: no
    smoothing), then for each input block [start, stop) (one per quantization unit; the halves of a
    concatenation-fed layer are separate blocks) rotates by its matrix, quantizes with its quantizer (None: float)
    and rotates back: returns Q(x̃R)·Rᵀ. `channel_dim` is -1 for Linear inputs, 1 for convolution inputs; the
    quantizer sees the rotated tensor in the layer's own layout."""

    def __init__(self, smooth: torch.Tensor | None, bounds: Sequence[tuple[int, int]],
                 rotations: Sequence[torch.Tensor | None], quantizers: Sequence[nn.Module | None],
                 channel_dim: int) -> None:
        super().__init__()
        self.bounds, self.channel_dim = [tuple(b) for b in bounds], channel_dim
        self.register_buffer("smooth", None if smooth is None else smooth.detach().float().clone())
        self.rotated = [r is not None for r in rotations]
        for i, r in enumerate(rotations):
            self.register_buffer(f"rotation_{i}", None if r is None else r.detach().float())
        self.quantizers = nn.ModuleList([nn.Identity() if q is None else q for q in quantizers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.channel_dim
        if self.smooth is not None:
            x = x / _along(self.smooth, x.ndim, dim % x.ndim).to(x.dtype)
        pieces = []
        for i, ((start, stop), quantizer) in enumerate(zip(self.bounds, self.quantizers, strict=True)):
            piece = x if len(self.bounds) == 1 else x.narrow(dim, start, stop - start)
            rotation = getattr(self, f"rotation_{i}")
            if rotation is None:
                pieces.append(quantizer(piece))
            else:
                pieces.append(_rotate(quantizer(_rotate(piece, rotation, dim)), rotation.T, dim))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)

    def extra_repr(self) -> str:
        return (f"smoothed={self.smooth is not None}, blocks={self.bounds}, rotated={self.rotated}, "
                f"channel_dim={self.channel_dim}")
