"""Registered models: the embedded defaults, the paper's models (local weights) and random test models.

The registry's names (`get_entry`, `load_model`, ...) load on first use (PEP 562), because the registry imports the
embedded toy world, which itself builds on `qsd.models.base`: either side can then be imported first.
"""

from importlib import import_module

from qsd.models.base import DiffusionModel, ModelEntry, SamplerSettings

_REGISTRY_NAMES = ("DEFAULT_MODEL_ID", "ENTRIES", "MODEL_IDS", "feature_backend", "get_entry", "load_denoiser",
                   "load_model")

__all__ = ["DiffusionModel", "ModelEntry", "SamplerSettings", *_REGISTRY_NAMES]


def __getattr__(name: str) -> object:
    if name in _REGISTRY_NAMES:
        return getattr(import_module("qsd.models.registry"), name)
    raise AttributeError(f"module 'qsd.models' has no attribute {name!r}")
