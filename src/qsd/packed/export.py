"""Real low-bit models: `export(denoiser, config, path)` writes packed codes + tables; `load_quantized(path,
model_id)` rebuilds the denoiser with `QLinear`/`QConv` layers that never hold the float weights.

File: one safetensors file holding
  * per packed unit: `<module>|<i>|codes` (uint8, `qsd.packed.format`) and `<module>|<i>|table` or `|affine`;
  * per float unit of a packed layer: `<module>|<i>|weight`;
  * every other parameter and buffer of the denoiser under its own name (biases, norms, embeddings, float layers);
and JSON metadata: format and version, model id, the diffusers class and its config (so the skeleton is rebuilt
without any weights file), the `QuantConfig`, the packed layers' segments, and a SHA-256 over all tensor bytes
that `load_quantized` verifies (a flipped bit is refused, not sampled from).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from qsd.actquant import apply_activation_bits
from qsd.config import SPEC_ATTRIBUTE, QuantConfig
from qsd.errors import AlreadyQuantizedError, CorruptFileError, ModelMismatchError, QsdError
from qsd.files import atomic_write, tensor_digest
from qsd.layers import SKIP_SUFFIX, Unit, quantizable_units
from qsd.multiquant import MultiQuantizer
from qsd.packed.format import pack_codes
from qsd.packed.modules import PackedLayer, QConv, QLinear, Segment, affine_from_table
from qsd.quantize import units_by_module
from qsd.quantizers import QuantizedWeight, QuantizerSettings, quantize_weight

FILE_FORMAT = "qsd-packed"
FILE_VERSION = 2  # v2: tables at the parameter precision (QuantizerSettings.param_dtype)


def _packed_tensors(prefix: str, qw: QuantizedWeight, table_dtype: torch.dtype) -> tuple[str, dict[str, torch.Tensor]]:
    """(table kind, tensors) of one quantized unit: packed codes, and the table (UAQ: (Δ, z), when that rebuilds it
    exactly) in `table_dtype`, the parameter precision the quantizer rounded it to, so decoding reproduces fake
    quantization bitwise and the file holds what `avg_bits` counts."""
    tensors = {f"{prefix}|codes": pack_codes(qw.codes.cpu(), qw.bits)}
    affine = affine_from_table(qw.lut.cpu(), qw.bits) if qw.method == "uaq" else None
    kind, table = ("affine", affine) if affine is not None else ("table", qw.lut.cpu().float())
    stored = table.to(table_dtype).contiguous()
    if not torch.equal(stored.float(), table):
        raise QsdError(f"{prefix}: the {qw.method} table is not exactly representable in {table_dtype}; the "
                       "multiquantizer was built at another parameter precision than its settings say: rebuild it")
    tensors[f"{prefix}|{kind}"] = stored
    return kind, tensors


def export(denoiser: nn.Module, config: QuantConfig, path: str | Path, model_id: str | None = None,
           multiquantizer: MultiQuantizer | None = None, settings: QuantizerSettings = QuantizerSettings()) -> Path:
    """Write `denoiser` quantized as `config` to `path` (packed). With `multiquantizer` (built for this denoiser)
    its precomputed options are packed; otherwise each unit is quantized here, as `quantize_` would."""
    if multiquantizer is not None and multiquantizer.model is not denoiser:
        raise ModelMismatchError("the multiquantizer was built for another denoiser object; pass its .model")
    settings = multiquantizer.settings if multiquantizer is not None else settings
    units = quantizable_units(denoiser, settings.split_concat_inputs)
    config.validate([u.name for u in units], multiquantizer.options if multiquantizer is not None else None)
    modules = dict(denoiser.named_modules())
    tensors: dict[str, torch.Tensor] = {}
    layers = {}
    for module_name, module_units in units_by_module(units):
        module = modules[module_name]
        if multiquantizer is not None:
            weight = multiquantizer.float_weight(module_name)
        elif any(s is not None for s in getattr(module, SPEC_ATTRIBUTE, {}).values()):
            raise AlreadyQuantizedError(f"{module_name} holds fake-quantized weights; export the float denoiser")
        else:
            weight = module.weight.detach()
        if all(config[u.name] is None for u in module_units):
            continue  # stays an ordinary float layer
        segments = []
        for i, unit in enumerate(module_units):
            spec, prefix, piece = config[unit.name], f"{module_name}|{i}", unit.weight_slice(weight)
            k = piece[0].numel()
            if spec is None:
                tensors[f"{prefix}|weight"] = piece.detach().cpu().contiguous()
                segments.append(Segment(unit.name, unit.in_start, unit.in_stop, None, None, k))
                continue
            if multiquantizer is not None:
                qw = multiquantizer.option(unit.name, spec.weights_only)
            else:
                qw = quantize_weight(piece, spec.method, [spec.w_bits], settings)[spec.w_bits]
            kind, packed = _packed_tensors(prefix, qw, getattr(torch, settings.param_dtype))
            tensors.update(packed)
            segments.append(Segment(unit.name, unit.in_start, unit.in_stop, spec, kind, k))
        layers[module_name] = {"segments": [s.to_json() for s in segments], "dtype": str(weight.dtype)}
    for name, tensor in [*denoiser.named_parameters(), *denoiser.named_buffers()]:
        owner, _, attr = name.rpartition(".")
        if not (owner in layers and attr == "weight"):
            tensors[name] = tensor.detach().cpu().contiguous()
    meta = {
        "format": FILE_FORMAT, "version": FILE_VERSION, "model_id": model_id,
        "denoiser_class": type(denoiser).__name__, "denoiser_config": dict(denoiser.config),
        "quant_config": config.to_json(), "layers": layers, "sha256": tensor_digest(sorted(tensors.items())),
    }
    metadata = {"qsd": json.dumps(meta, default=_json_value)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _json_value(value):
    """JSON form of what a diffusers config may hold besides JSON types: paths (`_name_or_path` of a model loaded
    from a local directory) as strings, other containers as lists."""
    return str(value) if isinstance(value, Path) else list(value)


def read_export(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of an exported file, verified: format, version and the checksum of every byte."""
    path = Path(path)
    if not path.is_file():
        raise QsdError(f"no exported model at {path}; write one with qsd.export(denoiser, config, path)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["qsd"])
        tensors = load_file(str(path))
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path} is not a readable qsd packed model ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FILE_FORMAT or meta.get("version") != FILE_VERSION:
        raise CorruptFileError(f"{path}: format {meta.get('format')!r} v{meta.get('version')!r}; this qsd reads "
                               f"{FILE_FORMAT!r} v{FILE_VERSION}")
    if tensor_digest(sorted(tensors.items())) != meta.get("sha256"):
        raise CorruptFileError(f"{path}: its tensors do not match the checksum written with them (the file was "
                               "altered or damaged after export); export it again")
    return meta, tensors


