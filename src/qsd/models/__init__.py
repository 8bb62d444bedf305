"""Registered models: the embedded defaults, the paper's models (local weights) and random test models."""

from qsd.models.base import DiffusionModel, ModelEntry, SamplerSettings
from qsd.models.registry import (
    DEFAULT_MODEL_ID,
    ENTRIES,
    MODEL_IDS,
    feature_backend,
    get_entry,
    load_denoiser,
    load_model,
)

__all__ = ["DEFAULT_MODEL_ID", "ENTRIES", "MODEL_IDS", "DiffusionModel", "ModelEntry", "SamplerSettings",
           "feature_backend", "get_entry", "load_denoiser", "load_model"]
