"""Triton kernels for packed low-bit weights (format: `qsd.kernels.packing`; host side: `qsd.kernels.gpu`).

`lut_decode_kernel` writes the dense weight W = table[codes]; `lut_gemm_kernel` computes x · Wᵀ without
materialising W: a program owns BLOCK_M activation rows × BLOCK_O output rows and walks K in tiles of BLOCK_K
codes, extracting each plane's codes with one shift and one mask, gathering the weights from the row's table
and accumulating a `tl.dot` in fp32 (int32 for int8 activations and table).

Tables are addressed as table_ptr + row·table_stride + code: table_stride = 2^b for one table per output row,
0 for a table shared by all rows.
"""

import triton
import triton.language as tl

BLOCK = tl.constexpr(64)  # codes per packed block (packing.BLOCK)


@triton.jit
def _plane(code, row_ptr, kpos, mask, BITS: tl.constexpr, P: tl.constexpr):
    """OR the P-bit plane's field into `code` (a no-op when b has no P-bit plane).

    Wider planes come first in a block and hold lower code bits, so both the plane's byte offset within the block
    (in units of 8 bytes) and its bit shift within the code equal the summed width of the wider planes.
    """
    if BITS & P:
        wider = BITS - BITS % (2 * P)
        i = kpos % BLOCK
        byte_ptr = row_ptr + (kpos // BLOCK) * (8 * BITS) + 8 * wider + i % (8 * P)
        byte = tl.load(byte_ptr, mask=mask, other=0).to(tl.int32)
        code |= ((byte >> (P * (i // (8 * P)))) & ((1 << P) - 1)) << wider
    return code


@triton.jit
def _codes(row_ptr, kpos, mask, BITS: tl.constexpr):
    """b-bit codes at positions `kpos` of the rows whose packed bytes start at `row_ptr` (broadcast shapes)."""
    code = tl.zeros(mask.shape, tl.int32)
    code = _plane(code, row_ptr, kpos, mask, BITS, 8)
    code = _plane(code, row_ptr, kpos, mask, BITS, 4)
    code = _plane(code, row_ptr, kpos, mask, BITS, 2)
    code = _plane(code, row_ptr, kpos, mask, BITS, 1)
    return code


@triton.jit
def lut_decode_kernel(
    packed_ptr,
    table_ptr,
    out_ptr,
    n_rows,
    k,
    row_bytes,
    table_stride,
    BITS: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out[o, j] = table[o·table_stride + code[o, j]] for a BLOCK_O × BLOCK_K tile; grid (⌈O/BLOCK_O⌉, ⌈K/BLOCK_K⌉)."""
    rows = (tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)).to(tl.int64)[:, None]
    kpos = (tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K))[None, :]
    mask = (rows < n_rows) & (kpos < k)
    code = _codes(packed_ptr + rows * row_bytes, kpos, mask, BITS)
    weight = tl.load(table_ptr + rows * table_stride + code, mask=mask)
    tl.store(out_ptr + rows * k + kpos, weight, mask=mask)


@triton.jit
def lut_gemm_kernel(
    x_ptr,
    packed_ptr,
    table_ptr,
    out_ptr,
    m,
    n_rows,
    k,
    row_bytes,
    table_stride,
    BITS: tl.constexpr,
    INT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out[m, o] = Σ_j x[m, j]·W[o, j] for a BLOCK_M × BLOCK_O tile; grid (⌈O/BLOCK_O⌉, ⌈M/BLOCK_M⌉).

    W is decoded tile by tile in registers and cast to x's dtype (as the reference does) before the dot;
    INT selects an exact int32 accumulator (int8 x and table) instead of fp32.
    """
    orow = (tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)).to(tl.int64)
    rows = orow[:, None]
    mrows = (tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None]
    cols = tl.arange(0, BLOCK_K)[None, :]
    row_ptr = packed_ptr + rows * row_bytes
    tab_ptr = table_ptr + rows * table_stride
    if INT:
        acc = tl.zeros((BLOCK_M, BLOCK_O), tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_O), tl.float32)
    for k0 in range(0, k, BLOCK_K):
        kpos = k0 + cols
        wmask = (rows < n_rows) & (kpos < k)
        xmask = (mrows < m) & (kpos < k)
        xt = tl.load(x_ptr + mrows * k + kpos, mask=xmask, other=0)
        code = _codes(row_ptr, kpos, wmask, BITS)
        weight = tl.load(tab_ptr + code, mask=wmask, other=0).to(xt.dtype)
        acc = tl.dot(xt, tl.trans(weight), acc, input_precision="ieee", out_dtype=acc.dtype)
    omask = (mrows < m) & (orow[None, :] < n_rows)
    tl.store(out_ptr + mrows * n_rows + orow[None, :], acc.to(out_ptr.dtype.element_ty), mask=omask)
