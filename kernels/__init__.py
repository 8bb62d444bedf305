"""The native kernel sources of `qsd.packed` (C++/OpenMP `lut_cpu.cpp`, Triton `lut_triton.py`). This folder is
installed as the package `qsd.packed.kernel_sources` (pyproject.toml), where `qsd.packed` finds them at run time."""
