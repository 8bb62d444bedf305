"""Labelling one quantization configuration (paper §3.2's data collection): apply the configuration,
generate the protocol's images under common random numbers, and return FID, prompt accuracy, CLIP score (text
models, given a local CLIP) and the cheap proxies against the float model.

A `Labeller` prepares everything that does not depend on the configuration once — prompt conditions, the
cached FID reference statistics, the float model's images and probe trajectory — so one label costs one
batched generation plus feature extraction of the generated images.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from qsd.config import QuantConfig
from qsd.errors import UnsupportedSpecError
from qsd.metrics.clip_score import clip_score, clip_score_metric
from qsd.metrics.features import FeatureBackend
from qsd.metrics.fid import fid_scorer
from qsd.metrics.prompt_accuracy import prompt_accuracy
from qsd.metrics.proxies import eps_error, probe_from_trajectory, sample_mse
from qsd.models import feature_backend
from qsd.models.base import DiffusionModel
from qsd.multiquant import MultiQuantizer
from qsd.sampling import SamplingProtocol, Trajectory, generate


def clip_metric(model: DiffusionModel, clip_dir: str | None):
    """CLIP score metric of the local CLIP in `clip_dir` for a text-conditioned `model`; None without `clip_dir`."""
    if clip_dir is None:
        return None
    if model.entry.conditioning != "text":
        raise UnsupportedSpecError(
            f"clip_dir given for {model.entry.model_id!r}, whose conditioning is {model.entry.conditioning!r}; CLIP "
            "score compares images with captions, so only text-conditioned models take it: pass clip_dir=None"
        )
    return clip_score_metric(clip_dir)


class Labeller:
    """Labels configurations of `model` under a fixed sampling protocol (see module docstring). With `clip_dir` (a
    local CLIP directory, `qsd.metrics.clip_score`) a text-conditioned model's labels include `clip_score`."""

    def __init__(self, model: DiffusionModel, protocol: SamplingProtocol, n_probe: int = 16, batch_size: int = 256,
                 progress: bool = True, backend: FeatureBackend | None = None, cache_dir: Path | None = None,
                 clip_dir: str | None = None) -> None:
        self.model, self.protocol, self.batch_size, self.progress = model, protocol, batch_size, progress
        self.backend = backend or feature_backend(model.entry.fid_reference)
        self.fid = fid_scorer(self.backend, model.entry.fid_reference, cache_dir)
        self.clip = clip_metric(model, clip_dir)
        _, self.targets = model.protocol_prompts(protocol.n_images)
        trajectory = Trajectory([], [])  # the float images are sampled once: their first batch gives the probe
        self.float_images = self.generate(trajectory=trajectory)
        self.probe = probe_from_trajectory(model, protocol, trajectory, min(n_probe, protocol.n_images, batch_size),
                                           batch_size)

    def generate(self, protocol: SamplingProtocol | None = None, trajectory: Trajectory | None = None) -> torch.Tensor:
        """The images of the model's current weights under `protocol` (default: the labelling protocol)."""
        return generate(self.model, protocol or self.protocol, batch_size=self.batch_size, progress=self.progress,
                        trajectory=trajectory)

    def seed_scores(self, noise_seeds: int, model: DiffusionModel | None = None,
                    keep_images: int = 0) -> tuple[dict, torch.Tensor]:
        """`model` sampled at noise seeds protocol.seed + 0 … `noise_seeds` − 1 (None: the labeller's model with its
        float weights in place, whose images at the first seed are the float images sampled once): FID mean, std
        (ddof 1) and per seed, the mean prompt accuracy (and CLIP score) over the seeds, the first seed's pixel MSE to
        the float images (`sample_mse`, as in a label), and the first seed's first `keep_images` images. How much FID
        moves with the noise alone is the yardstick of FID differences; the MSE shows whether a lower FID comes with
        images closer to the float model's."""
        scores, first = [], None
        for i in range(noise_seeds):
            protocol = dataclasses.replace(self.protocol, seed=self.protocol.seed + i)
            if model is None:
                images = self.float_images if i == 0 else self.generate(protocol)
            else:
                images = generate(model, protocol, batch_size=self.batch_size, progress=self.progress)
            scores.append(self.score(images))
            first = images if first is None else first
        fids = [s["fid"] for s in scores]
        columns = {"fid_mean": float(np.mean(fids)), "fid_std": float(np.std(fids, ddof=1)) if len(fids) > 1 else 0.0,
                   "fid_seeds": fids, "sample_mse": sample_mse(first, self.float_images)}
        for metric in ("prompt_accuracy", "clip_score"):
            if metric in scores[0]:
                columns[metric] = float(np.mean([s[metric] for s in scores]))
        return columns, first[:keep_images]

    def score(self, images: torch.Tensor) -> dict[str, float]:
        """FID, (where the model has a classifier) prompt accuracy and (given a CLIP) CLIP score of `images`."""
        scores = {"fid": self.fid(images)}
        if self.backend.classifier is not None and self.targets is not None:
            scores["prompt_accuracy"] = prompt_accuracy(self.backend.classifier, images, self.targets)
        if self.clip is not None:
            self.clip.reset()  # clip_score accumulates: score these images alone
            captions, _ = self.model.protocol_prompts(self.protocol.n_images)
            scores["clip_score"] = clip_score(images, captions, self.clip)
        return scores

    def label(self, images: torch.Tensor | None = None) -> dict[str, float]:
        """Labels of the model's current weights (whatever configuration is applied), from `images` when they were
        already sampled from those weights under the protocol."""
        start = time.perf_counter()
        images = self.generate() if images is None else images
        labels = self.score(images)
        labels["sample_mse"] = sample_mse(images, self.float_images)
        labels["eps_error"] = eps_error(self.model, self.probe)
        labels["seconds"] = time.perf_counter() - start
        return labels

    def label_config(self, multiquantizer: MultiQuantizer, config: QuantConfig) -> dict[str, float]:
        """Apply `config`, label it, restore the float weights; adds average bits and summed layer error."""
        multiquantizer.apply(config)
        try:  # the float model's images were sampled when the labeller was made
            labels = self.label(self.float_images if all(s is None for s in config.values()) else None)
        finally:
            multiquantizer.restore()
        cost = multiquantizer.cost(config)
        return labels | {"avg_bits": cost["avg_bits"], "quantized_bytes": cost["quantized_bytes"],
                         "summed_error": multiquantizer.summed_error(config)}
