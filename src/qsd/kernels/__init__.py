"""Packed low-bit weights and the ops that compute with them (`torch.ops.qsd.*`)."""

from qsd.kernels import cpu, gpu, ops
from qsd.kernels.packing import BLOCK, pack_codes, packed_row_bytes, planes, unpack_codes

cpu.register()
gpu.register()

__all__ = ["BLOCK", "ops", "pack_codes", "packed_row_bytes", "planes", "unpack_codes"]
