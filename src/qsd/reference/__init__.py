"""The released original's procedures, kept as a tested reference (code.md §1).

What the released Qua²SeDiMo code did, re-implemented in our words so that benchmarks and tests can
compare `qsd` against it: its weight quantizers (`original_quantizers`), the PixArt-α layer set it
quantized (`pixart_alpha`) and the import of its pickled label datasets (`original_format`).
Nothing here is used by the method itself.
"""

from qsd.reference.original_format import UnsafePickleError, import_original, safe_load_pickle
from qsd.reference.original_quantizers import (
    original_kmeans_a,
    original_kmeans_c,
    original_quantize,
    original_uaq,
)
from qsd.reference.pixart_alpha import pixart_alpha_layers, pixart_alpha_weight_shapes

__all__ = [
    "UnsafePickleError",
    "import_original",
    "original_kmeans_a",
    "original_kmeans_c",
    "original_quantize",
    "original_uaq",
    "pixart_alpha_layers",
    "pixart_alpha_weight_shapes",
    "safe_load_pickle",
]
