"""Weight quantizers, one method per file, and the registry that dispatches on `QuantSpec.method`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from qsd.config import METHODS
from qsd.errors import UnsupportedSpecError
from qsd.quantizers.base import (
    PARAM_DTYPES,
    QuantizedWeight,
    param_dtype_bits,
    relative_error,
    relative_errors_from_sse,
)
from qsd.quantizers.kmeans import quantize_kmeans_a, quantize_kmeans_c
from qsd.quantizers.kmeans1d import check_solver
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
    param_dtype: str = "float16"
    """Precision of the model's stored parameters (paper §3: FP16): scales, zero points and codebooks are rounded
    to it and counted at it in the average bits, and so are layers kept in float."""
    kmeans_solver: str = "coarse_to_fine"
    """K-Means-C codebooks: "coarse_to_fine" (near-optimal, 4-8x faster) or "exact" (qsd.quantizers.kmeans1d).

    K-Means-A is always exact."""

    def __post_init__(self) -> None:
        check_solver(self.kmeans_solver)
        if self.param_dtype not in PARAM_DTYPES:
            raise UnsupportedSpecError(f"param_dtype {self.param_dtype!r} is not one of {', '.join(PARAM_DTYPES)}")

    @property
    def param_bits(self) -> int:
        """Bits of one stored scale, zero point, centroid or float weight."""
        return param_dtype_bits(self.param_dtype)

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
    """Quantize `weight` [O, ...] per output channel with `method` at each of `bits`.

    Computes on the CPU; codes and tables are returned on `weight`'s device, each with its relative error.
    """
    if method not in METHODS:
        raise UnsupportedSpecError(f"unknown method {method!r}; supported: {METHODS}")
    rows = weight.detach().reshape(weight.shape[0], -1).cpu().float()
    if method == "uaq":
        fitted = quantize_uaq(rows, bits, settings.uaq_clip_ratios, settings.uaq_clip_p, settings.param_dtype)
    elif method == "kmeans_c":
        fitted = quantize_kmeans_c(rows, bits, settings.kmeans_solver, settings.param_dtype)
    else:
        fitted = quantize_kmeans_a(rows, bits, settings.param_dtype)
    errors = relative_errors_from_sse(rows, {b: sse for b, (_, _, sse) in fitted.items()})
    device, shape = weight.device, tuple(weight.shape)
    return {
        b: QuantizedWeight(method, b, codes.to(device), lut.to(device), shape, errors[b])
        for b, (codes, lut, _) in fitted.items()
    }
