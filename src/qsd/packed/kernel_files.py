"""Where the native kernel sources are: the top-level `kernels/` folder, shipped inside the package as
`qsd.packed.kernel_sources` (pyproject.toml's [tool.setuptools]), so an editable checkout and an installed wheel
find them the same way, through `importlib.resources`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from qsd.errors import MissingFileError

SOURCES_PACKAGE = "qsd.packed.kernel_sources"


def kernel_source(name: str) -> Path:
    """The file `kernels/<name>` as installed with qsd (a real file: the C++ compiler and Triton read it)."""
    resource = resources.files(SOURCES_PACKAGE) / name
    if not resource.is_file():
        raise MissingFileError(
            f"the kernel source {name!r} is not installed with qsd ({SOURCES_PACKAGE}); reinstall qsd "
            "(pip install -e . from a checkout, or the wheel), which copies kernels/ into the package"
        )
    return Path(str(resource))
