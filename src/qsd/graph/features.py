"""The node-feature vocabulary of encoded denoiser graphs (paper §3.3; code.md §4 "node feature vector").

Every node of an encoded graph carries three things, the same for every denoiser so that one predictor can
read graphs of any family (and transfer between them):
  * `method`: a code in `METHOD_CODES` (weight nodes: the configured quantizer, or float; other nodes: none);
  * `role`: an index into `ROLES` (what the layer or the parameter-free operation does in the denoiser);
  * `x`: the numeric columns `NUMERIC_FEATURES` (zeros on nodes without weights).
"""

from __future__ import annotations

from qsd.config import METHODS

METHOD_CODES = ("none", "float", *METHODS)
"""`none` marks nodes without weights (combine operations, inputs); `float` a weight layer kept at FP16."""

WEIGHT_ROLES = (
    "t-embed", "c-embed", "pos-embed", "adaLN",
    "SA-Q", "SA-K", "SA-V", "SA-Out", "CA-Q", "CA-K", "CA-V", "CA-Out",
    "ctx-Q", "ctx-K", "ctx-V", "ctx-Out", "FF-1", "FF-2", "ctx-FF-1", "ctx-FF-2",
    "conv-in", "conv-out", "res-conv", "time-proj", "res-skip", "skip",
    "up-sample", "down-sample", "proj-in", "proj-out", "output",
    "linear", "conv",
)
"""Roles of weight layers; `linear` and `conv` are the generic fall-backs for layers no rule recognises."""
COMBINE_ROLES = ("add", "modulate", "attention", "norm", "concat")
"""Parameter-free operations kept as nodes: residual/skip sums, adaLN scale-shift-gate products, attention
(Q·K softmax ·V), normalisations and concatenations."""
INPUT_ROLES = ("input-x", "input-t", "input-c", "input-other")
"""The denoiser's inputs: latents, timestep, caption (encoder hidden states), anything else."""
ROLES = WEIGHT_ROLES + COMBINE_ROLES + INPUT_ROLES

NUMERIC_FEATURES = ("is_weight", "bits", "compression", "error", "log_size", "block_position")
"""Numeric columns of `x`, each in about [0, 1]:
  * `is_weight`: 1 on weight-layer nodes;
  * `bits`: weight bits / 16 (float layers 1);
  * `compression`: FP16 bits / quantized bits, overhead included (the original's `reduction`), / 16;
  * `error`: the layer's relative quantization error under its option (0 in float);
  * `log_size`: log2(number of weights) / 32;
  * `block_position`: (block index + 1) / (number of blocks + 1), 0 outside blocks — relative, so that
    denoisers of different depths share one scale.
"""