def _set_tensor(root: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = root.get_submodule(owner_name)
    if attr in owner._parameters:
        owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    elif attr in owner._buffers:
        owner._buffers[attr] = tensor
    else:
        raise CorruptFileError(f"the file holds {name!r}, which this {type(root).__name__} does not have")


def load_quantized(path: str | Path, model_id: str | None = None) -> nn.Module:
    """The exported denoiser with packed layers, on the CPU in eval mode. Refuses files of another model id.
    `QuantConfig.from_model` of the result is the exported config (float units included, as None)."""
    import diffusers  # only here: `import qsd` must not pull in diffusers (tests/test_paper_models.py)

    meta, tensors = read_export(path)
    if model_id is not None and meta["model_id"] not in (None, model_id):
        raise ModelMismatchError(f"{path} holds a packed {meta['model_id']!r}, not {model_id!r}")
    cls = getattr(diffusers, meta["denoiser_class"], None)
    if cls is None:
        raise CorruptFileError(f"{path}: unknown denoiser class {meta['denoiser_class']!r}")
    with torch.device("meta"):
        denoiser = cls.from_config(meta["denoiser_config"])
    for module_name, layer in meta["layers"].items():
        float_layer = denoiser.get_submodule(module_name)
        segments = [Segment.from_json(s) for s in layer["segments"]]
        dtype = getattr(torch, layer["dtype"].removeprefix("torch."))
        packed = (QLinear if isinstance(float_layer, nn.Linear) else QConv)(float_layer, segments, dtype)
        for i in range(len(segments)):
            for role in packed.segment_tensors(i):
                packed.register_buffer(f"{role}_{i}", tensors.pop(f"{module_name}|{i}|{role}"))
        owner, _, attr = module_name.rpartition(".")
        setattr(denoiser.get_submodule(owner), attr, packed)
    for name, tensor in tensors.items():
        _set_tensor(denoiser, name, tensor)
    left = [n for n, t in [*denoiser.named_parameters(), *denoiser.named_buffers()] if t.is_meta]
    if left:
        raise CorruptFileError(f"{path} lacks {len(left)} tensors of {meta['denoiser_class']}: {left[:4]}")
    config = QuantConfig.from_json(meta["quant_config"])
    split = any(name.endswith(SKIP_SUFFIX) for name in config)
    _record_specs(denoiser, config, path)
    units = [*quantizable_units(denoiser, split),
             *(Unit(s.unit, name, s.start, s.stop) for name, m in denoiser.named_modules()
               if isinstance(m, PackedLayer) for s in m.segments)]
    apply_activation_bits(denoiser, config, units=units)
    return denoiser.eval()


def _record_specs(denoiser: nn.Module, config: QuantConfig, path: str | Path) -> None:
    """Record None on the float layers' units (packed layers record their segments' specs) and check that the
    readback `QuantConfig.from_model(denoiser)` is the exported `config`. The file's units are split at
    concatenations iff `config` names `:skip` units (without concatenation-fed layers both give the same units)."""
    split = any(name.endswith(SKIP_SUFFIX) for name in config)
    for module_name, module_units in units_by_module(quantizable_units(denoiser, split)):
        setattr(denoiser.get_submodule(module_name), SPEC_ATTRIBUTE, {u.name: None for u in module_units})
    found, written = dict(QuantConfig.from_model(denoiser)), dict(config)
    differ = sorted(n for n in found.keys() | written.keys() if found.get(n, "absent") != written.get(n, "absent"))
    if differ:
        raise CorruptFileError(f"{path}: its layers disagree with its recorded QuantConfig on {len(differ)} units, "
                               f"e.g. {differ[:3]}; the metadata was altered after export: export the model again")


def memory_report(denoiser: nn.Module) -> dict[str, float]:
    """Resident bytes of the packed layers' weights against the same weights in fp16 and fp32, and of the
    whole denoiser (every parameter and buffer) against its fp16 and fp32 versions."""
    packed = [m for m in denoiser.modules() if isinstance(m, PackedLayer)]
    weights = sum(m.out_channels * sum(s.k for s in m.segments) for m in packed)
    packed_bytes = sum(m.weight_bytes() for m in packed)
    tensors = [*denoiser.parameters(), *denoiser.buffers()]
    total = sum(t.numel() * t.element_size() for t in tensors)
    packed_floats = sum(b.numel() for m in packed for b in m.buffers() if b.is_floating_point())
    elements = sum(t.numel() for t in tensors if t.is_floating_point()) - packed_floats + weights
    return {
        "packed_layers_bytes": packed_bytes,
        "packed_layers_fp16_bytes": 2 * weights,
        "packed_layers_fp32_bytes": 4 * weights,
        "packed_layers_ratio_vs_fp16": packed_bytes / (2 * weights) if weights else float("nan"),
        "denoiser_bytes": total,
        "denoiser_fp16_bytes": 2 * elements,
        "denoiser_fp32_bytes": 4 * elements,
    }
