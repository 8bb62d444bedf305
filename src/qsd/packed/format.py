"""The packed low-bit weight format shared by every method and kernel (performance.md §6a).

A quantized weight `[O, K]` is stored as b-bit codes plus a lookup table (K-Means-C: one codebook per output
row; K-Means-A: one table for the tensor; UAQ: the affine table s·(j − z)). Codes are packed at exactly b bits
per weight, in blocks of 64 codes (a row is padded with code 0 up to a multiple of 64):

  1. b is split into power-of-two *planes*, widest first, low code bits in the widest plane:
     4 → [4], 3 → [2, 1], 5 → [4, 1], 6 → [4, 2], 7 → [4, 2, 1], 2 → [2], 8 → [8].
  2. A p-bit plane of a block takes 8·p bytes; code i of the block (0..63) sits in byte i mod 8p at bit
     position p·(i div 8p). So a 4-bit plane holds codes 0..31 in its low and 32..63 in its high nibbles, and
     one shift plus one mask per plane yields a run of consecutive codes (what SIMD and Triton decoders want).
  3. A block is its planes in order (8·b bytes), a row its blocks in order: packed `[O, K_pad·b/8]` uint8.

Notation: O output rows, K codes per row, K_pad = K rounded up to BLOCK, b bits, p plane width.
"""

from __future__ import annotations

import torch

from qsd.errors import QsdError

BLOCK = 64
SUPPORTED_BITS = range(2, 9)


def planes(bits: int) -> list[int]:
    """Plane widths of a b-bit code, widest (lowest code bits) first."""
    if bits not in SUPPORTED_BITS:
        raise QsdError(f"packed codes support 2..8 bits; got {bits}")
    return [p for p in (8, 4, 2, 1) if bits & p]


def padded(k: int) -> int:
    """K rounded up to a whole number of blocks."""
    return -(-k // BLOCK) * BLOCK


def packed_row_bytes(k: int, bits: int) -> int:
    return padded(k) * bits // 8


def check_packed(packed: torch.Tensor, bits: int, k: int, table: torch.Tensor | None = None) -> None:
    """Refuse a bit width outside 2..8, and packed codes (and a table) of the wrong dtype or shape."""
    planes(bits)
    rows, row_bytes = packed.shape[0], packed_row_bytes(k, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != row_bytes:
        raise QsdError(f"packed codes for K={k} at {bits} bits are uint8 [O, {row_bytes}]; "
                       f"got {packed.dtype} {tuple(packed.shape)}")
    if table is not None and (table.dim() != 2 or table.shape[0] not in (1, rows) or table.shape[1] != 1 << bits):
        raise QsdError(f"a {bits}-bit table is [1 or O={rows}, {1 << bits}]; got {tuple(table.shape)} "
                       "(one table per output row, or one shared table)")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes `[O, K]` (values < 2^b) → packed uint8 `[O, K_pad·b/8]`."""
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise QsdError(f"pack_codes takes a 2-D uint8 tensor of codes; got {codes.dtype} {tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) >= 1 << bits:
        raise QsdError(f"a code is {int(codes.max())}, which does not fit in {bits} bits")
    rows, k = codes.shape
    blocks = torch.zeros(rows, padded(k), dtype=torch.uint8, device=codes.device)
    blocks[:, :k] = codes
    blocks = blocks.view(rows, -1, BLOCK)  # [O, n_blocks, 64]
    out, shift = [], 0
    for p in planes(bits):
        field = (blocks >> shift) & ((1 << p) - 1)
        slots = field.view(rows, -1, 8 // p, 8 * p)  # slot s holds codes s·8p .. s·8p + 8p - 1
        byte = torch.zeros_like(slots[:, :, 0])
        for s in range(8 // p):
            byte |= slots[:, :, s] << (p * s)
        out.append(byte)
        shift += p
    return torch.cat(out, dim=2).reshape(rows, -1).contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of `pack_codes`: packed `[O, K_pad·b/8]` → uint8 codes `[O, K]`."""
    check_packed(packed, bits, k)
    rows = packed.shape[0]
    blocks = packed.view(rows, -1, 8 * bits)
    codes = torch.zeros(rows, blocks.shape[1], BLOCK, dtype=torch.uint8, device=packed.device)
    offset, shift = 0, 0
    for p in planes(bits):
        byte = blocks[:, :, offset : offset + 8 * p]
        field = torch.cat([(byte >> (p * s)) & ((1 << p) - 1) for s in range(8 // p)], dim=2)
        codes |= field << shift
        offset += 8 * p
        shift += p
    return codes.view(rows, -1)[:, :k].contiguous()
