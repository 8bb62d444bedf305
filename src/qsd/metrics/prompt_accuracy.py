"""Prompt accuracy: the share of generated images that a classifier assigns to the prompted class (the embedded
defaults' analogue of CLIP score, with their digit classifier)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def prompt_accuracy(classifier: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                    batch_size: int = 1000) -> float:
    predictions = torch.cat([classifier(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    return (predictions == targets).float().mean().item()
