"""Which network FID looks through, per reference set (`FeatureBackend`). Light to import: the heavy
networks and metric packages load only when a backend is made."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class FeatureBackend:
    """What FID (and, where the reference set has classes, prompt accuracy) uses for one reference set: the
    feature network, the image shape it takes, the reference images (loaded only on a cache miss) and a
    classifier of the prompted class, if any."""

    feature: nn.Module
    image_shape: tuple[int, int, int]
    reference_images: Callable[[], torch.Tensor]
    classifier: nn.Module | None = None


def inception_backend(reference: str) -> FeatureBackend:
    """FID Inception-v3 (local weights) against the local image folder `reference` (the paper's models)."""
    from qsd.metrics.inception import load_fid_inception
    from qsd.metrics.reference_images import load_reference_images

    return FeatureBackend(load_fid_inception(), (3, 299, 299), lambda: load_reference_images(reference))
