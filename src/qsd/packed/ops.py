"""The packed low-bit ops as `torch.library` custom ops (`torch.ops.qsd.*`).

Each op's default implementation is the pure-torch reference (`qsd.packed.reference`); fast kernels
register themselves per device: the C++/OpenMP kernels for "cpu" (`qsd.packed.cpu`), the Triton kernels for
"cuda" (`qsd.packed.gpu`). Import `qsd.packed` (not this module) to get the ops with their kernels.
"""

from __future__ import annotations

import torch

from qsd.packed import reference


@torch.library.custom_op("qsd::lut_decode", mutates_args=())
def lut_decode(packed: torch.Tensor, table: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Dense `[O, K]` weight from packed codes and a lookup table (in the table's dtype)."""
    return reference.lut_decode(packed, table, bits, k)


@lut_decode.register_fake
def _(packed, table, bits, k):
    return table.new_empty(packed.shape[0], k)


@torch.library.custom_op("qsd::lut_linear", mutates_args=())
def lut_linear(x: torch.Tensor, packed: torch.Tensor, table: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """x `[M, K]` · Wᵀ → `[M, O]`, float activations and table."""
    return reference.lut_linear(x, packed, table, bits, k)


@lut_linear.register_fake
def _(x, packed, table, bits, k):
    return x.new_empty(x.shape[0], packed.shape[0])


@torch.library.custom_op("qsd::lut_mm_int8", mutates_args=())
def lut_mm_int8(xq: torch.Tensor, packed: torch.Tensor, table_q: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """int8 activations `[M, K]` times the int8-table weight → exact int32 `[M, O]`."""
    return reference.lut_mm_int8(xq, packed, table_q, bits, k)


@lut_mm_int8.register_fake
def _(xq, packed, table_q, bits, k):
    return xq.new_empty(xq.shape[0], packed.shape[0], dtype=torch.int32)
