"""Putting activation quantizers into a denoiser, and taking them out again.

A layer's input quantizer is the submodule `act_quantizer` of that layer, applied by a forward pre-hook (the layer
itself, float, fake-quantized or packed, is untouched); an `Attention` module's act-to-act products are quantized by
a `QuantAttnProcessor`. `apply_activation_bits(model, config)` installs the paper's token-wise quantizers wherever a
unit's `QuantSpec.a_bits` is set and removes them elsewhere, so the configuration read back from the model
(`QuantConfig.from_model`) is what runs:
  * a layer's input is quantized per unit (the two halves of a concatenation-fed layer separately);
  * an attention's Q, K and V at the a_bits of `to_q`, `to_k` and `to_v`, its probabilities at `to_q`'s.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from torch import nn

from qsd.actquant.attention import PLAIN_PROCESSORS, QuantAttnProcessor
from qsd.actquant.split import SplitInputQuantizer
from qsd.actquant.tokenwise import TokenwiseQuantizer
from qsd.config import QuantConfig
from qsd.layers import Unit, quantizable_units

INPUT_QUANTIZER = "act_quantizer"


def _quantize_input(module: nn.Module, args: tuple) -> tuple | None:
    quantizer = getattr(module, INPUT_QUANTIZER, None)
    return None if quantizer is None else (quantizer(args[0]), *args[1:])


def set_input_quantizer(module: nn.Module, quantizer: nn.Module | None) -> None:
    """Quantize `module`'s input with `quantizer` from now on (None: stop)."""
    hooked = [key for key, hook in module._forward_pre_hooks.items() if hook is _quantize_input]
    if quantizer is None:
        for key in hooked:
            del module._forward_pre_hooks[key]
        if INPUT_QUANTIZER in module._modules:
            del module._modules[INPUT_QUANTIZER]
        return
    setattr(module, INPUT_QUANTIZER, quantizer)
    if not hooked:
        module.register_forward_pre_hook(_quantize_input)


def input_quantizer(module: nn.Module) -> nn.Module | None:
    return module._modules.get(INPUT_QUANTIZER)


def channel_dim(module: nn.Module) -> int:
    """Where a layer's input channels are: dim 1 for convolutions, the last dim for linear layers."""
    return -1 if isinstance(module, nn.Linear) or getattr(module, "kernel_size", ()) == () else 1


def set_attention_quantizers(attn: nn.Module, query: nn.Module | None, key: nn.Module | None,
                             value: nn.Module | None, probs: nn.Module | None) -> bool:
    """Give `attn` a `QuantAttnProcessor` with these quantizers (all None: its float processor back). Returns False
    (and warns) when its float processor is not plain attention, which then stays float."""
    current = attn.processor
    float_processor = current.float_processor if isinstance(current, QuantAttnProcessor) else current
    if all(q is None for q in (query, key, value, probs)):
        if isinstance(current, QuantAttnProcessor):
            attn.set_processor(float_processor)
        return True
    if type(float_processor).__name__ not in PLAIN_PROCESSORS:
        warnings.warn(f"attention processor {type(float_processor).__name__} is not plain attention "
                      f"({', '.join(PLAIN_PROCESSORS)}): its Q/K/V and softmax stay float", stacklevel=3)
        return False
    attn.set_processor(QuantAttnProcessor(query, key, value, probs, float_processor))
    return True


def apply_activation_bits(model: nn.Module, config: QuantConfig, split_concat_inputs: bool = True,
                          units: Sequence[Unit] | None = None) -> None:
    """Token-wise activation quantizers where `config` gives a unit `a_bits`, none elsewhere (see module docstring).
    `units` defaults to the model's float layers' units (`qsd.layers.quantizable_units`); a packed model passes its
    own."""
    from diffusers.models.attention_processor import Attention

    modules = dict(model.named_modules())
    a_bits = {name: None if spec is None else spec.a_bits for name, spec in config.items()}
    by_module: dict[str, list] = {}
    for unit in quantizable_units(model, split_concat_inputs) if units is None else units:
        by_module.setdefault(unit.module, []).append(unit)
    for module_name, units in by_module.items():
        module, bits = modules[module_name], [a_bits[u.name] for u in units]
        if all(b is None for b in bits):
            set_input_quantizer(module, None)
        elif len(units) == 1:
            set_input_quantizer(module, TokenwiseQuantizer(bits[0]))
        else:
            parts = [None if b is None else TokenwiseQuantizer(b) for b in bits]
            set_input_quantizer(module, SplitInputQuantizer([(u.in_start, u.in_stop) for u in units], parts,
                                                            channel_dim(module)))
    for name, attn in modules.items():
        if isinstance(attn, Attention):
            bits = {p: a_bits.get(f"{name}.{p}") for p in ("to_q", "to_k", "to_v")}
            query, key, value = (None if b is None else TokenwiseQuantizer(b) for b in bits.values())
            probs = None if bits["to_q"] is None else TokenwiseQuantizer(bits["to_q"], unsigned=True)
            set_attention_quantizers(attn, query, key, value, probs)
