"""Pure-torch reference of every packed low-bit op (DESIGN principle 7): the ground truth the CPU and
Triton kernels are tested against, and the implementation on devices without a fast kernel.

Notation: x `[M, K]` activations, packed `[O, K_pad·b/8]` codes (see `packing`), table `[R, 2^b]` with
R = O (one table per output row) or R = 1 (one shared table), W = table[codes] `[O, K]`.
"""

from __future__ import annotations

import torch

from qsd.packed.format import unpack_codes


def lut_decode(packed: torch.Tensor, table: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """W[o, j] = table[o or 0, code[o, j]], in the table's dtype."""
    codes = unpack_codes(packed, bits, k).long()
    if table.shape[0] == 1:
        return table[0][codes]
    return torch.gather(table, 1, codes)


def lut_linear(x: torch.Tensor, packed: torch.Tensor, table: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """x · Wᵀ in x's dtype (float activations, float table)."""
    return x @ lut_decode(packed, table, bits, k).to(x.dtype).t()


def lut_mm_int8(xq: torch.Tensor, packed: torch.Tensor, table_q: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Σ_j xq[m, j]·Wq[o, j] in int32, for int8 activations xq `[M, K]` and an int8 table (the A8 path)."""
    weight = lut_decode(packed, table_q, bits, k).to(torch.int32)
    return xq.to(torch.int32) @ weight.t()
