"""Quantized attention (code.md §2): Q, K and V after the head split (`[B·heads, N, d]`, so token-wise means per
token per head) and the softmax probabilities (unsigned, per query row) pass through activation quantizers before
the two batched matmuls. The projections' inputs are quantized by their own layers' input quantizers
(`qsd.actquant.attach`), so this processor only adds the act-to-act products.

It is a diffusers attention processor for `Attention` modules whose float processor computes plain scaled
dot-product attention (diffusers' `AttnProcessor`, `AttnProcessor2_0`, qsd's `ShortSequenceAttnProcessor`); it forms
the scores explicitly, as diffusers' `AttnProcessor` does, with the optional QK norms of `AttnProcessor2_0`.
"""

from __future__ import annotations

import torch
from torch import nn

PLAIN_PROCESSORS = ("AttnProcessor", "AttnProcessor2_0", "ShortSequenceAttnProcessor")
"""Float processors whose computation `QuantAttnProcessor` reproduces (others, e.g. Hunyuan's rotary one, are left
float by `qsd.actquant.attach`, which reports them)."""


class QuantAttnProcessor(nn.Module):
    """Attention with quantizers on Q, K, V (`query`, `key`, `value`) and the probabilities (`probs`); a quantizer of
    None leaves that tensor float. `float_processor` is what `remove_attention_quantization` puts back."""

    def __init__(self, query: nn.Module | None, key: nn.Module | None, value: nn.Module | None,
                 probs: nn.Module | None, float_processor: object) -> None:
        super().__init__()
        self.query, self.key, self.value, self.probs = (nn.Identity() if q is None else q
                                                        for q in (query, key, value, probs))
        self.float_processor = float_processor

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args,
                 **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        probs = attn.get_attention_scores(self.query(query), self.key(key), attention_mask)
        hidden_states = torch.bmm(self.probs(probs), self.value(value))
        hidden_states = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(hidden_states)))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
