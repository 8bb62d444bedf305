"""Packed low-bit weights and the ops that compute with them (`torch.ops.qsd.*`)."""

from qsd.kernels import ops
from qsd.kernels.packing import BLOCK, pack_codes, packed_row_bytes, planes, unpack_codes

__all__ = ["BLOCK", "ops", "pack_codes", "packed_row_bytes", "planes", "unpack_codes"]
