"""CLIP score (Hessel et al., 2021) of generated images against their prompts, from a local CLIP directory.

CLIP score = max(0, 100 · mean cos(E_img(image), E_txt(caption))), computed by torchmetrics' `CLIPScore`.
The released Qua²SeDiMo code computes no CLIP score (research/code.md §3); it is an extra view of the
text-to-image models here. torchmetrics would fetch CLIP from the hub by name; instead it is handed a
`transformers` CLIPModel + CLIPProcessor loaded from `directory` (or `$QSD_CLIP_DIR`), e.g. a
`save_pretrained` copy of openai/clip-vit-large-patch14 (torchmetrics' default model).

transformers 5 returns a model output from `get_image_features`/`get_text_features` where torchmetrics
1.9 expects the projected embedding tensor; `ProjectedCLIP` returns that embedding (the output's
`pooler_output`, which transformers 5 sets to the projection).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from qsd.errors import ModelNotAvailableError, UnsupportedSpecError

CLIP_DIR_ENV = "QSD_CLIP_DIR"


class ProjectedCLIP(nn.Module):
    """A CLIPModel whose feature methods return the projected embeddings [B, D] as tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _embedding(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._embedding(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._embedding(self.model.get_text_features(*args, **kwargs))


def clip_dir(directory: str | os.PathLike | None = None) -> Path:
    """The local CLIP directory: `directory`, else `$QSD_CLIP_DIR`; it must hold a CLIPModel's
    `config.json` and the processor's `preprocessor_config.json`/`processor_config.json`."""
    chosen = directory or os.environ.get(CLIP_DIR_ENV)
    advice = (f"Save a CLIP model and its processor there (CLIPModel.save_pretrained + CLIPProcessor.save_pretrained, "
              f"e.g. of openai/clip-vit-large-patch14; nothing is downloaded) and pass directory=<dir> or set "
              f"{CLIP_DIR_ENV}=<dir>.")
    if not chosen:
        raise ModelNotAvailableError(f"no CLIP directory: none given and ${CLIP_DIR_ENV} is not set. {advice}")
    path = Path(chosen)
    has_processor = any((path / f).is_file() for f in ("preprocessor_config.json", "processor_config.json"))
    if not ((path / "config.json").is_file() and has_processor):
        raise ModelNotAvailableError(f"{path} is not a CLIP model directory (needs config.json and a processor "
                                     f"config). {advice}")
    return path


def clip_score_metric(directory: str | os.PathLike | None = None):
    """torchmetrics `CLIPScore` backed by the local CLIP in `directory` (see `clip_dir`). Its `update`
    takes uint8 images [B, 3, H, W] in [0, 255] and their captions."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    path = clip_dir(directory)

    def load():
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        return ProjectedCLIP(model), CLIPProcessor.from_pretrained(path, local_files_only=True)

    return CLIPScore(model_name_or_path=load)


def clip_score(images: torch.Tensor, captions: Sequence[str], metric) -> float:
    """CLIP score of `images` (floating, [B, 3, H, W] in [0, 1], as `DiffusionModel.decode` returns) against
    `captions`, accumulated into `metric` (a `clip_score_metric`; `metric.reset()` to start afresh); returns the
    running score. Greyscale images [B, 1, H, W] (the embedded models') are repeated to 3 channels for CLIP."""
    if not images.is_floating_point() or float(images.min()) < 0 or float(images.max()) > 1:
        raise UnsupportedSpecError("clip_score takes floating images in [0, 1] (DiffusionModel.decode output)")
    if len(captions) != images.shape[0]:
        raise UnsupportedSpecError(f"{images.shape[0]} images but {len(captions)} captions; give one caption each")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UnsupportedSpecError(f"clip_score takes images [B, 3, H, W] or greyscale [B, 1, H, W]; got shape "
                                   f"{tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    metric.update((images * 255).round().to(torch.uint8), list(captions))
    return float(metric.compute())
