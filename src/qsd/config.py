"""Quantization specifications and the per-layer mixed-precision configuration (paper §3.1).

A `QuantConfig` maps every quantizable unit of a denoiser (a fully-qualified module name, or
`<name>:skip` for the skip half of a layer whose input is a concatenation, see `qsd.layers`) to a
`QuantSpec` or to `None` (kept at full precision). Configs are frozen, JSON-serialisable values with a
stable fingerprint, so they can key a results store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from qsd.errors import (
    CorruptFileError,
    MissingLayerError,
    ModelMismatchError,
    QsdError,
    UnknownLayerError,
    UnsupportedSpecError,
    closest_names,
)

METHODS = ("uaq", "kmeans_c", "kmeans_a")
"""Weight quantizers: uniform asymmetric (UAQ), K-Means per output channel (C) and per tensor (A)."""
SUPPORTED_W_BITS = tuple(range(2, 9))
SUPPORTED_A_BITS = tuple(range(2, 9))
"""Activation bit widths of the token-wise quantizer (`qsd.actquant`); None = float (16-bit) activations."""
FLOAT_KEY = "float"
"""Option key of a unit kept at the parameter precision (FP16), a choice of the extended search space
(`qsd.space`); in a `QuantConfig` such a unit's spec is None."""
CONFIG_FORMAT_VERSION = 1
SPEC_ATTRIBUTE = "qsd_specs"
"""Attribute on every quantized module: {unit name: QuantSpec or None} as last applied (the readback)."""


