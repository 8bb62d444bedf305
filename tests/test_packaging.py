"""The kernel sources ship inside the wheel (as `qsd.packed.kernel_sources`) and an installed, non-editable qsd
finds and runs them: the C++ kernel through `importlib.resources`, the Triton kernels as a module."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FILES = ("pyproject.toml", "setup.py", "README.md", "src", "kernels")
LOAD_KERNELS = """
import json, torch, qsd
from qsd.packed import cpu, gpu, pack_codes, reference
from qsd.packed.kernel_files import kernel_source
codes = torch.randint(0, 8, (5, 70), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
packed, table, x = pack_codes(codes, 3), torch.randn(5, 8), torch.randn(3, 70)
ours = torch.ops.qsd.lut_linear(x, packed, table, 3, 70)
print(json.dumps({"qsd": qsd.__file__, "cpp": str(kernel_source("lut_cpu.cpp")), "cpu": cpu.status(),
                  "triton": gpu._kernels().__file__,
                  "max_diff": (ours - reference.lut_linear(x, packed, table, 3, 70)).abs().max().item()}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the package's files (no stale build/ of the checkout gets in)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in PACKAGE_FILES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info")}
                                            if (ROOT / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=300)
    return next(out.glob("qsd-*.whl"))


def test_the_wheel_contains_the_kernel_sources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"qsd/packed/kernel_sources/{n}" for n in ("__init__.py", "lut_cpu.cpp", "lut_triton.py")}
    assert expected <= names


def test_an_installed_wheel_builds_and_runs_its_kernels(wheel, tmp_path):
    """... and reuses the binary the checkout built from the same source (no second compile)."""
    from qsd.packed import cpu

    checkout_binary = Path(cpu.extension().__file__)
    built_at = checkout_binary.stat().st_mtime_ns
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip install puts into site-packages
    env = os.environ | {"PYTHONPATH": str(site), "QSD_KERNEL_CACHE": str(ROOT / "build" / "kernels")}
    run = subprocess.run([sys.executable, "-c", LOAD_KERNELS], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(report["qsd"]).is_relative_to(site), "the wheel's qsd was imported, not the checkout's"
    assert Path(report["cpp"]) == site / "qsd" / "packed" / "kernel_sources" / "lut_cpu.cpp"
    assert Path(report["triton"]).is_relative_to(site)
    assert report["cpu"].startswith("built"), report["cpu"]
    assert report["cpu"].endswith(str(checkout_binary.parent)), "the wheel built into another folder"
    assert checkout_binary.stat().st_mtime_ns == built_at, "the wheel compiled the same source again"
    assert report["max_diff"] < 1e-5
