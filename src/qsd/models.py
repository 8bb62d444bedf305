"""Model registry: model id -> denoiser. For now the random-init tiny architectures of `qsd.testing`
(`random_<arch>`); the trained embedded defaults and the paper's models (local weights) join here."""

from __future__ import annotations

from torch import nn

from qsd import testing
from qsd.errors import ModelNotAvailableError, closest_names

MODEL_IDS = tuple(f"random_{arch}" for arch in testing.ARCHITECTURES)


def load_denoiser(model_id: str, seed: int = 0) -> nn.Module:
    """The denoiser registered as `model_id` (random-init ones are seeded by `seed`)."""
    if model_id not in MODEL_IDS:
        hints = closest_names(model_id, MODEL_IDS)
        raise ModelNotAvailableError(
            f"unknown model id {model_id!r}; registered: {', '.join(MODEL_IDS)}"
            + (f" (did you mean {hints[0]!r}?)" if hints else "")
        )
    return testing.tiny_model(model_id.removeprefix("random_"), seed=seed)
