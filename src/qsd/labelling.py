"""Labelling one quantization configuration (paper §3.2's data collection): apply the configuration,
generate the protocol's images under common random numbers, and return FID, prompt accuracy and the cheap
proxies against the float model.

A `Labeller` prepares everything that does not depend on the configuration once — prompt conditions, the
cached FID reference statistics, the float model's images and probe trajectory — so one label costs one
batched generation plus feature extraction of the generated images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qsd import digits
from qsd.config import QuantConfig
from qsd.metrics.classifier import ClassifierFeatures, DigitClassifier, load_classifier
from qsd.metrics.fid import FidScorer, reference_statistics
from qsd.metrics.prompt_accuracy import prompt_accuracy
from qsd.metrics.proxies import eps_error, record_probe, sample_mse
from qsd.models.base import DiffusionModel
from qsd.multiquant import MultiQuantizer
from qsd.sampling import SamplingProtocol, generate


@dataclass
class FeatureBackend:
    """What FID and prompt accuracy use for one reference set."""

    feature: nn.Module
    image_shape: tuple[int, int, int]
    reference_images: Callable[[], torch.Tensor]
    classifier: DigitClassifier | None


def feature_backend(fid_reference: str, checkpoint_dir: Path | None = None) -> FeatureBackend:
    """The feature network of a model's FID reference set: the digit classifier for the embedded defaults,
    the FID Inception-v3 (local weights) and a local image folder for the paper's models."""
    if fid_reference == "mnist16-train":
        classifier = load_classifier(checkpoint_dir)
        return FeatureBackend(ClassifierFeatures(classifier), (1, digits.RESOLUTION, digits.RESOLUTION),
                              lambda: digits.load_digits("train")[0], classifier)
    from qsd.metrics.inception import load_fid_inception
    from qsd.metrics.reference_images import load_reference_images

    return FeatureBackend(load_fid_inception(), (3, 299, 299), lambda: load_reference_images(fid_reference), None)


def fid_scorer(backend: FeatureBackend, reference: str, cache_dir: Path | None = None) -> FidScorer:
    """FID against `reference` under `backend`'s features, reference statistics from the on-disk cache."""
    stats, _ = reference_statistics(backend.feature, backend.image_shape, reference, backend.reference_images,
                                    cache_dir)
    return FidScorer(backend.feature, backend.image_shape, stats)


class Labeller:
    """Labels configurations of `model` under a fixed sampling protocol (see module docstring)."""

    def __init__(self, model: DiffusionModel, protocol: SamplingProtocol, n_probe: int = 16, batch_size: int = 256,
                 progress: bool = True, backend: FeatureBackend | None = None, cache_dir: Path | None = None) -> None:
        self.model, self.protocol, self.batch_size, self.progress = model, protocol, batch_size, progress
        self.backend = backend or feature_backend(model.entry.fid_reference)
        self.fid = fid_scorer(self.backend, model.entry.fid_reference, cache_dir)
        _, self.targets = model.protocol_prompts(protocol.n_images)
        self.float_images = self.generate()
        self.probe = record_probe(model, protocol, min(n_probe, protocol.n_images), batch_size)

    def generate(self) -> torch.Tensor:
        return generate(self.model, self.protocol, batch_size=self.batch_size, progress=self.progress)

    def score(self, images: torch.Tensor) -> dict[str, float]:
        """FID and (where the model has a classifier) prompt accuracy of `images`."""
        scores = {"fid": self.fid(images)}
        if self.backend.classifier is not None and self.targets is not None:
            scores["prompt_accuracy"] = prompt_accuracy(self.backend.classifier, images, self.targets)
        return scores

    def label(self) -> dict[str, float]:
        """Labels of the model's current weights (whatever configuration is applied)."""
        start = time.perf_counter()
        images = self.generate()
        labels = self.score(images)
        labels["sample_mse"] = sample_mse(images, self.float_images)
        labels["eps_error"] = eps_error(self.model, self.probe)
        labels["seconds"] = time.perf_counter() - start
        return labels

    def label_config(self, multiquantizer: MultiQuantizer, config: QuantConfig) -> dict[str, float]:
        """Apply `config`, label it, restore the float weights; adds average bits and summed layer error."""
        multiquantizer.apply(config)
        try:
            labels = self.label()
        finally:
            multiquantizer.restore()
        cost = multiquantizer.cost(config)
        return labels | {"avg_bits": cost["avg_bits"], "quantized_bytes": cost["quantized_bytes"],
                         "summed_error": multiquantizer.summed_error(config)}
