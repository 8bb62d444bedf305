"""Activation quantization (paper §5's A8/A6; the baselines' static quantizers): token-wise online quantization,
static calibrated quantizers with per-step ranges, split inputs, quantized attention, and attaching them."""

from qsd.actquant.attach import apply_activation_bits, input_quantizer, set_attention_quantizers, set_input_quantizer
from qsd.actquant.attention import QuantAttnProcessor
from qsd.actquant.split import SplitInputQuantizer
from qsd.actquant.static import StaticQuantizer, StepClock
from qsd.actquant.tokenwise import TokenwiseQuantizer, fake_quantize_rows, fake_quantize_tokens
from qsd.config import SUPPORTED_A_BITS

__all__ = ["SUPPORTED_A_BITS", "QuantAttnProcessor", "SplitInputQuantizer", "StaticQuantizer", "StepClock",
           "TokenwiseQuantizer", "apply_activation_bits", "fake_quantize_rows", "fake_quantize_tokens",
           "input_quantizer", "set_attention_quantizers", "set_input_quantizer"]
