import itertools

import numpy as np
import pytest
import torch
from margins import below

from qsd.errors import UnsupportedSpecError
from qsd.packed.modules import affine_from_table
from qsd.quantizers import QuantizedWeight, QuantizerSettings, quantize_weight, relative_error
from qsd.quantizers.base import PARAM_DTYPES, round_to_param
from qsd.quantizers.kmeans import _histogram16, _sorted, optimal_codebooks
from qsd.quantizers.uaq import DEFAULT_CLIP_RATIOS, _abs_pow

METHODS = ("uaq", "kmeans_c", "kmeans_a")
FP32 = QuantizerSettings(param_dtype="float32")
"""Tables kept at float32: the quantizers' own arithmetic, for tests against exact references."""


def heavy_tailed(rows=48, cols=96, seed=0):
    g = np.random.default_rng(seed)
    scale = np.exp(g.normal(0, 0.5, size=(rows, 1)))
    return torch.tensor(g.standard_t(4, size=(rows, cols)) * scale / np.sqrt(cols), dtype=torch.float32)


@pytest.mark.parametrize("method", METHODS)
def test_error_falls_as_bits_grow(method):
    w = heavy_tailed()
    fitted = quantize_weight(w, method, range(2, 9), FP32)
    errors = [relative_error(w, q.dequantize()) for _, q in sorted(fitted.items())]
    assert all(a > b or a == b == 0 for a, b in itertools.pairwise(errors)), errors  # 0 = exact
    assert errors[-1] < 1e-3


@pytest.mark.parametrize("bits", [3, 4])
def test_kmeans_c_never_worse_than_kmeans_a(bits):
    w = heavy_tailed(seed=bits)
    c = quantize_weight(w, "kmeans_c", [bits])[bits]
    a = quantize_weight(w, "kmeans_a", [bits])[bits]
    assert relative_error(w, c.dequantize()) <= relative_error(w, a.dequantize())


def brute_force_sse(x, k):
    x = np.sort(x)
    best = np.inf
    for cuts in itertools.combinations(range(1, len(x)), k - 1):
        best = min(best, sum(((s - s.mean()) ** 2).sum() for s in np.split(x, cuts)))
    return best


