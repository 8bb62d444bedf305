"""The C++/OpenMP CPU kernels of the packed low-bit ops (`kernels/lut_cpu.cpp`, performance.md §6a).

The extension is compiled on first use with `torch.utils.cpp_extension.load` (-O3 -march=native -fopenmp,
about a minute) into `$QSD_KERNEL_CACHE/<hash>`, default `<project root>/build/kernels/<hash>`. The hash covers the
source, the flags, torch's and Python's versions and this CPU's feature flags, so a binary built for another
CPU or torch is never loaded; torch's lock file in that folder keeps concurrent processes from building it
twice. The source is compiled from a copy inside that folder: ninja rebuilds whenever the source's path in its
build file changes, so compiling a wheel's or another checkout's copy in place would rebuild the same binary.
`register()` makes these kernels the "cpu" implementations of `torch.ops.qsd.*`; when the build fails (no
compiler, say) the ops keep the pure-torch reference and one warning says why.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

from qsd.packed import ops, reference
from qsd.packed.kernel_files import kernel_source
from qsd.paths import project_root

_SOURCE_NAME = "lut_cpu.cpp"
_CFLAGS = ["-O3", "-march=native", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]
_KERNEL_FLOATS = (torch.float32, torch.float16, torch.bfloat16)  # computed in float32; float64 uses the reference

_lock = threading.Lock()
_state: dict[str, object] = {}  # "module" once built, "error" once failed


def source_path() -> Path:
    return kernel_source(_SOURCE_NAME)


def _cpu_flags() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line for line in lines if line.startswith("flags")), platform.machine())


def build_dir(source: Path) -> Path:
    """Cache folder of the binary for this source, these flags, this torch and Python, and this CPU."""
    key = "\n".join([source.read_text(), *_CFLAGS, *_LDFLAGS, torch.__version__, sys.version, _cpu_flags()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = os.environ.get("QSD_KERNEL_CACHE")
    return (Path(cache) if cache else project_root() / "build" / "kernels") / digest


def _source_copy(source: Path, directory: Path) -> Path:
    """`source` copied into its build folder (written once: the folder's name already hashes its text)."""
    copy = directory / source.name
    if not copy.exists():
        partial = directory / f".{source.name}.{os.getpid()}"
        partial.write_text(source.read_text())
        os.replace(partial, copy)
    return copy


def extension() -> ModuleType | None:
    """The compiled extension (built on the first call), or None when it cannot be built (warned once)."""
    with _lock:
        if not _state:
            try:
                from torch.utils.cpp_extension import load

                source = source_path()
                directory = build_dir(source)
                directory.mkdir(parents=True, exist_ok=True)
                _state["module"] = load(
                    name="qsd_lut_cpu",
                    sources=[str(_source_copy(source, directory))],
                    extra_cflags=_CFLAGS,
                    extra_ldflags=_LDFLAGS,
                    build_directory=str(directory),
                )
            except Exception as error:  # any build or load failure falls back to the reference
                lines = str(error).strip().splitlines()
                _state["error"] = f"{type(error).__name__}: {lines[-1] if lines else ''}"
                warnings.warn(
                    f"qsd CPU kernels unavailable, using the pure-torch reference ops: {_state['error']}",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return _state.get("module")  # type: ignore[return-value]


def status() -> str:
    """'built (avx512|scalar): <folder>', 'failed: <reason>' or 'not built yet (builds on first use)'."""
    if "module" in _state:
        module = _state["module"]
        return f"built ({module.simd}): {Path(module.__file__).parent}"
    if "error" in _state:
        return f"failed: {_state['error']}"
    return "not built yet (builds on first use)"


def _float32(t: torch.Tensor) -> torch.Tensor:
    return t.float().contiguous() if t.dtype in _KERNEL_FLOATS else t.contiguous()


def _kernel_takes(*tensors: torch.Tensor) -> bool:
    return all(t.dtype in _KERNEL_FLOATS or not t.is_floating_point() for t in tensors)


def lut_decode(packed: torch.Tensor, table: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    ext = extension()
    if ext is None or not _kernel_takes(table):
        return reference.lut_decode(packed, table, bits, k)
    return ext.lut_decode(packed.contiguous(), _float32(table), bits, k).to(table.dtype)


def lut_linear(x: torch.Tensor, packed: torch.Tensor, table: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    ext = extension()
    if ext is None or not _kernel_takes(x, table):
        return reference.lut_linear(x, packed, table, bits, k)
    return ext.lut_linear(_float32(x), packed.contiguous(), _float32(table), bits, k).to(x.dtype)


def lut_mm_int8(xq: torch.Tensor, packed: torch.Tensor, table_q: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    ext = extension()
    if ext is None:
        return reference.lut_mm_int8(xq, packed, table_q, bits, k)
    return ext.lut_mm_int8(xq.contiguous(), packed.contiguous(), table_q.contiguous(), bits, k)


def register() -> None:
    """Make these kernels the "cpu" implementations of `torch.ops.qsd.*` (the build waits for the first call)."""
    ops.lut_decode.register_kernel("cpu", lut_decode)
    ops.lut_linear.register_kernel("cpu", lut_linear)
    ops.lut_mm_int8.register_kernel("cpu", lut_mm_int8)
