"""The released original's three weight quantizers, re-implemented as a yardstick (paper §3.1; code.md §1.1-1.3).

What `MultiQuantizer.init_{mse,kmeans,kmeans_all}` of the released code computed for one layer, kept as
slow as it was (Python loops over channels and over elements) because benchmarks time it against
`qsd.quantizers`. Every function takes the weight `[O, ...]` (dim 0 = output channel) and returns its
fake-quantized copy in the same dtype and shape (the original stored exactly this for K-Means; for UAQ
it stored Δ and z per channel and recomputed the same values on every forward).

Notation: x one output channel (or the flattened tensor for K-Means-A), b bits, x̂ its reconstruction.

UAQ (`init_mse`), per channel in a Python loop, in x's dtype (the original ran PixArt in float16):
  1. for r in 0, 0.1, ..., 0.9: max' = max(x)·(1-r), min' = min(x)·(1-r)
  2. Δ = (max' - min') / (2^b - 1), z = round(-min'/Δ), q = clamp(round(x/Δ) + z, 0, 2^b - 1), x̂ = (q - z)·Δ
  3. keep the candidate with the lowest mean(|x - x̂|^2.4)
K-Means-C (`init_kmeans`): per channel, sklearn `KMeans(min(2^b, numel), max_iter=100)` (k-means++ start),
  then each element replaced by its centroid in a Python loop, written into an array of x's dtype.
K-Means-A (`init_kmeans_all`): the same on the whole flattened tensor.

Where `qsd.quantizers.quantize_weight` differs (the algorithms are otherwise the same):
  * UAQ: ours rounds Δ and z to the parameter precision (`QuantizerSettings.param_dtype`, FP16 by default)
    and computes in float32. With `param_dtype="float32"` on a float32 weight both give the same x̂.
  * K-Means: the original's Lloyd iterations from a random start reach a local optimum (`seed` fixes
    sklearn's `random_state`, which the original left unset); ours takes the optimal codebook from a DP
    (K-Means-A always, K-Means-C with `kmeans_solver="exact"`) and rounds it to the parameter precision.
    At float32 precision its squared error is therefore never above the original's.
  * A constant channel gives Δ = 0 and a NaN score for every ratio: the original's result there is
    undefined; this one returns the channel unchanged (ours reproduces it exactly as well).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.cluster import KMeans

from qsd.config import QuantSpec

CLIP_PERCENT = range(0, 100, 10)
"""UAQ's shrink ratios, in percent, as the original's loop wrote them."""
CLIP_P = 2.4
"""UAQ's candidate score: mean |x - x̂|^p (the original's `lp_loss(p=2.4)`)."""
KMEANS_MAX_ITER = 100


def _check(method: str, bits: int) -> None:
    QuantSpec(method, bits)  # raises UnsupportedSpecError for an unknown method or bit width


def original_uaq_channel(x: torch.Tensor, bits: int) -> torch.Tensor:
    """UAQ of one output channel `x` in its own dtype: the best of the 10 shrink ratios by mean |x - x̂|^2.4."""
    xmax, xmin = x.max(), x.min()
    best_score, best = math.inf, x
    for pct in CLIP_PERCENT:
        hi, lo = xmax * (1 - pct / 100), xmin * (1 - pct / 100)
        delta = (hi - lo) / (2**bits - 1)
        zero = torch.round(-lo / delta)
        q = torch.clamp(torch.round(x / delta) + zero, 0, 2**bits - 1)
        x_hat = (q - zero) * delta
        score = (x - x_hat).abs().pow(CLIP_P).mean()
        if score < best_score:
            best_score, best = score, x_hat
    return best


def original_uaq(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """UAQ of `weight` [O, ...]: `original_uaq_channel` in a Python loop over the output channels."""
    _check("uaq", bits)
    weight = weight.detach().cpu()
    out = torch.empty_like(weight)
    for c in range(weight.shape[0]):
        out[c] = original_uaq_channel(weight[c], bits)
    return out


def original_kmeans_1d(values: np.ndarray, bits: int, seed: int | None = None) -> np.ndarray:
    """K-Means of a flat array: sklearn KMeans (k-means++, max_iter 100), then a per-element write-back loop."""
    km = KMeans(n_clusters=min(2**bits, values.size), max_iter=KMEANS_MAX_ITER, random_state=seed)
    km.fit(values.reshape(-1, 1))
    centers, labels = km.cluster_centers_, km.labels_
    out = values.copy()
    for i in range(out.shape[0]):
        out[i] = centers[labels[i], 0]
    return out


def original_kmeans_c(weight: torch.Tensor, bits: int, seed: int | None = None) -> torch.Tensor:
    """K-Means-C of `weight` [O, ...]: one `original_kmeans_1d` per output channel, in a Python loop."""
    _check("kmeans_c", bits)
    rows = weight.detach().cpu().reshape(weight.shape[0], -1).numpy()
    return torch.from_numpy(np.stack([original_kmeans_1d(r, bits, seed) for r in rows])).reshape(weight.shape)


def original_kmeans_a(weight: torch.Tensor, bits: int, seed: int | None = None) -> torch.Tensor:
    """K-Means-A of `weight` [O, ...]: one `original_kmeans_1d` over the whole flattened tensor."""
    _check("kmeans_a", bits)
    flat = weight.detach().cpu().reshape(-1).numpy()
    return torch.from_numpy(original_kmeans_1d(flat, bits, seed)).reshape(weight.shape)


def original_quantize(method: str, weight: torch.Tensor, bits: int, seed: int | None = None) -> torch.Tensor:
    """The original's fake-quantized `weight` for `method` ("uaq", "kmeans_c", "kmeans_a") at `bits`.

    `seed` is sklearn's `random_state` for the K-Means methods (None, as in the original: not reproducible).
    """
    _check(method, bits)
    if method == "uaq":
        return original_uaq(weight, bits)
    if method == "kmeans_c":
        return original_kmeans_c(weight, bits, seed)
    return original_kmeans_a(weight, bits, seed)
