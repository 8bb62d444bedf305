"""The package list: every package under src/, plus the top-level kernels/ folder shipped as
qsd.packed.kernel_sources (the mapping and package data are in pyproject.toml's [tool.setuptools])."""

from setuptools import find_packages, setup

setup(packages=[*find_packages("src"), "qsd.packed.kernel_sources"])
