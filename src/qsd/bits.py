"""Average bits per weight, counted one way everywhere in qsd (paper §3.1; code.md §1.4): over the quantizable
layers' weights, a quantized layer's size is its index bits plus its overhead (scales, zero points, codebooks) stored
at the parameter precision, and a layer kept in float counts that precision per weight (FP16 by default, the paper's
convention). Biases, norms and embeddings are left out: they are the same in every configuration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

FLOAT_BITS = 16
"""Bits of one stored parameter at FP16: a float weight, a scale, a zero point or a codebook entry."""


@dataclass(frozen=True)
class BitCount:
    """The summed size (bits) and weights of a set of layers."""

    size_bits: int
    n_weights: int

    @property
    def avg_bits(self) -> float:
        """Average bits per weight."""
        return self.size_bits / self.n_weights


def count_bits(layers: Iterable[tuple[int, int | None]], float_bits: int = FLOAT_BITS) -> BitCount:
    """Size and weights of `layers`, each (weights, size in bits), the size None for a layer kept in float (then
    `float_bits` per weight)."""
    size = n = 0
    for n_weights, size_bits in layers:
        n += n_weights
        size += n_weights * float_bits if size_bits is None else size_bits
    return BitCount(size, n)
