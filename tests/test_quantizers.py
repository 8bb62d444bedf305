import itertools

import numpy as np
import pytest
import torch

from qsd.quantizers import QuantizedWeight, quantize_weight, relative_error
from qsd.quantizers.kmeans import optimal_codebooks

METHODS = ("uaq", "kmeans_c", "kmeans_a")


def heavy_tailed(rows=48, cols=96, seed=0):
    g = np.random.default_rng(seed)
    scale = np.exp(g.normal(0, 0.5, size=(rows, 1)))
    return torch.tensor(g.standard_t(4, size=(rows, cols)) * scale / np.sqrt(cols), dtype=torch.float32)


@pytest.mark.parametrize("method", METHODS)
def test_error_falls_as_bits_grow(method):
    w = heavy_tailed()
    errors = [relative_error(w, q.dequantize()) for _, q in sorted(quantize_weight(w, method, range(2, 9)).items())]
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
    q = quantize_weight(w, "kmeans_c", [bits])[bits]
    assert torch.equal(q.dequantize(), w)


def test_uaq_reproduces_constant_and_zero_rows():
    w = torch.stack([torch.full((16,), 0.3), torch.zeros(16), torch.full((16,), -2.0)])
    assert torch.equal(quantize_weight(w, "uaq", [4])[4].dequantize(), w)


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
    ours = quantize_weight(w[None].float(), "uaq", [4])[4].dequantize()[0]
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
