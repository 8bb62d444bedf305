"""Token-wise online activation quantization (the paper's A8/A6, code.md §2; ViDiT-Q's dynamic per-token rule).

No calibration: every *row* of the tensor gets its own asymmetric range from its own min and max at run time.
A row is
  * one token of a `[B, N, C]` input (every Linear of a transformer; attention Q/K/V as `[B·heads, N, d]`),
  * one spatial position of one sample of a `[B, C, H, W]` convolution input, over its C channels: the granularity
    an integer kernel can use (one scale per position of the im2col/implicit-GEMM input), as for a token,
  * one sample of a `[B, F]` input (timestep and conditioning MLPs).

Notation (per row r, b bits): Δ_r = (max_r − min_r)/(2^b − 1), z_r = round(−min_r/Δ_r),
x̂ = (clamp(round(x/Δ_r) + z_r, 0, 2^b − 1) − z_r)·Δ_r. The unsigned variant (softmax probabilities, per query
row) fixes min_r = 0. A constant row (Δ_r = 0, which the released code divides by) is returned unchanged: it is
exactly representable. Rounding passes gradients straight through (x̂ = x + (x̂ − x) detached), so the same op
serves calibration methods that learn through it (DMQ's LES).
"""

from __future__ import annotations

import torch
from torch import nn

from qsd.config import check_a_bits
from qsd.errors import UnsupportedSpecError


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """`x` as the rows it is quantized by (see module docstring), `[rows, elements]`."""
    if x.ndim >= 4:
        return x.movedim(1, -1).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[-1])


def from_rows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of `as_rows`: `rows` in the shape (and memory format) of `like`."""
    if like.ndim >= 4:
        return rows.reshape(like.movedim(1, -1).shape).movedim(-1, 1).contiguous()
    return rows.reshape(like.shape)


def fake_quantize_rows(rows: torch.Tensor, bits: int, unsigned: bool = False) -> torch.Tensor:
    """Quantize-dequantize every row of the 2-D `rows` with its own min/max range (straight-through gradient)."""
    levels = (1 << bits) - 1
    data = rows.detach().float()
    high = data.amax(dim=1, keepdim=True)
    low = torch.zeros_like(high) if unsigned else data.amin(dim=1, keepdim=True)
    delta = (high - low) / levels
    constant = delta == 0
    delta[constant] = 1.0
    zero = torch.round(-low / delta)
    codes = torch.div(data, delta).round_().add_(zero).clamp_(0, levels)  # in place: a few passes over the data
    quantized = codes.sub_(zero).mul_(delta)
    if constant.any():
        quantized = torch.where(constant, data, quantized)
    quantized = quantized.to(rows.dtype)
    return rows + (quantized - rows).detach() if rows.requires_grad else quantized


def fake_quantize_tokens(x: torch.Tensor, bits: int, unsigned: bool = False) -> torch.Tensor:
    """`x` quantized token-wise (rows as in the module docstring), same shape and dtype."""
    return from_rows(fake_quantize_rows(as_rows(x), bits, unsigned), x)


class TokenwiseQuantizer(nn.Module):
    """Token-wise online quantization at `bits` as a module (unsigned: min fixed at 0, for softmax rows)."""

    def __init__(self, bits: int, unsigned: bool = False) -> None:
        super().__init__()
        if bits is None:
            raise UnsupportedSpecError('a TokenwiseQuantizer needs a bit width; float activations need none')
        check_a_bits(bits)
        self.bits, self.unsigned = bits, unsigned

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize_tokens(x, self.bits, self.unsigned)

    def extra_repr(self) -> str:
        return f"A{self.bits}" + (", unsigned" if self.unsigned else "")
