"""PixArt-α's quantizable weight layers, built without downloading the model (code.md §1.6, §1.4).

The original wraps every Linear/Conv of the denoiser (PixArt-XL-2-512: d = 1152, 28 blocks, 16 heads
× 72, caption width 4096, patch 2, 8 output channels for the learned-sigma model). That is 287 weight
layers and 610,228,224 weights, i.e. exactly the hard-coded FP16 byte total of the original's PixArt-α
eval script (1,220,456,448 B). `pixart_alpha_layers` builds a module with just those layers, named and
ordered as in diffusers' `PixArtTransformer2DModel`, so that code which walks real model names (the
multiquantizer, the benchmarks) can run at the real sizes; its forward is not defined.

Layers (per block: attention `attn1` = self, `attn2` = cross, both from the hidden width):
  pos_embed.proj                                     Conv2d(4 → 1152, kernel 2, stride 2)
  transformer_blocks.i.attn{1,2}.to_{q,k,v,out.0}    Linear(1152 → 1152)
  transformer_blocks.i.ff.net.0.proj                 Linear(1152 → 4608)
  transformer_blocks.i.ff.net.2                      Linear(4608 → 1152)
  proj_out                                           Linear(1152 → 2·2·8)
  adaln_single.emb.timestep_embedder.linear_{1,2}    Linear(256 → 1152), Linear(1152 → 1152)
  adaln_single.linear                                Linear(1152 → 6·1152)
  caption_projection.linear_{1,2}                    Linear(4096 → 1152), Linear(1152 → 1152)
"""

from __future__ import annotations

import torch
from torch import nn

from qsd.errors import InvalidSettingError
from qsd.layers import QUANTIZABLE_TYPES

HIDDEN = 1152
"""d: the hidden width (16 heads × 72)."""
N_BLOCKS = 28
FF_HIDDEN = 4 * HIDDEN
CAPTION_CHANNELS = 4096
"""T5-XXL embedding width, projected to d by `caption_projection`."""
TIMESTEP_CHANNELS = 256
"""Sinusoidal timestep features, projected to d by the timestep embedder."""
IN_CHANNELS, OUT_CHANNELS, PATCH = 4, 8, 2
N_LAYERS = 7 + 10 * N_BLOCKS
"""Quantizable weight layers of the full model (code.md §1.6: 287)."""
FP16_BYTES = 1_220_456_448
"""The original's `FP_SIZE` for PixArt-α: 2 bytes per weight, biases not counted (code.md §1.4)."""


class Node(nn.Module):
    """A plain container whose children are passed by keyword, so module names match diffusers."""

    def __init__(self, **children: nn.Module):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


def pixart_alpha_layers(
    n_blocks: int = N_BLOCKS, dtype: torch.dtype = torch.float16, device: torch.device | str = "cpu"
) -> nn.Module:
    """A module holding PixArt-α's weight layers with `n_blocks` transformer blocks (28 in the real model).

    Parameters are left uninitialised (`nn.utils.skip_init`); use `device="meta"` for shapes only.
    """
    if type(n_blocks) is not int or not 0 <= n_blocks <= N_BLOCKS:
        raise InvalidSettingError(
            f"n_blocks={n_blocks!r}: PixArt-α has {N_BLOCKS} blocks; pass an integer in 0..{N_BLOCKS}"
        )
    d = HIDDEN

    def linear(in_features: int, out_features: int) -> nn.Linear:
        return nn.utils.skip_init(nn.Linear, in_features, out_features, dtype=dtype, device=device)

    def attention() -> Node:
        to_out = nn.ModuleList([linear(d, d), nn.Dropout(0.0)])
        return Node(to_q=linear(d, d), to_k=linear(d, d), to_v=linear(d, d), to_out=to_out)

    def block() -> Node:
        net = nn.ModuleList([Node(proj=linear(d, FF_HIDDEN)), nn.Dropout(0.0), linear(FF_HIDDEN, d)])
        return Node(attn1=attention(), attn2=attention(), ff=Node(net=net))

    patch = nn.utils.skip_init(
        nn.Conv2d, IN_CHANNELS, d, kernel_size=PATCH, stride=PATCH, dtype=dtype, device=device
    )
    return Node(
        pos_embed=Node(proj=patch),
        transformer_blocks=nn.ModuleList([block() for _ in range(n_blocks)]),
        proj_out=linear(d, PATCH * PATCH * OUT_CHANNELS),
        adaln_single=Node(
            emb=Node(timestep_embedder=Node(linear_1=linear(TIMESTEP_CHANNELS, d), linear_2=linear(d, d))),
            linear=linear(d, 6 * d),
        ),
        caption_projection=Node(linear_1=linear(CAPTION_CHANNELS, d), linear_2=linear(d, d)),
    )


def pixart_alpha_weight_shapes(n_blocks: int = N_BLOCKS) -> dict[str, tuple[int, ...]]:
    """Layer name → weight shape of every quantizable layer, in module order (built on the meta device)."""
    model = pixart_alpha_layers(n_blocks, device="meta")
    return {name: tuple(m.weight.shape) for name, m in model.named_modules() if isinstance(m, QUANTIZABLE_TYPES)}
