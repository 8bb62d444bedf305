"""FID through torchmetrics' `FrechetInceptionDistance` with reference statistics computed once and cached.

The reference side (feature sum, feature outer-product sum, count — torchmetrics' own `real_*` states) is
computed once per (reference set, feature network) and stored as safetensors under `data/cache/fid/`; the
cache key includes a hash of the feature network's weights, so a retrained feature network never reuses
stale statistics. Each scoring call only extracts the features of the generated images (code.md §3: the
original re-extracted the whole reference folder for every configuration).

With fewer generated images than feature dimensions (n < d: a paper model's 2048-dim Inception features and a
few hundred images), the trace term is computed exactly in n dimensions (`low_rank_fid`) instead of from the
eigenvalues of a d x d product: seconds become milliseconds. With n >= d (the embedded models) torchmetrics'
computation is used unchanged, so their labels do not move.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from qsd.errors import InvalidSettingError
from qsd.files import atomic_write, tensor_digest
from qsd.metrics.features import FeatureBackend
from qsd.paths import project_root

REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def module_fingerprint(module: nn.Module) -> str:
    """16 hex digits of the digest of a module's state."""
    return tensor_digest(sorted(module.state_dict().items()))[:16]


def _new_metric(feature: nn.Module, image_shape: tuple[int, int, int]) -> FrechetInceptionDistance:
    return FrechetInceptionDistance(feature=feature, reset_real_features=False, normalize=True,
                                    input_img_size=image_shape)


def reference_statistics(feature: nn.Module, image_shape: tuple[int, int, int], reference: str,
                         images: Callable[[], torch.Tensor], cache_dir: Path | None = None,
                         batch_size: int = 500) -> tuple[dict[str, torch.Tensor], Path]:
    """The cached real-side statistics of `reference` under `feature`; `images()` (float [N, C, H, W] in
    [0, 1]) is called only on a cache miss. Returns the statistics and the cache file."""
    cache_dir = cache_dir or project_root() / "data" / "cache" / "fid"
    path = cache_dir / f"{reference}-{module_fingerprint(feature)}.safetensors"
    if path.is_file():
        return load_file(path), path
    metric = _new_metric(feature, image_shape)
    real = images()
    with torch.no_grad():
        for start in range(0, len(real), batch_size):
            metric.update(real[start:start + batch_size], real=True)
    stats = {name: getattr(metric, name).clone() for name in REAL_STATES}
    atomic_write(path, lambda tmp: save_file(stats, tmp, metadata={"reference": reference, "n_images": str(len(real))}))
    return stats, path


def low_rank_fid(reference: dict[str, torch.Tensor], features: torch.Tensor) -> float:
    """FID of generated `features` [n, d] against reference states, exact for any n, cheap when n < d.

    With B the centred generated features, Sigma_g = B^T B / (n-1), and the non-zero eigenvalues of
    Sigma_r Sigma_g are those of the symmetric PSD n x n matrix B Sigma_r B^T / (n-1), so
    tr sqrt(Sigma_r Sigma_g) is the sum of the square roots of its eigenvalues.
    """
    if len(features) < 2:
        raise InvalidSettingError(f"FID needs at least 2 generated images, got {len(features)}")
    features = features.double()
    count = reference["real_features_num_samples"].double()
    mean_real = reference["real_features_sum"].double() / count
    cov_real = (reference["real_features_cov_sum"].double() - count * torch.outer(mean_real, mean_real)) / (count - 1)
    mean_fake = features.mean(dim=0)
    centred = features - mean_fake
    n = len(features)
    cross = centred @ cov_real @ centred.T / (n - 1)
    trace_sqrt = torch.linalg.eigvalsh((cross + cross.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean_real - mean_fake).square().sum() + cov_real.trace() + centred.square().sum() / (n - 1)
    return float(distance - 2 * trace_sqrt)


class FidScorer:
    """FID of generated images against fixed reference statistics."""

    def __init__(self, feature: nn.Module, image_shape: tuple[int, int, int], reference: dict[str, torch.Tensor],
                 batch_size: int = 500) -> None:
        self.metric = _new_metric(feature, image_shape)
        self.reference = reference
        self.batch_size = batch_size
        for name in REAL_STATES:
            setattr(self.metric, name, reference[name].clone())

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> float:
        if len(images) < len(self.reference["real_features_sum"]):
            features = torch.cat([self.metric.inception(images[start:start + self.batch_size])
                                  for start in range(0, len(images), self.batch_size)])
            return low_rank_fid(self.reference, features)
        self.metric.reset()  # keeps the real side (reset_real_features=False)
        for start in range(0, len(images), self.batch_size):
            self.metric.update(images[start:start + self.batch_size], real=False)
        return float(self.metric.compute())


def fid_scorer(backend: FeatureBackend, reference: str, cache_dir: Path | None = None) -> FidScorer:
    """FID against `reference` under `backend`'s features, reference statistics from the on-disk cache."""
    stats, _ = reference_statistics(backend.feature, backend.image_shape, reference, backend.reference_images,
                                    cache_dir)
    return FidScorer(backend.feature, backend.image_shape, stats)
