"""The short-sequence attention processor: same outputs as diffusers' SDPA processor, SDPA kept for long
sequences and small batches, installed on the embedded denoisers."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from qsd.models import load_model
from qsd.models.attention import EXPLICIT_MIN_BATCH, ShortSequenceAttnProcessor


@pytest.mark.parametrize(("batch", "queries", "keys", "path"), [
    (EXPLICIT_MIN_BATCH, 16, 12, "explicit"), (EXPLICIT_MIN_BATCH, 16, None, "explicit"),
    (EXPLICIT_MIN_BATCH, 64, None, "explicit"), (EXPLICIT_MIN_BATCH, 96, None, "fused"),
    (EXPLICIT_MIN_BATCH - 1, 16, 12, "fused")])
def test_short_sequence_processor_matches_sdpa_and_picks_by_shape(batch, queries, keys, path):
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=24 if keys else None, heads=4, dim_head=8).eval()
    hidden = torch.randn(batch, queries, 32)
    context = None if keys is None else torch.randn(batch, keys, 24)
    mask = None if keys is None else torch.tensor([[[0.0] * (keys - 4) + [-10000.0] * 4]] * batch)  # as PixArt's
    kwargs = {"encoder_hidden_states": context, "attention_mask": mask}
    processor, used = ShortSequenceAttnProcessor(), []
    for name in ("explicit", "fused"):
        inner = getattr(processor, name)
        setattr(processor, name, lambda *a, _inner=inner, _name=name, **k: used.append(_name) or _inner(*a, **k))
    with torch.no_grad():
        attn.set_processor(AttnProcessor2_0())
        expected = attn(hidden, **kwargs)
        attn.set_processor(processor)
        actual = attn(hidden, **kwargs)
    assert used == [path]
    torch.testing.assert_close(actual, expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("model_id", ["tiny_pixart", "tiny_sd", "tiny_dit"])
def test_embedded_models_use_the_short_sequence_processor(model_id):
    processors = [m.processor for m in load_model(model_id).denoiser.modules() if isinstance(m, Attention)]
    assert processors and all(isinstance(p, ShortSequenceAttnProcessor) for p in processors)
