"""qsd.reference: the PixArt-α layer set and the original's quantizers, pinned on small inputs (code.md §1)."""

import pytest
import torch
from margins import below

from qsd.errors import InvalidSettingError, UnsupportedSpecError
from qsd.quantizers import QuantizerSettings, quantize_weight, relative_error
from qsd.reference import (
    original_kmeans_a,
    original_kmeans_c,
    original_quantize,
    original_uaq,
    pixart_alpha_layers,
    pixart_alpha_weight_shapes,
)
from qsd.reference.original_quantizers import original_uaq_channel
from qsd.reference.pixart_alpha import FP16_BYTES, N_LAYERS

BITS = (3, 4)
FLOAT32 = QuantizerSettings(param_dtype="float32")
EXACT32 = QuantizerSettings(param_dtype="float32", kmeans_solver="exact")


# ------------------------------------------------------------------------------------------- PixArt-α
def test_pixart_alpha_layer_table_matches_the_original():
    shapes = pixart_alpha_weight_shapes()
    assert len(shapes) == N_LAYERS == 287  # code.md §1.6
    # code.md §1.4: the original's FP_SIZE for PixArt-α is 2 bytes per weight of exactly these layers
    assert 2 * sum(torch.Size(s).numel() for s in shapes.values()) == FP16_BYTES == 1_220_456_448
    assert shapes["pos_embed.proj"] == (1152, 4, 2, 2)
    assert shapes["adaln_single.emb.timestep_embedder.linear_1"] == (1152, 256)
    assert shapes["adaln_single.linear"] == (6 * 1152, 1152)
    assert shapes["caption_projection.linear_1"] == (1152, 4096)
    assert shapes["caption_projection.linear_2"] == (1152, 1152)
    assert shapes["transformer_blocks.27.attn2.to_out.0"] == (1152, 1152)
    assert shapes["transformer_blocks.0.ff.net.0.proj"] == (4608, 1152)
    assert shapes["transformer_blocks.13.ff.net.2"] == (1152, 4608)
    assert shapes["proj_out"] == (32, 1152)
    per_block = {n.split(".", 2)[2] for n in shapes if n.startswith("transformer_blocks.5.")}
    attn = {f"attn{i}.to_{p}" for i in (1, 2) for p in ("q", "k", "v", "out.0")}
    assert per_block == attn | {"ff.net.0.proj", "ff.net.2"}
    assert "transformer_blocks.28.attn1.to_q" not in shapes


@pytest.mark.slow  # importing diffusers takes ~5 s on its own
def test_pixart_alpha_names_and_order_match_diffusers():
    from diffusers import PixArtTransformer2DModel

    from qsd.layers import QUANTIZABLE_TYPES

    with torch.device("meta"):  # PixArt-XL-2-512's config, 2 of its 28 blocks
        real = PixArtTransformer2DModel(
            num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=2,
            cross_attention_dim=1152, caption_channels=4096, sample_size=64, patch_size=2,
            norm_type="ada_norm_single", num_embeds_ada_norm=1000, use_additional_conditions=False,
        )
    expected = [(n, tuple(m.weight.shape)) for n, m in real.named_modules() if isinstance(m, QUANTIZABLE_TYPES)]
    assert list(pixart_alpha_weight_shapes(2).items()) == expected


def test_pixart_alpha_layers_dtype_and_block_count():
    model = pixart_alpha_layers(1, dtype=torch.float32, device="meta")
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    assert len(layers) == 7 + 10
    assert {m.weight.dtype for m in layers} == {torch.float32}
    assert pixart_alpha_layers(0, device="meta").transformer_blocks.__len__() == 0
    for bad in (29, -1, 2.0):
        with pytest.raises(InvalidSettingError, match="28 blocks"):
            pixart_alpha_layers(bad, device="meta")


# ---------------------------------------------------------------------------------- original quantizers
@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    """A seeded [8, 64] Gaussian weight with a different scale per output channel."""
    g = torch.Generator().manual_seed(7)
    return torch.randn(8, 64, generator=g) * torch.exp(0.5 * torch.randn(8, 1, generator=g))


