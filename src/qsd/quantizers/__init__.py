"""Weight quantizers, one method per file, and the registry that dispatches on `QuantSpec.method`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from qsd.config import METHODS
from qsd.quantizers.base import QuantizedWeight, relative_error
from qsd.quantizers.kmeans import quantize_kmeans_a, quantize_kmeans_c
from qsd.quantizers.uaq import DEFAULT_CLIP_RATIOS, quantize_uaq

__all__ = ["QuantizedWeight", "QuantizerSettings", "quantize_weight", "relative_error"]


@dataclass(frozen=True)
class QuantizerSettings:
    """Every heuristic of the weight quantizers (recorded with each saved multiquantizer)."""

    uaq_clip_ratios: tuple[float, ...] = DEFAULT_CLIP_RATIOS
    """UAQ clipping search: range shrink ratios tried per channel (paper code: 0, 0.1, ..., 0.9)."""
    uaq_clip_p: float = 2.4
    """UAQ clipping search: the Lp norm that scores a candidate (paper code: 2.4)."""
    split_concat_inputs: bool = True
    """Quantize the two input halves of concatenation-fed layers as separate units (see qsd.layers)."""
    param_bits: int | None = None
    """Precision of scales/zeros/codebooks in the size accounting; None = the model's weight dtype."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> QuantizerSettings:
        data = dict(data)
        data["uaq_clip_ratios"] = tuple(data["uaq_clip_ratios"])
        return cls(**data)


def quantize_weight(
    weight: torch.Tensor, method: str, bits: Sequence[int], settings: QuantizerSettings = QuantizerSettings()
) -> dict[int, QuantizedWeight]:
    """Quantize `weight` [O, ...] per output channel with `method` at each of `bits`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; supported: {METHODS}")
    rows = weight.detach().reshape(weight.shape[0], -1).float()
    if method == "uaq":
        fitted = quantize_uaq(rows, bits, settings.uaq_clip_ratios, settings.uaq_clip_p)
    elif method == "kmeans_c":
        fitted = quantize_kmeans_c(rows, bits)
    else:
        fitted = quantize_kmeans_a(rows, bits)
    return {b: QuantizedWeight(method, b, codes, lut, tuple(weight.shape)) for b, (codes, lut) in fitted.items()}