@dataclass(frozen=True, order=True)
class QuantSpec:
    """How one unit is quantized: weight method and bits, and optionally the bits of its input activations
    (token-wise online quantization, `qsd.actquant`; None = float activations). Average bits count weights only."""

    method: str
    w_bits: int
    a_bits: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            hint = closest_names(str(self.method), METHODS, n=1)
            raise UnsupportedSpecError(
                f"unknown quantization method {self.method!r}; supported: {', '.join(METHODS)}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
        if type(self.w_bits) is not int or self.w_bits not in SUPPORTED_W_BITS:
            raise UnsupportedSpecError(
                f"unsupported weight bit width {self.w_bits!r} for {self.method}; "
                f"supported: {SUPPORTED_W_BITS[0]}..{SUPPORTED_W_BITS[-1]} (integers)"
            )
        check_a_bits(self.a_bits)

    @property
    def weights_only(self) -> QuantSpec:
        """This spec without activation bits (the multiquantizer's option it uses)."""
        return QuantSpec(self.method, self.w_bits)

    def with_a_bits(self, a_bits: int | None) -> QuantSpec:
        return QuantSpec(self.method, self.w_bits, a_bits)

    @property
    def key(self) -> str:
        """Short option name, e.g. `kmeans_c-3` (the original code's `<method>-<bits>` keys), `uaq-4-a6` with
        activation bits."""
        return f"{self.method}-{self.w_bits}" + ("" if self.a_bits is None else f"-a{self.a_bits}")

    @classmethod
    def parse(cls, key: str) -> QuantSpec:
        """Inverse of `key`: `"uaq-4"` -> `QuantSpec("uaq", 4)`, `"uaq-4-a6"` -> `QuantSpec("uaq", 4, 6)`."""
        key = str(key)
        a_bits = None
        head, sep, tail = key.rpartition("-a")
        if sep and tail.isdigit():
            key, a_bits = head, int(tail)
        method, sep, bits = key.rpartition("-")
        if not sep or not bits.isdigit():
            raise UnsupportedSpecError(f"cannot parse option {key!r}; expected '<method>-<bits>[-a<bits>]', e.g. "
                                       "'uaq-4' or 'uaq-4-a6'")
        return cls(method, int(bits), a_bits)

    def to_json(self) -> dict:
        """Weight-only specs keep their original form (and configurations their fingerprints)."""
        data = {"method": self.method, "w_bits": self.w_bits}
        return data if self.a_bits is None else data | {"a_bits": self.a_bits}

    @classmethod
    def from_json(cls, data: Mapping) -> QuantSpec:
        if not isinstance(data, Mapping) or set(data) - {"method", "w_bits", "a_bits"} or "method" not in data:
            raise CorruptFileError(
                f"a spec must be an object with keys method, w_bits[, a_bits]; got {data!r}"
            )
        return cls(data["method"], data.get("w_bits"), data.get("a_bits"))

    def display_order(self) -> tuple[int, int]:
        """Sort key of tables and figures: methods as in METHODS, then high bits before low."""
        return METHODS.index(self.method), -self.w_bits


def check_a_bits(bits: object) -> None:
    """Refuse activation bit widths outside `SUPPORTED_A_BITS` (None, float activations, passes)."""
    if bits is not None and (type(bits) is not int or bits not in SUPPORTED_A_BITS):
        raise UnsupportedSpecError(f"unsupported activation bit width {bits!r}; supported: "
                                   f"{SUPPORTED_A_BITS[0]}..{SUPPORTED_A_BITS[-1]} (integers), or None for float "
                                   "(16-bit) activations")


def option_key(spec: QuantSpec | None) -> str:
    """The key of an option of the search space: `QuantSpec.key`, or `FLOAT_KEY` for None (kept float)."""
    return FLOAT_KEY if spec is None else spec.key


def parse_option(key: str) -> QuantSpec | None:
    """Inverse of `option_key`."""
    return None if key == FLOAT_KEY else QuantSpec.parse(key)


def option_order(spec: QuantSpec | None) -> tuple[int, int]:
    """Sort key of tables and figures over a space's choices: float first, then `QuantSpec.display_order`."""
    return (-1, 0) if spec is None else spec.display_order()


def option_method(spec: QuantSpec | None) -> str:
    """The method of an option: the quantizer's name, or `FLOAT_KEY` for a unit kept float."""
    return FLOAT_KEY if spec is None else spec.method


class QuantConfig(Mapping[str, QuantSpec | None]):
    """Immutable map unit name -> `QuantSpec` (or `None` = full precision)."""

    def __init__(self, layers: Mapping[str, QuantSpec | None]):
        for name, spec in layers.items():
            if not isinstance(name, str) or not name:
                raise QsdError(f"layer names must be non-empty strings; got {name!r}")
            if spec is not None and not isinstance(spec, QuantSpec):
                raise QsdError(
                    f"layer {name!r}: expected a QuantSpec or None, got {type(spec).__name__} {spec!r}; "
                    "build specs with QuantSpec(method, w_bits) or QuantSpec.parse('uaq-4')"
                )
        self._layers = MappingProxyType(dict(sorted(layers.items())))

    # Mapping protocol
    def __getitem__(self, name: str) -> QuantSpec | None:
        try:
            return self._layers[name]
        except KeyError:
            hints = closest_names(name, self._layers)
            raise UnknownLayerError(
                f"no layer {name!r} in this config" + (f"; closest: {', '.join(hints)}" if hints else "")
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantConfig) and dict(self._layers) == dict(other._layers)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for spec in self._layers.values():
            key = option_key(spec)
            counts[key] = counts.get(key, 0) + 1
        return f"QuantConfig({len(self)} layers: {', '.join(f'{k}×{v}' for k, v in sorted(counts.items()))})"

    # Construction helpers
    @classmethod
    def from_model(cls, model) -> QuantConfig:
        """The configuration last applied to `model` by `qsd.quantize_` or `MultiQuantizer.apply`."""
        layers: dict[str, QuantSpec | None] = {}
        for module in model.modules():
            layers.update(getattr(module, SPEC_ATTRIBUTE, {}))
        return cls(layers)

    @classmethod
    def uniform(cls, units: Iterable[str], spec: QuantSpec | None) -> QuantConfig:
        """Every unit gets the same spec."""
        return cls({u: spec for u in units})

    def with_layers(self, changes: Mapping[str, QuantSpec | None]) -> QuantConfig:
        """A copy with some units changed; unknown names are refused."""
        unknown = [n for n in changes if n not in self._layers]
        if unknown:
            self[unknown[0]]  # raises UnknownLayerError with suggestions
        return QuantConfig({**self._layers, **changes})

    def with_a_bits(self, a_bits: int | None) -> QuantConfig:
        """A copy whose quantized units all take `a_bits` activation bits (None: float activations); float units
        stay float."""
        return QuantConfig({n: None if s is None else s.with_a_bits(a_bits) for n, s in self._layers.items()})

    @property
    def a_bits(self) -> int | None:
        """The one activation bit width of all quantized units, None when they are all float; mixed raises."""
        found = {s.a_bits for s in self._layers.values() if s is not None}
        if len(found) > 1:
            raise UnsupportedSpecError(f"this config mixes activation bit widths {sorted(found, key=str)}")
        return next(iter(found), None)

    def shared_spec(self) -> QuantSpec | None:
        """The one spec every unit has (a uniform configuration); None when the units differ or are all float."""
        specs = set(self._layers.values())
        return next(iter(specs)) if len(specs) == 1 else None

    # Serialisation
    def to_json(self) -> dict:
        return {
            "format": "qsd.QuantConfig",
            "version": CONFIG_FORMAT_VERSION,
            "layers": {n: (None if s is None else s.to_json()) for n, s in self._layers.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping) -> QuantConfig:
        if not isinstance(data, Mapping) or data.get("format") != "qsd.QuantConfig":
            raise CorruptFileError(
                "not a qsd QuantConfig: expected an object with format='qsd.QuantConfig' and 'layers'; "
                f"got keys {sorted(data) if isinstance(data, Mapping) else type(data).__name__}"
            )
        if data.get("version") != CONFIG_FORMAT_VERSION:
            raise CorruptFileError(
                f"QuantConfig format version {data.get('version')!r} is not supported "
                f"(this qsd reads version {CONFIG_FORMAT_VERSION})"
            )
        return cls({n: None if s is None else QuantSpec.from_json(s) for n, s in data["layers"].items()})

    def dumps(self) -> str:
        """Canonical JSON text (sorted keys, no whitespace): what the fingerprint hashes."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> QuantConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"config is not valid JSON: {exc}") from None
        return cls.from_json(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> QuantConfig:
        return cls.loads(Path(path).read_text())

    @property
    def fingerprint(self) -> str:
        """Stable 16-hex-digit SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.dumps().encode()).hexdigest()[:16]

    # Validation
    def validate(self, units: Iterable[str], supported: Iterable[QuantSpec] | None = None) -> None:
        """Check that this config names exactly `units`, with specs from `supported` (if given).

        Raises `ModelMismatchError` when many names are foreign (more than 2 and 10 % of the units: a
        config for another model), `UnknownLayerError` for stray names (closest matches suggested), `MissingLayerError`
        for unassigned units, `UnsupportedSpecError` for options outside `supported`.
        """
        units = list(units)
        unit_set = set(units)
        unknown = [n for n in self._layers if n not in unit_set]
        missing = [u for u in units if u not in self._layers]
        if len(unknown) > max(2, 0.1 * len(units)):
            raise ModelMismatchError(
                f"this config was built for another model: {len(unknown)} of its {len(self._layers)} layers are "
                f"not units of this model (e.g. {unknown[0]!r}) and {len(missing)} of this model's "
                f"{len(units)} units are missing from it (e.g. {missing[:1]}). Build the config from this "
                "model's units (MultiQuantizer.unit_names / qsd.quantizable_units)."
            )
        if unknown:
            lines = [f"{n!r} (closest: {', '.join(closest_names(n, units)) or 'none'})" for n in unknown[:5]]
            raise UnknownLayerError(
                f"{len(unknown)} layer name(s) in the config are not quantizable units of this model: "
                + "; ".join(lines)
                + ("; ..." if len(unknown) > 5 else "")
            )
        if missing:
            raise MissingLayerError(
                f"the config leaves {len(missing)} of {len(units)} units unassigned, e.g. {missing[:3]}; "
                "every unit needs a QuantSpec or None (full precision): "
                "use QuantConfig.uniform(units, None).with_layers(...) to start from full precision"
            )
        if supported is not None:
            allowed = set(supported)
            for name, spec in self._layers.items():
                if spec is not None and spec.weights_only not in allowed:
                    raise UnsupportedSpecError(
                        f"layer {name!r} asks for {spec.key}, which this multiquantizer did not precompute; "
                        f"available: {', '.join(sorted(s.key for s in allowed))}"
                    )

