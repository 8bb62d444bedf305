"""The Triton kernels of the packed low-bit ops for "cuda": host wrappers and their registration (performance.md §6).

The kernels live in the repository's `kernels/lut_triton.py`, installed as `qsd.packed.kernel_sources.lut_triton`.
Products with at most GEMV_MAX_M activation rows run the fused LUT GEMM, which reads only the packed bytes;
larger ones decode W once and call torch.matmul, since diffusion-sized GEMMs are compute-bound
(performance.md §6(b)). The int8 product always runs fused, to stay exact in int32.

`register()` adds the kernels to `torch.ops.qsd.*` when triton imports, and otherwise registers nothing;
`status()` says which. The wrappers also run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1 set
before triton is first imported), which is how the tests check them on machines without a GPU.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType

import torch

from qsd.errors import QsdError
from qsd.packed import ops
from qsd.packed.format import check_packed
from qsd.packed.kernel_files import SOURCES_PACKAGE

GEMV_MAX_M = 16
DECODE_TILE = (16, 256)  # output rows × codes per program
GEMM_TILE = (16, 64, 128)  # activation rows × output rows × codes per K step

_status = "not registered: qsd.packed.gpu.register() has not run"


@functools.cache
def _kernels() -> ModuleType:
    return importlib.import_module(f"{SOURCES_PACKAGE}.lut_triton")


def _cdiv(n: int, d: int) -> int:
    return -(-n // d)


def _check(packed: torch.Tensor, table: torch.Tensor, bits: int, k: int) -> None:
    check_packed(packed, bits, k, table)
    if table.device != packed.device:
        raise QsdError(f"packed codes are on {packed.device} but the table is on {table.device}; move both to one")


def _table_stride(table: torch.Tensor) -> int:
    return 0 if table.shape[0] == 1 else table.shape[1]


def decode(packed: torch.Tensor, table: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Dense `[O, K]` weight table[codes], in the table's dtype (as `reference.lut_decode`)."""
    _check(packed, table, bits, k)
    packed, table = packed.contiguous(), table.contiguous()
    out = torch.empty(packed.shape[0], k, dtype=table.dtype, device=packed.device)
    if out.numel():
        block_o, block_k = DECODE_TILE
        grid = (_cdiv(out.shape[0], block_o), _cdiv(k, block_k))
        _kernels().lut_decode_kernel[grid](
            packed, table, out, out.shape[0], k, packed.shape[1], _table_stride(table),
            BITS=bits, BLOCK_O=block_o, BLOCK_K=block_k,
        )  # fmt: skip
    return out


def _gemm(x: torch.Tensor, packed: torch.Tensor, table: torch.Tensor, bits: int, k: int, out_dtype) -> torch.Tensor:
    if x.dim() != 2 or x.shape[1] != k:
        raise QsdError(f"activations for K={k} are [M, {k}]; got {tuple(x.shape)}")
    if x.device != packed.device:
        raise QsdError(f"activations are on {x.device} but the packed codes are on {packed.device}")
    x, packed, table = x.contiguous(), packed.contiguous(), table.contiguous()
    out = torch.empty(x.shape[0], packed.shape[0], dtype=out_dtype, device=x.device)
    if out.numel():
        block_m, block_o, block_k = GEMM_TILE
        grid = (_cdiv(out.shape[1], block_o), _cdiv(out.shape[0], block_m))
        _kernels().lut_gemm_kernel[grid](
            x, packed, table, out, out.shape[0], out.shape[1], k, packed.shape[1], _table_stride(table),
            BITS=bits, INT=not out_dtype.is_floating_point, BLOCK_M=block_m, BLOCK_O=block_o, BLOCK_K=block_k,
        )  # fmt: skip
    return out


def linear(x: torch.Tensor, packed: torch.Tensor, table: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """x `[M, K]` · Wᵀ → `[M, O]` in x's dtype (as `reference.lut_linear`)."""
    _check(packed, table, bits, k)
    if not (x.dtype.is_floating_point and table.dtype.is_floating_point):
        raise QsdError(f"lut_linear takes float activations and table; got {x.dtype} and {table.dtype}")
    if x.dim() == 2 and x.shape[0] > GEMV_MAX_M:
        return x @ decode(packed, table, bits, k).to(x.dtype).t()
    return _gemm(x, packed, table, bits, k, x.dtype)


def mm_int8(xq: torch.Tensor, packed: torch.Tensor, table_q: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Exact int32 Σ_j xq[m, j]·Wq[o, j] for int8 activations and table (as `reference.lut_mm_int8`)."""
    _check(packed, table_q, bits, k)
    if xq.dtype != torch.int8 or table_q.dtype != torch.int8:
        raise QsdError(f"lut_mm_int8 takes int8 activations and table; got {xq.dtype} and {table_q.dtype}")
    return _gemm(xq, packed, table_q, bits, k, torch.int32)


def register() -> None:
    """Register the Triton kernels for "cuda" on `torch.ops.qsd.*` when triton is installed. The kernel file and
    triton itself are imported on the first call on a CUDA tensor, so `import qsd` stays free of them."""
    global _status
    if importlib.util.find_spec("triton") is None:
        _status = "not registered: triton is not installed (it is in the dev extra: pip install -e '.[dev]')"
        return
    ops.lut_decode.register_kernel("cuda", decode)
    ops.lut_linear.register_kernel("cuda", linear)
    ops.lut_mm_int8.register_kernel("cuda", mm_int8)
    _status = "registered for cuda (triton installed; the kernels compile on first use)"


def status() -> str:
    """Whether the Triton kernels are registered, and if not, why."""
    return _status
