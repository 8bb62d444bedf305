"""`QLinear` / `QConv`: denoiser layers that hold packed low-bit codes and lookup tables, never the float weight.

A layer is a list of *segments*, one per quantization unit (input-column range, see `qsd.layers`): a packed
segment holds b-bit codes (`qsd.packed.format`) and its table in the form it is cheapest to keep:
  * "table":  `[R, 2^b]` values in the layer's dtype (K-Means-C: one codebook per output row; K-Means-A: R = 1);
  * "affine": `[O, 2]` = (Δ, z) per output row, from which the UAQ table T[o, j] = (j - z[o])·Δ[o] is rebuilt
    in float32 exactly as the quantizer computed it (paper §3.1), so decoding is bitwise identical;
a float segment (a unit the configuration keeps in float) holds its slice of the weight.

Forward: few rows (GEMV-class, M ≤ `FUSED_MAX_ROWS`, linear only) run the fused LUT op `torch.ops.qsd.lut_linear`
per segment; otherwise the weight is decoded once per call with `torch.ops.qsd.lut_decode` and handed to the
dense GEMM or convolution (diffusion-sized inputs are compute-bound, performance.md §6), which reproduces the
fake-quantized layer bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qsd.config import SPEC_ATTRIBUTE, QuantSpec
from qsd.errors import QsdError
from qsd.packed import ops

FUSED_MAX_ROWS = 8


@dataclass(frozen=True)
class Segment:
    """Input columns [start, stop) of a layer's weight: quantized with `spec`, or float when spec is None."""

    unit: str
    start: int
    stop: int
    spec: QuantSpec | None
    table_kind: str | None = None  # "table" | "affine" for packed segments
    k: int = 0  # codes per output row (stop - start) · kernel elements

    def to_json(self) -> dict:
        return {"unit": self.unit, "start": self.start, "stop": self.stop,
                "spec": None if self.spec is None else self.spec.key, "table_kind": self.table_kind, "k": self.k}

    @classmethod
    def from_json(cls, data: dict) -> Segment:
        spec = None if data["spec"] is None else QuantSpec.parse(data["spec"])
        return cls(data["unit"], data["start"], data["stop"], spec, data["table_kind"], data["k"])


def affine_table(affine: torch.Tensor, bits: int) -> torch.Tensor:
    """UAQ table (j - z)·Δ for j = 0..2^b-1 from `[O, 2]` (Δ, z), float32 (the quantizer's arithmetic)."""
    levels = torch.arange(1 << bits, dtype=torch.float32, device=affine.device)
    delta, zero = affine[:, :1].float(), affine[:, 1:].float()
    return (levels[None, :] - zero) * delta


def affine_from_table(table: torch.Tensor, bits: int) -> torch.Tensor | None:
    """(Δ, z) `[O, 2]` whose `affine_table` equals `table` bitwise, or None when some row is not of that form."""
    table = table.float()
    step = table[:, 1] - table[:, 0]
    safe = torch.where(step != 0, step, torch.ones_like(step))
    zero = torch.round(-table[:, 0] / safe)
    # (j - z)·Δ is exact for j - z = ±1: read Δ off the entry next to the zero point
    j = torch.where(zero + 1 < (1 << bits), zero + 1, zero - 1).clamp(0, (1 << bits) - 1).long()
    delta = table.gather(1, j[:, None])[:, 0] / (j.float() - zero)
    affine = torch.stack([delta, zero], dim=1)
    return affine if torch.equal(affine_table(affine, bits), table) else None


