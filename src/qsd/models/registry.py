"""Model registry: model id → `ModelEntry` (and a loader). Three kinds of entries:

- the embedded defaults `tiny_pixart` (the default), `tiny_sd`, `tiny_dit` (`qsd.embedded.models`),
  trained in-project, shipped in `data/checkpoints/`, and issue 30's deeper and wider PixArt-shaped candidates
  (`pixart_w256_d8`, ...), trained by `benchmarks/denoiser_candidates.py` into `build/candidates/`;
- the paper's models `pixart_alpha`, `pixart_sigma`, `hunyuan_dit`, `sdxl`, `sdv15`, `dit_xl2`
  (`qsd.models.paper`), loaded only from local diffusers directories;
- `random_<arch>`: the random-init tiny architectures of `qsd.models.random_init` (denoiser only, for tests).

The registry is where the method meets the embedded toy world (`qsd.embedded`): it is the one module of `qsd.models`
that imports it.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from qsd.embedded import classifier as embedded_classifier
from qsd.embedded import models as embedded
from qsd.errors import ModelNotAvailableError, closest_names
from qsd.metrics.features import FeatureBackend, inception_backend
from qsd.models import paper
from qsd.models.base import DiffusionModel, ModelEntry, SamplerSettings
from qsd.models.random_init import RANDOM_ARCHITECTURES, random_denoiser

DEFAULT_MODEL_ID = "tiny_pixart"

_RANDOM_CLASSES = {"pixart": "PixArtTransformer2DModel", "hunyuan_dit": "HunyuanDiT2DModel",
                   "dit": "DiTTransformer2DModel", "sd15_unet": "UNet2DConditionModel",
                   "sdxl_unet": "UNet2DConditionModel", "sd3": "SD3Transformer2DModel"}
_RANDOM = tuple(
    ModelEntry(f"random_{arch}", arch, _RANDOM_CLASSES[arch], "none", SamplerSettings(), "none",
               f"random-init tiny {arch} (qsd.models.random_init); denoiser only")
    for arch in RANDOM_ARCHITECTURES
)
ENTRIES: dict[str, ModelEntry] = {e.model_id: e for e in (*embedded.ENTRIES, *embedded.CANDIDATE_ENTRIES,
                                                           *paper.ENTRIES, *_RANDOM)}
MODEL_IDS = tuple(ENTRIES)


def feature_backend(fid_reference: str, checkpoint_dir: Path | None = None) -> FeatureBackend:
    """The feature network of a model's FID reference set: the digit classifier for the embedded defaults
    (from `checkpoint_dir`, default the shipped one), the FID Inception-v3 and a local image folder otherwise."""
    if fid_reference == embedded.FID_REFERENCE:
        return embedded_classifier.feature_backend(checkpoint_dir)
    return inception_backend(fid_reference)


def get_entry(model_id: str) -> ModelEntry:
    """The registry entry of `model_id`; an unknown id names the registered ones and the closest match."""
    if model_id not in ENTRIES:
        hints = closest_names(model_id, MODEL_IDS)
        raise ModelNotAvailableError(
            f"unknown model id {model_id!r}; registered: {', '.join(MODEL_IDS)}"
            + (f" (did you mean {hints[0]!r}?)" if hints else "")
        )
    return ENTRIES[model_id]


def load_model(model_id: str, **kwargs) -> DiffusionModel:
    """The loaded model (denoiser, conditioning, scheduler, decoder); `kwargs` go to the entry's loader
    (e.g. `root=` for the paper's models)."""
    entry = get_entry(model_id)
    if entry.loader is None:
        raise ModelNotAvailableError(f"{model_id!r} is a denoiser-only test model and cannot sample; "
                                     f"use load_denoiser({model_id!r}) or one of: "
                                     f"{', '.join(e.model_id for e in ENTRIES.values() if e.loader)}")
    return entry.loader(entry, **kwargs)


def load_denoiser(model_id: str, seed: int = 0, **kwargs) -> nn.Module:
    """Just the denoiser of `model_id` (random-init test models are seeded by `seed`)."""
    entry = get_entry(model_id)
    if entry.loader is None:
        return random_denoiser(entry.family, seed=seed)
    return load_model(model_id, **kwargs).denoiser
