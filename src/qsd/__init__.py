"""qsd: explainable mixed-precision quantization of diffusion denoisers (a Qua²SeDiMo reproduction).

The one verb is `quantize_(model, config)`; `MultiQuantizer` precomputes every option of every layer so
configurations can be swapped in cheaply while labelling; `QuantConfig` is the per-layer map; `export` /
`load_quantized` turn a configuration into a real packed low-bit denoiser.
"""

from qsd.config import METHODS, QuantConfig, QuantSpec
from qsd.errors import (
    AlreadyQuantizedError,
    CorruptFileError,
    MissingLayerError,
    ModelMismatchError,
    ModelNotAvailableError,
    QsdError,
    UnknownLayerError,
    UnsupportedSpecError,
)
from qsd.layers import Unit, quantizable_units
from qsd.multiquant import DEFAULT_OPTIONS, MultiQuantizer
from qsd.packed import export, load_quantized
from qsd.quantize import quantize_
from qsd.quantizers import QuantizedWeight, QuantizerSettings, quantize_weight

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_OPTIONS", "METHODS", "AlreadyQuantizedError", "CorruptFileError", "MissingLayerError",
    "ModelMismatchError", "ModelNotAvailableError", "MultiQuantizer", "QsdError", "QuantConfig", "QuantSpec",
    "QuantizedWeight", "QuantizerSettings", "Unit", "UnknownLayerError", "UnsupportedSpecError",
    "export", "load_quantized", "quantizable_units", "quantize_", "quantize_weight",
]
