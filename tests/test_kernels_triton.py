"""The Triton kernels (`kernels/lut_triton.py` via `qsd.packed.gpu`) against the pure-torch reference.

Without a GPU they run under Triton's interpreter, which must be chosen (TRITON_INTERPRET=1) before triton is
first imported; importing qsd already imports triton, so those checks run this file as a script in a subprocess.
"""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from qsd.errors import QsdError
from qsd.packed import gpu, pack_codes, reference

TRITON_MISSING = importlib.util.find_spec("triton") is None
needs_triton = pytest.mark.skipif(TRITON_MISSING, reason=f"triton is absent: {gpu.status()}")


def _case(bits: int, rows: int, k: int, shared: bool, seed: int, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (rows, k), generator=gen, dtype=torch.uint8)
    table = torch.randn(1 if shared else rows, 1 << bits, generator=gen)
    return pack_codes(codes, bits).to(device), table.to(device), gen


def _check_under_interpreter() -> list[str]:
    """Every kernel path on CPU tensors against the reference; returns the failures."""
    failures = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)

    for bits in range(2, 9):
        for shared in (False, True):
            case = f"bits={bits} shared={shared}"
            for k in (1, 64, 150):
                packed, table, _ = _case(bits, 70, k, shared, seed=bits * k)
                got = gpu.decode(packed, table, bits, k)
                expect(torch.equal(got, reference.lut_decode(packed, table, bits, k)), f"decode {case} k={k}")
            packed, table, gen = _case(bits, 70, 150, shared, seed=bits)
            for m in (1, 3, 16, 20):  # 20 > GEMV_MAX_M: decode, then torch.matmul
                x = torch.randn(m, 150, generator=gen)
                got, want = gpu.linear(x, packed, table, bits, 150), reference.lut_linear(x, packed, table, bits, 150)
                expect(torch.allclose(got, want, rtol=1e-5, atol=1e-5), f"linear {case} M={m}")
            xq = torch.randint(-127, 128, (20, 150), generator=gen, dtype=torch.int8)
            table_q = torch.randint(-127, 128, table.shape, generator=gen, dtype=torch.int8)
            got = gpu.mm_int8(xq, packed, table_q, bits, 150)
            expect(torch.equal(got, reference.lut_mm_int8(xq, packed, table_q, bits, 150)), f"mm_int8 {case}")
    # half-precision tables and activations (not bfloat16 activations: the interpreter's dot reads them as uint16)
    packed, table, gen = _case(5, 70, 150, False, seed=0)
    for x_dtype, table_dtype in [(torch.float16, torch.bfloat16), (torch.float32, torch.float16)]:
        x, table_h = torch.randn(3, 150, generator=gen).to(x_dtype), table.to(table_dtype)
        got, want = gpu.linear(x, packed, table_h, 5, 150), reference.lut_linear(x, packed, table_h, 5, 150)
        ok = got.dtype == x_dtype and torch.allclose(got.float(), want.float(), rtol=2e-3, atol=2e-3)
        expect(ok, f"linear x {x_dtype} table {table_dtype}")
    return failures


@needs_triton
def test_kernels_match_the_reference_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"interpreter checks failed:\n{run.stdout}\n{run.stderr[-4000:]}"
    assert run.stdout.strip().endswith("all kernel paths match the reference"), run.stdout


def test_status_says_whether_the_kernels_are_registered():
    assert gpu.status().startswith("registered for cuda" if not TRITON_MISSING else "not registered: triton")


def test_bad_input_is_refused_before_any_launch():
    packed, table, _ = _case(3, 4, 100, False, seed=0)
    with pytest.raises(QsdError, match=r"uint8 \[O, 96\]"):
        gpu.decode(packed, table, 3, 200)
    with pytest.raises(QsdError, match=r"\[1 or O=4, 8\]"):
        gpu.decode(packed, table[:2], 3, 100)
    with pytest.raises(QsdError, match=r"\[M, 100\]"):
        gpu.linear(torch.randn(2, 99), packed, table, 3, 100)
    with pytest.raises(QsdError, match="int8 activations"):
        gpu.mm_int8(torch.zeros(2, 100, dtype=torch.int8), packed, table, 3, 100)


@pytest.mark.gpu
@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("shared", [False, True])
def test_cuda_kernels_match_the_reference(bits, shared):
    rows, k = 300, 1000
    packed, table, gen = _case(bits, rows, k, shared, seed=bits, device="cuda")
    want = reference.lut_decode(packed.cpu(), table.cpu(), bits, k)
    assert torch.equal(gpu.decode(packed, table, bits, k).cpu(), want)
    assert torch.equal(torch.ops.qsd.lut_decode(packed, table, bits, k).cpu(), want)
    for m in (1, 3, 16, 64):
        x = torch.randn(m, k, generator=gen)
        expected = x @ want.t()
        torch.testing.assert_close(gpu.linear(x.cuda(), packed, table, bits, k).cpu(), expected, rtol=1e-4, atol=1e-4)
        got = torch.ops.qsd.lut_linear(x.cuda(), packed, table, bits, k).cpu()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    x = torch.randn(8, k, generator=gen, dtype=torch.bfloat16)
    got = torch.ops.qsd.lut_linear(x.cuda(), packed, table.bfloat16(), bits, k).cpu()
    want_bf16 = reference.lut_linear(x, packed.cpu(), table.cpu().bfloat16(), bits, k)
    torch.testing.assert_close(got, want_bf16, rtol=2e-2, atol=2e-2)
    xq = torch.randint(-127, 128, (20, k), generator=gen, dtype=torch.int8)
    table_q = torch.randint(-127, 128, tuple(table.shape), generator=gen, dtype=torch.int8)
    got = torch.ops.qsd.lut_mm_int8(xq.cuda(), packed, table_q.cuda(), bits, k).cpu()
    assert torch.equal(got, reference.lut_mm_int8(xq, packed.cpu(), table_q, bits, k))


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1 (the tests do)"
    failed = _check_under_interpreter()
    print("\n".join(failed) or "all kernel paths match the reference")
    sys.exit(1 if failed else 0)
