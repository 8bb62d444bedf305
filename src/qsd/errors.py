"""Error types. Every message says what was received, what is accepted, and how to fix it (DESIGN rule 3)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class QsdError(Exception):
    """Base class of every error qsd raises on bad input."""


class UnknownLayerError(QsdError, KeyError):
    """A configuration names a layer the model does not have."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class MissingLayerError(QsdError):
    """A configuration leaves quantizable layers unassigned."""


class ModelMismatchError(QsdError):
    """A configuration or saved multiquantizer belongs to another model."""


class UnsupportedSpecError(QsdError, ValueError):
    """A quantization method or bit width that is not supported."""


class CorruptFileError(QsdError):
    """A saved file is unreadable or was written by something else."""


class ModelNotAvailableError(QsdError, FileNotFoundError):
    """A model's local weights are missing or its id is not registered."""


def closest_names(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The `n` candidates that look most like `name` (for 'did you mean' hints)."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.3)
