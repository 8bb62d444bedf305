"""MultiQuantizer: every weight-quantization option of every unit, precomputed once (paper §3.1, code.md §1.5).

Build once (data-free), then `apply(config)` swaps the chosen options' dequantized weights into the model
in O(units) with no re-quantization, and `restore()` brings back the exact float weights (the same
tensors, so bitwise). Options are stored as codes + lookup tables (not dense fake-quantized copies as in
the original), saved as safetensors + JSON metadata that pins the model's unit names, shapes and a
SHA-256 of its float weights.

Random configurations (paper §3.2, code.md §3): per configuration draw p ~ U(0, 1); each unit gets the
low bit width with probability p, else the high one; the method is uniform over the methods.

With `float_option` (the extended search space, `qsd.space`) keeping a unit float is one more choice of the search:
its option-table row has 16 bits a weight and no error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from qsd.actquant import apply_activation_bits
from qsd.bits import count_bits
from qsd.config import FLOAT_KEY, METHODS, QuantConfig, QuantSpec, option_key
from qsd.errors import CorruptFileError, ModelMismatchError, QsdError
from qsd.files import atomic_write, tensor_digest
from qsd.layers import Unit, quantizable_units
from qsd.quantize import units_by_module, write_weight
from qsd.quantizers import QuantizedWeight, QuantizerSettings, quantize_weight

DEFAULT_BITS = (4, 3)
DEFAULT_OPTIONS = tuple(QuantSpec(m, b) for m in METHODS for b in DEFAULT_BITS)
FILE_FORMAT = "qsd.MultiQuantizer"
FILE_VERSION = 3  # v2: tables rounded to QuantizerSettings.param_dtype; v3: checksum by qsd.files.tensor_digest


def float_weights_checksum(model: nn.Module, units: Sequence[Unit]) -> str:
    """Digest of the float weights of the modules that `units` cover, in order."""
    modules = dict(model.named_modules())
    return tensor_digest((name, modules[name].weight) for name, _ in units_by_module(units))


class MultiQuantizer:
    """All quantization options of a denoiser's units; build with `MultiQuantizer.build(model)`."""

    def __init__(
        self,
        model: nn.Module,
        units: Sequence[Unit],
        options: Sequence[QuantSpec],
        settings: QuantizerSettings,
        quantized: dict[str, dict[QuantSpec, QuantizedWeight]],
        errors: dict[str, dict[QuantSpec, float]],
        checksum: str,
        float_option: bool = False,
    ):
        self.model = model
        self.units = list(units)
        self.options = tuple(options)
        self.settings = settings
        self.quantized = quantized
        self.errors = errors
        self.checksum = checksum
        self.float_option = float_option
        self._modules = dict(model.named_modules())
        self._groups = units_by_module(self.units)
        self._float = {name: self._modules[name].weight.data for name, _ in self._groups}

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        model: nn.Module,
        options: Iterable[QuantSpec] = DEFAULT_OPTIONS,
        settings: QuantizerSettings = QuantizerSettings(),
        progress: bool = True,
        float_option: bool = False,
    ) -> MultiQuantizer:
        """Quantize every unit of `model` with every option (weights only, no data needed); `float_option` makes
        keeping a unit float a choice of the search space too."""
        options = tuple(dict.fromkeys(options))
        if not options:
            raise QsdError("a MultiQuantizer needs at least one option, e.g. QuantSpec('uaq', 4)")
        units = quantizable_units(model, settings.split_concat_inputs)
        if not units:
            raise QsdError(f"{type(model).__name__} has no Linear/Conv1d/Conv2d layers to quantize")
        modules = dict(model.named_modules())
        bits_by_method = {m: sorted({o.w_bits for o in options if o.method == m}) for m in METHODS}
        quantized: dict[str, dict[QuantSpec, QuantizedWeight]] = {}
        errors: dict[str, dict[QuantSpec, float]] = {}
        for unit in tqdm(units, desc="multiquantizer", unit="layer", disable=not progress):
            weight = unit.weight_slice(modules[unit.module].weight.detach()).float()
            quantized[unit.name], errors[unit.name] = {}, {}
            for method, bits in bits_by_method.items():
                if not bits:
                    continue
                for b, qw in quantize_weight(weight, method, bits, settings).items():
                    spec = QuantSpec(method, b)
                    quantized[unit.name][spec] = qw
                    errors[unit.name][spec] = qw.error  # measured inside the quantizer
        return cls(model, units, options, settings, quantized, errors, float_weights_checksum(model, units),
                   float_option)

    # ------------------------------------------------------------------ queries
    @property
    def unit_names(self) -> list[str]:
        """Names of `units`, in module order."""
        return [u.name for u in self.units]

    def float_weight(self, module_name: str) -> torch.Tensor:
        """The float weight of a quantized module, whatever configuration is applied."""
        return self._float[module_name]

    @property
    def choices(self) -> tuple[QuantSpec | None, ...]:
        """Every choice of a unit in the search space: the options, and None (float) with `float_option`."""
        return self.options + ((None,) if self.float_option else ())

    def option(self, unit: str, spec: QuantSpec) -> QuantizedWeight:
        """The precomputed codes and table of `unit` under `spec`."""
        return self.quantized[unit][spec]

    def search_space(self) -> pd.DataFrame:
        """One row per (unit, choice): size in bits (indices + overhead) and relative error; a float choice
        (`float_option`) is the unit's weights at the parameter precision, with no error."""
        rows = []
        p = self.settings.param_bits
        for unit in self.units:
            for spec in self.options:
                qw = self.quantized[unit.name][spec]
                rows.append(
                    {
                        "unit": unit.name,
                        "method": spec.method,
                        "w_bits": spec.w_bits,
                        "option": spec.key,
                        "n_weights": qw.numel,
                        "index_bits": spec.w_bits * qw.numel,
                        "overhead_bits": qw.overhead_bits(p),
                        "size_bits": qw.size_bits(p),
                        "bits_per_weight": qw.size_bits(p) / qw.numel,
                        "error": self.errors[unit.name][spec],
                    }
                )
            if self.float_option:
                n = self.quantized[unit.name][self.options[0]].numel
                rows.append({"unit": unit.name, "method": FLOAT_KEY, "w_bits": p, "option": FLOAT_KEY, "n_weights": n,
                             "index_bits": p * n, "overhead_bits": 0, "size_bits": p * n, "bits_per_weight": float(p),
                             "error": 0.0})
        return pd.DataFrame(rows)

    def cost(self, config: QuantConfig) -> dict[str, float]:
        """Size of the quantized weights under `config`: avg_bits = (index + overhead bits) / weights.

        Float units and the overhead count at the parameter precision (`QuantizerSettings.param_dtype`, FP16, the
        paper's convention). Only the quantizable layers' weights enter (biases, norms and embeddings are the same
        in every configuration; `qsd.bits`).
        """
        config.validate(self.unit_names, self.options)
        p = self.settings.param_bits
        layers = []
        for unit in self.units:
            spec = config[unit.name]
            size = None if spec is None else self.quantized[unit.name][spec.weights_only].size_bits(p)
            layers.append((self.quantized[unit.name][self.options[0]].numel, size))
        count = count_bits(layers, p)
        return {"avg_bits": count.avg_bits, "quantized_bytes": count.size_bits / 8,
                "fp_bytes": count.n_weights * p / 8, "n_weights": count.n_weights}

    def summed_error(self, config: QuantConfig) -> float:
        """Sum of the units' relative errors under `config` (float units add 0)."""
        config.validate(self.unit_names, self.options)
        return float(
            sum(self.errors[u][s.weights_only] for u, s in config.items() if s is not None)
        )

    def uniform(self, spec: QuantSpec | None) -> QuantConfig:
        """Every unit with the same option (None = the float model)."""
        return QuantConfig.uniform(self.unit_names, spec)

    def sample(self, rng: np.random.Generator | int | None) -> QuantConfig:
        """A random configuration by the paper's scheme (p ~ U(0,1); low bits w.p. p; uniform method)."""
        bits = sorted({o.w_bits for o in self.options})
        methods = sorted({o.method for o in self.options}, key=METHODS.index)
        if self.float_option or set(self.options) != {QuantSpec(m, b) for m in methods for b in (bits[0], bits[-1])}:
            raise QsdError(f"the paper's sampling scheme draws one of two bit widths per unit and a method for each; "
                           f"this search space ({', '.join(option_key(c) for c in self.choices)}) is not of that "
                           "shape: draw with the budget-stratified design (qsd.design)")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        p = rng.uniform()
        low = rng.uniform(size=len(self.units)) < p
        method_idx = rng.integers(len(methods), size=len(self.units))
        specs = {
            name: QuantSpec(methods[m], bits[0] if is_low else bits[-1])
            for name, is_low, m in zip(self.unit_names, low, method_idx, strict=True)
        }
        config = QuantConfig(specs)
        config.validate(self.unit_names, self.options)
        return config

    # ------------------------------------------------------------------ applying
    def apply(self, config: QuantConfig) -> None:
        """Set every unit's weight to its option under `config` (None = float), and its input activations to
        token-wise quantization where the spec has `a_bits` (`qsd.actquant`). No re-quantization."""
        config.validate(self.unit_names, self.options)
        for module_name, units in self._groups:
            float_weight = self._float[module_name]
            pieces = []
            for unit in units:
                spec = config[unit.name]
                if spec is None:
                    pieces.append(unit.weight_slice(float_weight))
                else:
                    option = self.option(unit.name, spec.weights_only)
                    pieces.append(option.dequantize(float_weight.dtype).to(float_weight.device))
            write_weight(self._modules[module_name], pieces, {u.name: config[u.name] for u in units})
        apply_activation_bits(self.model, config, self.settings.split_concat_inputs)

    def restore(self) -> None:
        """Put the original float weight tensors back (bitwise identical) and remove activation quantizers."""
        for module_name, units in self._groups:
            module = self._modules[module_name]
            write_weight(module, [self._float[module_name]], {u.name: None for u in units})
        apply_activation_bits(self.model, self.uniform(None), self.settings.split_concat_inputs)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write codes, lookup tables and errors as safetensors; names, shapes, settings as metadata."""
        path = Path(path)
        tensors: dict[str, torch.Tensor] = {}
        for unit in self.units:
            for spec in self.options:
                qw = self.quantized[unit.name][spec]
                tensors[f"{unit.name}|{spec.key}|codes"] = qw.codes.contiguous()
                tensors[f"{unit.name}|{spec.key}|lut"] = qw.lut.contiguous()
        tensors["errors"] = torch.tensor(
            [[self.errors[u][s] for s in self.options] for u in self.unit_names], dtype=torch.float32
        )
        meta = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "model_class": type(self.model).__name__,
            "units": [
                [u.name, u.module, u.in_start, u.in_stop, list(self._float[u.module].shape)]
                for u in self.units
            ],
            "options": [s.key for s in self.options],
            "float_option": self.float_option,
            "settings": self.settings.to_json(),
            "float_checksum": self.checksum,
        }
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"qsd": json.dumps(meta)}))

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> MultiQuantizer:
        """Read a saved multiquantizer for `model`; refuses files built for other layers or weights."""
        path = Path(path)
        if not path.is_file():
            raise QsdError(f"no multiquantizer file at {path}; build one with MultiQuantizer.build(model).save(path)")
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads((handle.metadata() or {})["qsd"])
        except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as exc:
            raise CorruptFileError(f"{path} is not a qsd multiquantizer file ({exc})") from None
        if meta.get("format") != FILE_FORMAT or meta.get("version") != FILE_VERSION:
            raise CorruptFileError(
                f"{path}: format {meta.get('format')!r} v{meta.get('version')!r}; this qsd reads "
                f"{FILE_FORMAT!r} v{FILE_VERSION}"
            )
        settings = QuantizerSettings.from_json(meta["settings"])
        units = quantizable_units(model, settings.split_concat_inputs)
        modules = dict(model.named_modules())
        expected = {n: (m, a, b, tuple(s)) for n, m, a, b, s in meta["units"]}
        actual = {u.name: (u.module, u.in_start, u.in_stop, tuple(modules[u.module].weight.shape)) for u in units}
        if expected != actual:
            missing = sorted(set(expected) - set(actual))
            extra = sorted(set(actual) - set(expected))
            reshaped = sorted(n for n in set(expected) & set(actual) if expected[n] != actual[n])
            raise ModelMismatchError(
                f"{path} was built for another model ({meta['model_class']}, {len(expected)} units) than this "
                f"{type(model).__name__} ({len(actual)} units): {len(missing)} of its units are absent here "
                f"{missing[:3]}, {len(extra)} units here are not in it {extra[:3]}, {len(reshaped)} differ in "
                f"shape or split {reshaped[:3]}. Rebuild it with MultiQuantizer.build(model)."
            )
        checksum = float_weights_checksum(model, units)
        if checksum != meta["float_checksum"]:
            raise ModelMismatchError(
                f"{path} was built from different float weights (checksum {meta['float_checksum'][:12]} vs this "
                f"model's {checksum[:12]}): same architecture, other checkpoint. Rebuild it for these weights."
            )
        options = tuple(QuantSpec.parse(k) for k in meta["options"])
        error_table = tensors["errors"]
        quantized, errors = {}, {}
        for i, unit in enumerate(units):
            shape = tuple(unit.weight_slice(modules[unit.module].weight).shape)
            quantized[unit.name] = {
                s: QuantizedWeight(
                    s.method,
                    s.w_bits,
                    tensors[f"{unit.name}|{s.key}|codes"],
                    tensors[f"{unit.name}|{s.key}|lut"],
                    shape,
                )
                for s in options
            }
            errors[unit.name] = {s: float(error_table[i, j]) for j, s in enumerate(options)}
        return cls(model, units, options, settings, quantized, errors, checksum, bool(meta.get("float_option")))
