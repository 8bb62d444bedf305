"""`quantize_(model, config)`: quantize a denoiser's weights in place, one unit at a time (paper §3.1).

The applied configuration is recorded on the modules themselves, so `QuantConfig.from_model(model)`
reads back exactly what was applied (DESIGN principle 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

import torch
from torch import nn

from qsd.actquant import apply_activation_bits
from qsd.config import SPEC_ATTRIBUTE, QuantConfig, QuantSpec
from qsd.errors import AlreadyQuantizedError
from qsd.layers import Unit, quantizable_units
from qsd.quantizers import QuantizerSettings, quantize_weight


def units_by_module(units: Sequence[Unit]) -> list[tuple[str, list[Unit]]]:
    """Units grouped by the module they belong to, in module order."""
    return [(name, list(group)) for name, group in groupby(units, key=lambda u: u.module)]


def write_weight(module: nn.Module, pieces: Sequence[torch.Tensor], specs: dict[str, QuantSpec | None]) -> None:
    """Set `module.weight` to the concatenation of its units' (input-column) pieces and record `specs`."""
    weight = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1).to(module.weight.dtype)
    module.weight.data = weight
    setattr(module, SPEC_ATTRIBUTE, dict(specs))


def quantize_(model: nn.Module, config: QuantConfig, settings: QuantizerSettings = QuantizerSettings()) -> nn.Module:
    """Fake-quantize `model`'s weights as `config` says (None = keep float), and quantize the inputs of units with
    `a_bits` token-wise (`qsd.actquant`). Returns `model`."""
    units = quantizable_units(model, settings.split_concat_inputs)
    config.validate([u.name for u in units])
    modules = dict(model.named_modules())
    for module_name, module_units in units_by_module(units):
        module = modules[module_name]
        if any(s is not None for s in getattr(module, SPEC_ATTRIBUTE, {}).values()):
            raise AlreadyQuantizedError(
                f"{module_name} is already quantized; quantize a fresh copy of the float model "
                "(or use MultiQuantizer.apply, which always starts from the float weights)"
            )
        weight = module.weight.detach()
        pieces = []
        for unit in module_units:
            spec = config[unit.name]
            piece = unit.weight_slice(weight)
            if spec is not None:
                fitted = quantize_weight(piece, spec.method, [spec.w_bits], settings)[spec.w_bits]
                piece = fitted.dequantize(weight.dtype)
            pieces.append(piece)
        write_weight(module, pieces, {u.name: config[u.name] for u in module_units})
    apply_activation_bits(model, config, settings.split_concat_inputs)
    return model

