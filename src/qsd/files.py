"""Writing results safely and naming tensor contents: the one atomic write and the one tensor digest.

Every file qsd writes goes through `atomic_write`, so an interrupted run leaves the previous file or none, never
a half-written one (DESIGN rule 6: interrupted runs resume, bad files are refused). `tensor_digest` is the one
content hash of tensors: FID cache keys, the multiquantizer's float-weight checksum, the packed export's seal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary sibling of `path` (parent folders created), then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, data: object) -> Path:
    """`data` as indented JSON with sorted keys (anything JSON lacks written as its `str`), atomically."""
    text = json.dumps(data, indent=1, sort_keys=True, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def tensor_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 (hex) over each tensor's name, dtype, shape and bytes, in the order given."""
    digest = hashlib.sha256()
    for name, tensor in named_tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
