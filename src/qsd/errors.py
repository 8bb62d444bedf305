"""The one error hierarchy. Every message says what was received, what is accepted, and how to fix it (DESIGN
rule 3). Each class also derives from the builtin a caller would expect (ValueError, KeyError, FileNotFoundError),
so `except ValueError` keeps working; qsd itself never raises a bare builtin error.

    QsdError
    ├── InvalidSettingError (ValueError) ── UnsupportedSpecError
    ├── UnknownLayerError (KeyError)
    ├── MissingLayerError
    ├── AlreadyQuantizedError
    ├── ModelMismatchError
    ├── SettingsMismatchError ── ProtocolMismatchError
    ├── CorruptFileError ── UnsafePickleError
    └── MissingFileError (FileNotFoundError) ── ModelNotAvailableError
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class QsdError(Exception):
    """Base class of every error qsd raises on bad input."""


class InvalidSettingError(QsdError, ValueError):
    """A setting or argument outside the values it accepts (an unknown name, a count below 1, ...)."""


class UnsupportedSpecError(InvalidSettingError):
    """A quantization method or bit width that is not supported."""


class UnknownLayerError(QsdError, KeyError):
    """A configuration names a layer the model does not have."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class MissingLayerError(QsdError):
    """A configuration leaves quantizable layers unassigned."""


class AlreadyQuantizedError(QsdError):
    """`quantize_` (or `export`) was called on weights that are already quantized."""


class ModelMismatchError(QsdError):
    """A configuration or saved multiquantizer belongs to another model."""


class SettingsMismatchError(QsdError):
    """A run was about to resume from a file made under other settings."""


class ProtocolMismatchError(SettingsMismatchError):
    """Labels made under one protocol were about to be written into a dataset made under another."""


class InfeasibleBudgetError(QsdError, ValueError):
    """No configuration fits a bit budget (it is below the smallest variants of every unit)."""


class CorruptFileError(QsdError):
    """A saved file is unreadable or was written by something else."""


class UnsafePickleError(CorruptFileError):
    """A pickle asked for something other than builtin containers and numbers (the original's file formats)."""


class MissingFileError(QsdError, FileNotFoundError):
    """A file that an earlier stage (or the installation) should have written is absent."""


class ModelNotAvailableError(MissingFileError):
    """A model's local weights are missing or its id is not registered."""


def closest_names(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The `n` candidates that look most like `name` (for 'did you mean' hints)."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.3)