def test_codebooks_are_optimal():
    rows = torch.tensor(np.random.default_rng(1).standard_t(3, size=(12, 10)))
    books = optimal_codebooks(rows, [2, 4])
    for r in range(rows.shape[0]):
        x = rows[r].numpy()
        for a, k in enumerate([2, 4]):
            sse = ((x[:, None] - books[r, a, :k].numpy()[None]) ** 2).min(1).sum()
            assert sse == pytest.approx(brute_force_sse(x, k), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("bits", [3, 4])
def test_kmeans_c_reproduces_rows_with_few_distinct_values(bits):
    g = torch.Generator().manual_seed(bits)
    values = torch.randn(8, 1 << bits, generator=g)
    idx = torch.randint(0, 1 << bits, (8, 40), generator=g)
    w = torch.gather(values, 1, idx)  # each row has <= 2^b distinct values
    w[0] = 0.7  # a constant row
    q = quantize_weight(w, "kmeans_c", [bits], FP32)[bits]
    assert torch.equal(q.dequantize(), w)
    q16 = quantize_weight(w.half().float(), "kmeans_c", [bits])[bits]  # float16 values: exact at FP16 tables too
    assert torch.equal(q16.dequantize(), w.half().float())


def test_uaq_reproduces_constant_and_zero_rows():
    w = torch.stack([torch.full((16,), 0.3), torch.zeros(16), torch.full((16,), -2.0)])
    assert torch.equal(quantize_weight(w, "uaq", [4], FP32)[4].dequantize(), w)


def test_uaq_matches_the_paper_procedure_on_one_row():
    """Per-channel shrink search 0..90 %, Lp (p=2.4) score, asymmetric grid (code.md §1.1)."""
    w = heavy_tailed(rows=1, cols=64)[0].double()
    best = None
    for i in range(10):
        hi, lo = w.max() * (1 - i / 10), w.min() * (1 - i / 10)
        delta = (hi - lo) / 15
        z = torch.round(-lo / delta)
        xq = (torch.clamp(torch.round(w / delta) + z, 0, 15) - z) * delta
        score = (w - xq).abs().pow(2.4).mean()
        if best is None or score < best[0]:
            best = (score, xq)
    ours = quantize_weight(w[None].float(), "uaq", [4], FP32)[4].dequantize()[0]
    torch.testing.assert_close(ours.double(), best[1], rtol=0, atol=1e-6)


def test_codes_are_compact_and_shapes_kept():
    w = torch.randn(6, 3, 2, 2)
    for method in METHODS:
        q = quantize_weight(w, method, [3])[3]
        assert q.codes.dtype == torch.uint8 and q.codes.shape == (6, 12) and int(q.codes.max()) < 8
        assert q.dequantize().shape == w.shape
        assert q.lut.shape == ((1, 8) if method == "kmeans_a" else (6, 8))


def test_size_accounting_matches_hand_computation():
    """A Linear [O=10, I=20] at P=16 bits: 200 weights."""
    w = torch.randn(10, 20)
    q = {m: quantize_weight(w, m, [3, 4]) for m in METHODS}
    assert q["uaq"][4].size_bits(16) == 200 * 4 + 2 * 16 * 10  # indices + scale & zero per row
    assert q["uaq"][3].size_bits(16) == 200 * 3 + 2 * 16 * 10
    assert q["kmeans_c"][4].size_bits(16) == 200 * 4 + 16 * 16 * 10  # a 16-entry codebook per row
    assert q["kmeans_c"][3].size_bits(16) == 200 * 3 + 8 * 16 * 10
    assert q["kmeans_a"][4].size_bits(16) == 200 * 4 + 16 * 16  # one codebook
    assert q["kmeans_a"][3].size_bits(32) == 200 * 3 + 8 * 32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_round_to_param_is_the_dtype_conversion(dtype):
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(20000, generator=g) * 10.0 ** torch.randint(-9, 4, (20000,), generator=g),
                        torch.tensor([0.0, -0.0, 1e-8, -3e-8, 6.1e-5, 65000.0, 1.0 + 2**-11, 1.0 + 3 * 2**-11])])
    mantissa, min_exp = PARAM_DTYPES[str(dtype).removeprefix("torch.")]
    ours = torch.tensor([round_to_param(np.float32(v), mantissa, min_exp) for v in values.tolist()])
    assert torch.equal(ours, values.to(dtype).float())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("param_dtype", ["float16", "bfloat16"])
def test_tables_are_stored_at_the_parameter_precision(method, param_dtype):
    """Scales, zero points and codebooks are rounded to the model's parameter precision before codes are
    assigned, so the looked-up values are exactly what a deployment stores (paper §3: FP16)."""
    w = heavy_tailed(24, 80, seed=9)
    dtype = getattr(torch, param_dtype)
    for q in quantize_weight(w, method, [3, 4], QuantizerSettings(param_dtype=param_dtype)).values():
        stored = q.lut if method != "uaq" else affine_from_table(q.lut, q.bits)  # UAQ stores (Δ, z)
        assert torch.equal(stored.to(dtype).float(), stored)
        assert q.error == pytest.approx(relative_error(w, q.dequantize()), rel=1e-6)
        table = q.lut if q.lut.shape[0] == w.shape[0] else q.lut.expand(w.shape[0], -1)
        nearest = (w[:, :, None] - table[:, None, :]).abs().min(2).values
        assert torch.allclose((q.dequantize() - w).abs(), nearest) or method == "uaq"  # K-Means: nearest centroid


def test_parameter_precision_is_checked():
    with pytest.raises(UnsupportedSpecError, match="param_dtype"):
        QuantizerSettings(param_dtype="float8")