def row_sse(w: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    return (w.double() - approx.double()).square().reshape(w.shape[0], -1).sum(1)


@pytest.mark.comparison
@pytest.mark.parametrize("method", ["uaq", "kmeans_c", "kmeans_a"])
def test_original_levels_error_and_determinism(weight, method):
    errors = {}
    for b in BITS:
        x_hat = original_quantize(method, weight, b, seed=0)
        assert x_hat.shape == weight.shape and x_hat.dtype == weight.dtype
        assert torch.isfinite(x_hat).all()
        groups = [weight.reshape(-1)] if method == "kmeans_a" else list(weight)
        for x, q in zip(groups, [x_hat.reshape(-1)] if method == "kmeans_a" else list(x_hat), strict=True):
            assert q.unique().numel() <= 2**b  # at most 2^b levels per channel (per tensor for K-Means-A)
            spread = x.max() - x.min()
            assert q.min() >= x.min() - spread / 2**b and q.max() <= x.max() + spread / 2**b
        errors[b] = relative_error(weight, x_hat)
        assert torch.equal(x_hat, original_quantize(method, weight, b, seed=0))  # same seed, same result
    # a Gaussian's optimal (Lloyd-Max) distortion is 0.0345 at 3 bits and 0.0095 at 4 bits
    below(errors[4], errors[3], 0.2, "4-bit error vs 3-bit error")
    below(errors[3], 0.07, 0.2, "3-bit error vs 0.07")
    below(errors[4], 0.02, 0.2, "4-bit error vs 0.02")


def test_original_dispatch_matches_the_named_functions(weight):
    assert torch.equal(original_quantize("uaq", weight, 3), original_uaq(weight, 3))
    assert torch.equal(original_quantize("kmeans_c", weight, 3, seed=1), original_kmeans_c(weight, 3, seed=1))
    assert torch.equal(original_quantize("kmeans_a", weight, 3, seed=1), original_kmeans_a(weight, 3, seed=1))


def test_original_uaq_equals_ours_at_float32_parameters(weight):
    """Same algorithm: with Δ and z kept at float32 (the weight's dtype), ours gives the original's x̂ exactly."""
    ours = quantize_weight(weight, "uaq", BITS, FLOAT32)
    for b in BITS:
        assert torch.equal(ours[b].dequantize(), original_uaq(weight, b))


def test_original_uaq_differs_from_ours_by_fp16_parameters(weight):
    """Ours rounds Δ and z to FP16 by default, the original does not: x̂ moves by a fraction of a step only."""
    ours = quantize_weight(weight, "uaq", BITS)
    for b in BITS:
        theirs, mine = original_uaq(weight, b), ours[b].dequantize()
        assert not torch.equal(theirs, mine)
        step = (weight.max(1, keepdim=True).values - weight.min(1, keepdim=True).values) / (2**b - 1)
        assert ((theirs - mine).abs() <= step / 2).all()
        assert relative_error(weight, mine) == pytest.approx(relative_error(weight, theirs), rel=0.02)
        deltas = ours[b].lut[:, 1] - ours[b].lut[:, 0]
        assert torch.equal(deltas, deltas.half().float())  # ours: Δ is an FP16 value


def test_original_uaq_channel_picks_the_clipped_range_for_an_outlier():
    x = torch.cat([torch.linspace(-1, 1, 63), torch.tensor([10.0])])
    delta = 11.0 / 7  # the full range (ratio 0) at 3 bits: Δ = (10 - (-1)) / 7, z = round(1 / Δ) = 1
    full = (torch.clamp(torch.round(x / delta) + 1, 0, 7) - 1) * delta
    x_hat = original_uaq_channel(x, 3)
    # ratio 0.1 wins: Δ' = 0.9·11/7, z = 1, so the outlier lands on the top level (7 - 1)·Δ' ≈ 8.49
    assert x_hat[-1].item() == pytest.approx(6 * 0.9 * delta, rel=1e-6)
    score = lambda y: (x - y).abs().pow(2.4).mean()  # noqa: E731
    assert score(x_hat) < score(full)


def test_original_kmeans_c_never_beats_the_exact_dp(weight):
    """Lloyd from k-means++ reaches a local optimum; ours (exact DP, float32 centroids) is optimal per channel."""
    ours = quantize_weight(weight, "kmeans_c", BITS, EXACT32)
    for b in BITS:
        theirs, best = row_sse(weight, original_kmeans_c(weight, b, seed=0)), row_sse(weight, ours[b].dequantize())
        assert (best <= theirs * (1 + 1e-6)).all()
        assert (best < theirs * (1 - 1e-3)).any()  # and it is strictly better on some channels


def test_original_kmeans_a_never_beats_the_exact_dp(weight):
    ours = quantize_weight(weight, "kmeans_a", BITS, FLOAT32)
    for b in BITS:
        theirs = row_sse(weight, original_kmeans_a(weight, b, seed=0)).sum()
        assert row_sse(weight, ours[b].dequantize()).sum() <= theirs * (1 + 1e-6)


@pytest.mark.parametrize("method", ["kmeans_c", "kmeans_a"])
def test_original_kmeans_equals_ours_on_separated_clusters(method):
    """With 2^b well-separated clusters both find the same partition, and so the same centroids."""
    g = torch.Generator().manual_seed(3)
    centers = torch.arange(8, dtype=torch.float32) * 10 - 35
    w = centers[torch.randint(0, 8, (4, 40), generator=g)] + 0.01 * torch.randn(4, 40, generator=g)
    w[:, :8] = centers + 0.01 * torch.randn(4, 8, generator=g)  # every cluster in every row
    ours = quantize_weight(w, method, [3], EXACT32)[3].dequantize()
    torch.testing.assert_close(original_quantize(method, w, 3, seed=0), ours, rtol=0, atol=1e-5)


def test_original_keeps_the_weight_dtype():
    w = torch.randn(4, 32, generator=torch.Generator().manual_seed(1)).half()
    for method in ("uaq", "kmeans_c", "kmeans_a"):
        assert original_quantize(method, w, 4, seed=0).dtype == torch.float16


def test_conv_weights_are_quantized_per_output_channel():
    w = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(2))
    x_hat = original_kmeans_c(w, 2, seed=0)
    assert x_hat.shape == w.shape
    assert all(row.unique().numel() <= 4 for row in x_hat.reshape(3, -1))
    assert torch.equal(original_uaq(w, 3)[1], original_uaq_channel(w[1], 3))


@pytest.mark.parametrize(("method", "bits"), [("gptq", 4), ("uaq", 1), ("kmeans_c", 9), ("kmeans_a", 3.0)])
def test_original_rejects_unsupported_specs(weight, method, bits):
    with pytest.raises(UnsupportedSpecError):
        original_quantize(method, weight, bits)
