import math
import warnings

import pytest
import torch

from qsd.packed import cpu, ops, pack_codes, reference


@pytest.fixture(scope="module")
def ext():
    module = cpu.extension()  # builds on first use (cached under build/kernels)
    if module is None:
        pytest.skip(f"CPU kernels unavailable: {cpu.status()}")
    return module


def _case(bits, rows, k, shared, seed):
    g = torch.Generator().manual_seed(seed)
    packed = pack_codes(torch.randint(0, 1 << bits, (rows, k), generator=g, dtype=torch.uint8), bits)
    table_rows = 1 if shared else rows
    table = torch.randn(table_rows, 1 << bits, generator=g)
    table_q = torch.randint(-128, 128, (table_rows, 1 << bits), generator=g, dtype=torch.int8)
    return g, packed, table, table_q


def test_ops_use_the_built_kernels(ext):
    assert cpu.status().startswith("built")


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("k", [70, 1152 + 5])
@pytest.mark.parametrize("shared", [False, True])
def test_lut_decode_is_bitwise_the_reference(ext, bits, k, shared):
    _, packed, table, _ = _case(bits, 11, k, shared, seed=bits * k)
    assert torch.equal(ops.lut_decode(packed, table, bits, k), reference.lut_decode(packed, table, bits, k))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lut_decode_keeps_a_reduced_table_dtype(ext, dtype):
    _, packed, table, _ = _case(4, 5, 130, False, seed=1)
    table = table.to(dtype)
    out = ops.lut_decode(packed, table, 4, 130)
    assert out.dtype == dtype
    assert torch.equal(out, reference.lut_decode(packed, table, 4, 130))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("m", [1, 3, 8, 33])
@pytest.mark.parametrize("shared", [False, True])
def test_lut_mm_int8_is_exact(ext, bits, m, shared):
    k = 200
    g, packed, _, table_q = _case(bits, 9, k, shared, seed=bits + 10 * m)
    xq = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    assert torch.equal(
        ops.lut_mm_int8(xq, packed, table_q, bits, k), reference.lut_mm_int8(xq, packed, table_q, bits, k)
    )


def test_lut_mm_int8_extreme_values_are_exact(ext):
    k = 1152
    _, packed, _, _ = _case(4, 6, k, False, seed=3)
    xq = torch.full((2, k), -128, dtype=torch.int8)
    xq[1] = 127
    table_q = torch.tensor([[-128, 127] * 8] * 6, dtype=torch.int8)
    assert torch.equal(ops.lut_mm_int8(xq, packed, table_q, 4, k), reference.lut_mm_int8(xq, packed, table_q, 4, k))


@pytest.mark.parametrize(
    ("bits", "m", "k"),
    [(b, m, k) for b in (3, 4) for m in (1, 2, 7, 64, 300) for k in (256, 1152 + 5)]
    + [(b, m, 333) for b in (2, 5, 6, 7, 8) for m in (1, 20)],
)
def test_lut_linear_matches_the_reference(ext, bits, m, k):
    g, packed, table, _ = _case(bits, 40, k, shared=bits == 5, seed=bits * m + k)
    x = torch.randn(m, k, generator=g)
    expected = reference.lut_linear(x.double(), packed, table.double(), bits, k).float()
    torch.testing.assert_close(ops.lut_linear(x, packed, table, bits, k), expected, rtol=1e-5, atol=1e-5 * math.sqrt(k))


def test_lut_linear_casts_back_to_the_activation_dtype_and_takes_strided_inputs(ext):
    g, packed, table, _ = _case(4, 16, 128, False, seed=7)
    x = torch.randn(128, 3, generator=g).t()  # non-contiguous [3, 128]
    out = ops.lut_linear(x.to(torch.bfloat16), packed, table.to(torch.float16), 4, 128)
    assert out.dtype == torch.bfloat16
    expected = reference.lut_linear(x.to(torch.bfloat16).float(), packed, table.to(torch.float16).float(), 4, 128)
    torch.testing.assert_close(out.float(), expected, rtol=2**-8, atol=1e-4)  # one bf16 rounding of the result


def test_bad_input_raises_a_clear_error(ext):
    _, packed, table, table_q = _case(4, 4, 64, False, seed=0)
    with pytest.raises(ValueError, match="bytes per row"):
        ops.lut_decode(packed, table, 3, 64)
    with pytest.raises(ValueError, match=r"table must be \[1 or O=4, 2\^bits=16\]"):
        ops.lut_decode(packed, table[:, :8], 4, 64)
    with pytest.raises(TypeError, match="packed codes must be a 2-D uint8"):
        ops.lut_decode(packed.to(torch.int32), table, 4, 64)
    with pytest.raises(TypeError, match="table must be Char"):
        ops.lut_mm_int8(torch.zeros(1, 64, dtype=torch.int8), packed, table, 4, 64)
    with pytest.raises(ValueError, match=r"activations must be \[M, k=64\]"):
        ops.lut_linear(torch.zeros(2, 65), packed, table, 4, 64)
    with pytest.raises(ValueError, match="bits must be in 2..8"):
        ext.lut_decode(packed, table, 9, 64)


def test_a_failed_build_falls_back_to_the_reference_with_one_warning(monkeypatch):
    def missing():
        raise FileNotFoundError("kernels/lut_cpu.cpp is missing")

    monkeypatch.setattr(cpu, "_state", {})
    monkeypatch.setattr(cpu, "source_path", missing)
    _, packed, table, _ = _case(4, 3, 64, False, seed=5)
    with pytest.warns(RuntimeWarning, match="using the pure-torch reference ops: FileNotFoundError"):
        out = ops.lut_decode(packed, table, 4, 64)
    assert torch.equal(out, reference.lut_decode(packed, table, 4, 64))
    assert cpu.status() == "failed: FileNotFoundError: kernels/lut_cpu.cpp is missing"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.lut_decode(packed, table, 4, 64)  # warned once only
