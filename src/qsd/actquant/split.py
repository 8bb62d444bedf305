"""Split quantization of a concatenation-fed layer's input (Q-Diffusion §4.3; `qsd.layers`): the columns of each
quantization unit (the main path and the skip half) get their own activation quantizer, so the skip features'
range, often two orders of magnitude apart from the main path's, does not set the other half's step."""

from __future__ import annotations

import torch
from torch import nn


class SplitInputQuantizer(nn.Module):
    """Quantizes input channels [start, stop) with `parts[i]` (None = float) and concatenates the pieces back.
    `channel_dim` is -1 for a Linear input and 1 for a convolution input."""

    def __init__(self, bounds: list[tuple[int, int]], parts: list[nn.Module | None], channel_dim: int) -> None:
        super().__init__()
        self.bounds, self.channel_dim = [tuple(b) for b in bounds], channel_dim
        self.parts = nn.ModuleList([nn.Identity() if p is None else p for p in parts])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x.narrow(self.channel_dim, start, stop - start))
                          for (start, stop), part in zip(self.bounds, self.parts, strict=True)], dim=self.channel_dim)