class PackedLayer(nn.Module):
    """Shared by QLinear and QConv: the segments, their buffers (empty until loaded, like the bias), decoding and
    memory accounting. `kernel_size` is () for a linear layer. Records its segments' specs for readback
    (`QuantConfig.from_model`)."""

    def __init__(self, out_channels: int, kernel_size: tuple[int, ...], segments: list[Segment], dtype: torch.dtype,
                 has_bias: bool):
        super().__init__()
        self.out_channels = out_channels
        self.kernel_size = tuple(kernel_size)
        self.segments = list(segments)
        setattr(self, SPEC_ATTRIBUTE, {s.unit: s.spec for s in self.segments})
        self.weight_dtype = dtype
        self.bias = nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False) if has_bias else None
        for i, segment in enumerate(self.segments):
            if segment.spec is None:
                self.register_buffer(f"weight_{i}", torch.empty(0, dtype=dtype))
            else:
                self.register_buffer(f"codes_{i}", torch.empty(0, dtype=torch.uint8))
                self.register_buffer(f"{segment.table_kind}_{i}", torch.empty(0, dtype=dtype))

    def segment_tensors(self, i: int) -> dict[str, torch.Tensor]:
        """The buffers of segment i by role: {"weight"} or {"codes", "table"|"affine"}."""
        segment = self.segments[i]
        roles = ("weight",) if segment.spec is None else ("codes", segment.table_kind)
        return {role: getattr(self, f"{role}_{i}") for role in roles}

    def table(self, i: int) -> torch.Tensor:
        segment = self.segments[i]
        tensors = self.segment_tensors(i)
        if segment.table_kind == "affine":
            return affine_table(tensors["affine"], segment.spec.w_bits)
        return tensors["table"]

    def decoded_segment(self, i: int) -> torch.Tensor:
        """Segment i's weight as a dense `[O, k]` tensor in the layer's dtype."""
        segment = self.segments[i]
        if segment.spec is None:
            return self.segment_tensors(i)["weight"].reshape(self.out_channels, -1)
        codes = self.segment_tensors(i)["codes"]
        return ops.lut_decode(codes, self.table(i), segment.spec.w_bits, segment.k).to(self.weight_dtype)

    def weight_bytes(self) -> int:
        """Bytes this layer keeps resident for its weight (codes, tables, float slices), bias excluded."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def dense_weight(self) -> torch.Tensor:
        """The whole weight `[O, in, *kernel_size]`, decoded segment by segment."""
        pieces = [
            self.decoded_segment(i).reshape(self.out_channels, s.stop - s.start, *self.kernel_size)
            for i, s in enumerate(self.segments)
        ]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)

    def extra_repr(self) -> str:
        parts = [f"{s.unit}:{s.spec.key if s.spec else 'float'}" for s in self.segments]
        return f"out={self.out_channels}, segments=[{', '.join(parts)}]"


class QLinear(PackedLayer):
    def __init__(self, linear: nn.Linear, segments: list[Segment], dtype: torch.dtype):
        super().__init__(linear.out_features, (), segments, dtype, linear.bias is not None)
        self.in_features = linear.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] > FUSED_MAX_ROWS:
            return F.linear(x, self.dense_weight(), self.bias)
        out = None
        for i, segment in enumerate(self.segments):
            part = rows[:, segment.start : segment.stop]
            if segment.spec is None:
                y = part @ self.segment_tensors(i)["weight"].t()
            else:
                codes = self.segment_tensors(i)["codes"]
                y = ops.lut_linear(part, codes, self.table(i).to(part.dtype), segment.spec.w_bits, segment.k)
            out = y if out is None else out + y
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_channels)


class QConv(PackedLayer):
    """Packed `nn.Conv1d` / `nn.Conv2d`: decodes its weight and convolves (convolutions are never GEMV-sized)."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, segments: list[Segment], dtype: torch.dtype):
        super().__init__(conv.out_channels, conv.kernel_size, segments, dtype, conv.bias is not None)
        self.in_channels = conv.in_channels
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.padding_mode = conv.padding_mode
        self.convolve = F.conv2d if isinstance(conv, nn.Conv2d) else F.conv1d
        if self.padding_mode != "zeros":
            raise QsdError(f"packed convolutions support padding_mode='zeros'; got {self.padding_mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolve(x, self.dense_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)