def test_relative_error_definition():
    w = torch.tensor([[1.0, -1.0, 2.0, 0.0]])
    approx = torch.tensor([[1.0, -1.0, 1.0, 0.0]])
    assert relative_error(w, approx) == pytest.approx(1 / 6)
    assert isinstance(relative_error(w, approx), float)


def test_quantized_weight_is_frozen():
    q = quantize_weight(torch.randn(2, 4), "uaq", [4])[4]
    assert isinstance(q, QuantizedWeight)
    with pytest.raises(AttributeError):
        q.bits = 3


# ---------------------------------------------------------------------------------- fast kernels
def fp16_rows(rows, cols, seed):
    """Heavy-tailed rows rounded to float16 values (as the fp16 checkpoints), as float32."""
    return heavy_tailed(rows, cols, seed).half().float()


def sse_of(rows, books):
    """Per-row SSE of the nearest-centroid assignment to float64 `books` [R, K]."""
    return ((rows.double()[:, :, None] - books[:, None, :]) ** 2).min(2).values.sum(1)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_exact_dp_is_optimal_with_repeated_values(k):
    rows = torch.tensor(np.random.default_rng(k).integers(-3, 4, size=(10, 11)) * 0.25)
    books = optimal_codebooks(rows, [k])[:, 0, :k]
    for r in range(rows.shape[0]):
        sse = float(sse_of(rows[r : r + 1], books[r : r + 1])[0])
        assert sse == pytest.approx(brute_force_sse(rows[r].numpy(), k), rel=1e-9, abs=1e-12)


