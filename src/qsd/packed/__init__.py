"""Real low-bit weights, in one package: the packed format (`format`), the layers that hold it (`modules`:
`QLinear`, `QConv`), export and reload of a whole denoiser (`export`), and the ops that compute with it —
`torch.ops.qsd.*` (`ops`), each with its pure-torch reference (`reference`) beside the fast kernels' bindings
(`cpu`: C++/OpenMP; `gpu`: Triton). The native sources are the top-level `kernels/` folder, installed with the
package (`kernel_files`). Importing this package registers the fast kernels."""

from qsd.packed import cpu, gpu, ops
from qsd.packed.export import export, load_quantized, memory_report, read_export
from qsd.packed.format import BLOCK, pack_codes, packed_row_bytes, planes, unpack_codes
from qsd.packed.modules import QConv, QLinear

cpu.register()
gpu.register()

__all__ = ["BLOCK", "QConv", "QLinear", "export", "load_quantized", "memory_report", "ops", "pack_codes",
           "packed_row_bytes", "planes", "read_export", "unpack_codes"]
