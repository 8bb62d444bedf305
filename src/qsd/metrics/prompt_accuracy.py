"""Prompt accuracy: the share of generated images that the digit classifier assigns to the prompted digit
(the embedded defaults' analogue of CLIP score)."""

from __future__ import annotations

import torch

from qsd.metrics.classifier import DigitClassifier


@torch.no_grad()
def prompt_accuracy(classifier: DigitClassifier, images: torch.Tensor, targets: torch.Tensor,
                    batch_size: int = 1000) -> float:
    predictions = torch.cat([classifier(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    return (predictions == targets).float().mean().item()