@pytest.mark.comparison
def test_coarse_to_fine_gap_to_the_optimum_is_small():
    """The default K-Means-C solver is not guaranteed optimal: bound its measured gap (kmeans1d docstring)."""
    rows = fp16_rows(64, 1152, seed=3)
    exact = optimal_codebooks(rows, [8, 16], "exact")
    fast = optimal_codebooks(rows, [8, 16], "coarse_to_fine")
    for a, k in enumerate([8, 16]):
        gap = sse_of(rows, fast[:, a, :k]) / sse_of(rows, exact[:, a, :k]) - 1
        assert gap.min() > -1e-12  # the exact DP is optimal
        below(gap.mean(), 2e-4, 0.5, f"mean gap to the optimum at K={k} vs 2e-4")
        below(gap.max(), 1e-2, 0.5, f"largest gap to the optimum at K={k} vs 1e-2")
    small = fp16_rows(8, 24, seed=4)  # ≤ 2·K cells: solved exactly
    assert torch.equal(optimal_codebooks(small, [8], "coarse_to_fine"), optimal_codebooks(small, [8], "exact"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_kmeans_a_histogram_equals_the_exact_dp_on_the_raw_values(dtype):
    w = heavy_tailed(40, 96, seed=5).to(dtype).float()
    books = optimal_codebooks(w.reshape(1, -1), [8, 16])[0]
    q = quantize_weight(w, "kmeans_a", [3, 4], FP32)
    for a, b in enumerate([3, 4]):
        torch.testing.assert_close(q[b].lut[0], books[a, : 1 << b].float(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_recorded_error_is_the_relative_error(method):
    w = heavy_tailed(30, 70, seed=6)
    for q in quantize_weight(w, method, [3, 4]).values():
        assert q.error == pytest.approx(relative_error(w, q.dequantize()), rel=1e-6)


def test_kmeans_solver_setting():
    with pytest.raises(UnsupportedSpecError, match="kmeans solver"):
        QuantizerSettings(kmeans_solver="lloyd")
    w = fp16_rows(16, 512, seed=7)
    exact = quantize_weight(w, "kmeans_c", [4], QuantizerSettings(kmeans_solver="exact"))[4]
    assert exact.error <= quantize_weight(w, "kmeans_c", [4])[4].error * (1 + 1e-6)


def reference_uaq(w, bits, p=2.4):
    """The row-vectorised float32 torch implementation of the search (code.md §1.1): scores and LUTs."""
    levels = 1 << bits
    xmax, xmin = w.amax(1, keepdim=True), w.amin(1, keepdim=True)
    scores, luts = [], []
    for r in DEFAULT_CLIP_RATIOS:
        hi, lo = xmax * (1 - r), xmin * (1 - r)
        delta = (hi - lo) / (levels - 1)
        delta = torch.where(delta > 0, delta, torch.where(hi != 0, hi.abs(), torch.ones_like(hi)))
        zero = torch.round(-lo / delta)
        q = torch.clamp(torch.round(w / delta) + zero, 0, levels - 1)
        scores.append(((q - zero) * delta - w).double().abs().pow(p).mean(1))
        luts.append((torch.arange(levels) - zero) * delta)
    return torch.stack(scores, 1), torch.stack(luts, 1)


def test_uaq_kernel_matches_the_reference_search():
    w = fp16_rows(96, 300, seed=8)
    w[0], w[1] = 0.0, 0.25  # degenerate rows
    for bits in (3, 4):
        scores, luts = reference_uaq(w, bits)
        q = quantize_weight(w, "uaq", [bits], FP32)[bits]
        best = scores.min(1).values
        ours = (q.dequantize() - w).double().abs().pow(2.4).mean(1)
        assert (ours <= best * (1 + 1e-5) + 1e-30).all()
        second = scores.sort(1).values[:, 1]
        clear = second > best * (1 + 1e-4)  # rows whose winner is not a near-tie: the very same grid
        assert clear.sum() > 80
        torch.testing.assert_close(q.lut[clear], luts[clear, scores.argmin(1)[clear]], rtol=0, atol=0)


def test_abs_pow_is_accurate():
    e = torch.cat([torch.logspace(-30, 3, 2001), -torch.logspace(-20, 1, 999), torch.zeros(1)]).float().numpy()
    ours = np.array([_abs_pow(np.float32(v), np.float32(2.4)) for v in e], dtype=np.float64)
    ref = np.abs(e.astype(np.float64)) ** 2.4
    ok = ref > 1e-37  # below float32's normal range both are ~0
    assert np.all(np.abs(ours[ok] / ref[ok] - 1) < 1e-5) and np.all(ours[~ok] < 1e-37)


def test_radix_sort_sorts_float32_rows():
    g = np.random.default_rng(9)
    cases = [
        g.standard_normal(1000).astype(np.float32),
        g.standard_normal(1000).astype(np.float16).astype(np.float32),
        np.array([0.0, -0.0, 1e-45, -1e-45, 3.0, -3.0, 1e30, -1e30], dtype=np.float32),
        np.full(17, -2.5, dtype=np.float32),
    ]
    for x in cases:
        assert np.array_equal(_sorted(x), np.sort(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_16bit_value_narrows_to_its_pattern(dtype):
    patterns = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16)
    values = patterns.view(dtype).float()
    finite = torch.isfinite(values)
    out = np.empty(int(finite.sum()), dtype=np.uint16)
    counts = _histogram16(values[finite].numpy(), dtype == torch.bfloat16, out)
    assert counts is not None and counts.sum() == out.size
    assert np.array_equal(out, patterns[finite].numpy().view(np.uint16))
    inexact = np.array([1 + 2.0**-12], dtype=np.float32)
    assert _histogram16(inexact, dtype == torch.bfloat16, np.empty(1, dtype=np.uint16)) is None


def test_dequantize_matches_torch_gather():
    codes = torch.randint(0, 16, (5, 9), dtype=torch.uint8)
    per_row, shared = torch.randn(5, 16), torch.randn(1, 16)
    q = QuantizedWeight("kmeans_c", 4, codes, per_row, (5, 9))
    assert torch.equal(q.dequantize(), torch.gather(per_row, 1, codes.long()))
    q = QuantizedWeight("kmeans_a", 4, codes, shared, (5, 3, 3))
    assert torch.equal(q.dequantize(torch.float16), shared[0][codes.long()].reshape(5, 3, 3).half())
