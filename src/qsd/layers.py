"""Which weights of a denoiser are quantized, as named *units* (paper §3.1; code.md §1.6).

Every `nn.Linear`, `nn.Conv1d` and `nn.Conv2d` of the denoiser is quantized, first and last layers and
the timestep/caption/adaLN MLPs included; embeddings, norms and other parameters stay in float.

Concatenation-fed layers. Where a layer's input is `cat([h, skip])`, its weight columns fall into two
groups with different statistics. Like the original code we give each group its own unit, so it gets
its own method, bits and codebooks; the skip half is named `<module>:skip`. This applies to
  * U-Net up-block resnets (`up_blocks.i.resnets.j.conv1` and `.conv_shortcut`): the input is
    `cat([hidden, res_skip])`, split at the channel count of `hidden` (the previous resnet's
    output, or the previous block's / mid block's for j = 0). The original split only one of the two
    convs (SDXL: conv1; SDv1.5: the shortcut); both read the same concatenation, so we split both.
  * Hunyuan-DiT `blocks.k.skip_linear`: `cat([hidden, skip])` of equal widths, split at the middle.
Disable with `QuantizerSettings(split_concat_inputs=False)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

QUANTIZABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
SKIP_SUFFIX = ":skip"


@dataclass(frozen=True)
class Unit:
    """One quantized weight block: input columns [in_start, in_stop) of module `module`."""

    name: str
    module: str
    in_start: int
    in_stop: int

    def weight_slice(self, weight: torch.Tensor) -> torch.Tensor:
        return weight[:, self.in_start : self.in_stop]


def _unet_concat_boundaries(model: nn.Module) -> dict[str, int]:
    boundaries = {}
    prev_channels = model.mid_block.resnets[-1].out_channels if model.mid_block is not None else None
    for i, block in enumerate(model.up_blocks):
        for j, resnet in enumerate(block.resnets):
            if prev_channels is not None and resnet.in_channels > prev_channels:
                for conv in ("conv1", "conv_shortcut"):
                    if getattr(resnet, conv, None) is not None:
                        boundaries[f"up_blocks.{i}.resnets.{j}.{conv}"] = prev_channels
            prev_channels = resnet.out_channels
    return boundaries


def concat_boundaries(model: nn.Module) -> dict[str, int]:
    """Module name -> number of leading input channels that come from the main path."""
    if hasattr(model, "up_blocks") and hasattr(model, "mid_block"):
        return _unet_concat_boundaries(model)
    return {
        name: module.in_features // 2
        for name, module in model.named_modules()
        if name.endswith(".skip_linear") and isinstance(module, nn.Linear)
    }


def quantizable_units(model: nn.Module, split_concat_inputs: bool = True) -> list[Unit]:
    """All units of `model` in module order."""
    boundaries = concat_boundaries(model) if split_concat_inputs else {}
    units = []
    for name, module in model.named_modules():
        if not isinstance(module, QUANTIZABLE_TYPES):
            continue
        width = module.weight.shape[1]
        cut = boundaries.get(name)
        if cut is None:
            units.append(Unit(name, name, 0, width))
        else:
            units.append(Unit(name, name, 0, cut))
            units.append(Unit(name + SKIP_SUFFIX, name, cut, width))
    return units
