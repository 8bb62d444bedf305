"""Import of label datasets made with the released original code (paper §3.2; research/code.md §3).

The original appends one dict per labelled configuration to a pickled list (`quant_cache.pkl`):
`config` = {layer name: [method-bits, FP bytes, quantized bytes, error]} (or just `method-bits`),
`FID-GT-1k`, `avg_bits`, `quantized_size`, `quantized_error`, optionally `bops` and `architecture`.
Its method names map to ours as mse → uaq, kmeans → kmeans_c, kmeans_all → kmeans_a.

A pickle can run arbitrary code when loaded, so it is read by a restricted unpickler that admits only
builtin containers, strings and numbers (and numpy scalars, which is how the original stored FID); any
other global (e.g. `os.system`) is refused with `UnsafePickleError` before anything is executed.
"""

from __future__ import annotations

import hashlib
import io
import numbers
import pickle
from collections.abc import Mapping
from pathlib import Path

from qsd.config import QuantConfig, QuantSpec
from qsd.errors import CorruptFileError, UnsafePickleError
from qsd.store import LabelRecord, LabelStore

ORIGINAL_METHODS = {"mse": "uaq", "kmeans": "kmeans_c", "kmeans_all": "kmeans_a"}
ORIGINAL_METRICS = {"FID-GT-1k": "fid", "avg_bits": "avg_bits", "quantized_size": "quantized_bytes",
                    "quantized_error": "summed_error"}
_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes")
_NUMPY_SCALAR = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                 for name in ("scalar",)} | {("numpy", "dtype")}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module == "builtins" and name in _BUILTINS) or (module, name) in _NUMPY_SCALAR:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refusing to load {module}.{name} from a pickle: only builtin containers and numbers are admitted "
            "(a label dataset needs nothing else; this file may be malicious or not a label dataset)"
        )


def safe_load_pickle(data: bytes) -> object:
    """Unpickle `data` admitting only builtin containers, strings and numbers (`UnsafePickleError` otherwise)."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or garbage input: report it as a corrupt file
        raise CorruptFileError(f"not a readable pickle: {type(exc).__name__}: {exc}") from exc


def parse_option(key: object) -> QuantSpec:
    """The original's option key (`kmeans_all-3`) as a QuantSpec."""
    method, sep, bits = str(key).rpartition("-")
    if not sep or method not in ORIGINAL_METHODS or not bits.isdigit():
        raise CorruptFileError(f"unknown option {key!r}; the original's keys are "
                               f"{', '.join(ORIGINAL_METHODS)} followed by -<bits>, e.g. 'kmeans_all-3'")
    return QuantSpec(ORIGINAL_METHODS[method], int(bits))


def _number(entry: Mapping, key: str, index: int) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CorruptFileError(f"entry {index}: {key} = {value!r} is not a number")
    return float(value)


def records_from_original(entries: object, source: str) -> list[LabelRecord]:
    """LabelRecords (kind 'imported') from the original's list of dicts."""
    if not isinstance(entries, list):
        raise CorruptFileError(f"{source}: expected a list of dicts (the original's quant_cache), got "
                               f"{type(entries).__name__}")
    records = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict) or "FID-GT-1k" not in entry:
            raise CorruptFileError(f"{source}: entry {i} lacks a 'config' dict or 'FID-GT-1k'")
        layers = {name: parse_option(value[0] if isinstance(value, list | tuple) else value)
                  for name, value in entry["config"].items()}
        metrics = {ours: _number(entry, theirs, i) for theirs, ours in ORIGINAL_METRICS.items()}
        provenance = {"source": source, "index": i, "architecture": entry.get("architecture"),
                      "bops": _number(entry, "bops", i)}
        records.append(LabelRecord(QuantConfig(layers), "imported", f"original #{i}", metrics, provenance))
    return records


def original_protocol(path: str | Path, model_id: str) -> dict:
    """The protocol recorded for a dataset imported from `path` (the original's: 1,000 images, clean-fid)."""
    return {"source": "released original (quant_cache.pkl)", "model_id": model_id,
            "file_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(), "n_images": 1000,
            "fid": "clean-fid Inception-v3 (FID-GT-1k)"}


def import_original(path: str | Path, store_path: str | Path, model_id: str) -> LabelStore:
    """Read the original's pickled dataset at `path` safely and write it into a qsd store at `store_path`.
    Importing the same file again adds nothing (rows are keyed by configuration)."""
    path = Path(path)
    records = records_from_original(safe_load_pickle(path.read_bytes()), path.name)
    store = LabelStore(store_path, original_protocol(path, model_id))
    store.add_many(records)
    return store
