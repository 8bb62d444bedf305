"""Benchmark: building the multiquantizer (all 6 weight-quantization options of every layer).

Measures two things, on synthetic weights with the exact PixArt-α (PixArt-XL-2-512) layer set:

(a) Full build. `MultiQuantizer.build` over every Linear/Conv of a module with PixArt-α's 287 weight
    layers (`qsd.reference.pixart_alpha`: diffusers names and shapes, d = 1152, 28 blocks, about 0.61 B
    weights, fp16 like the shipped checkpoint): wall seconds and peak RSS. Weights are heavy-tailed
    (Student-t, 4 degrees of freedom) times a log-normal per-output-channel scale, scaled like real layers
    (≈ 1/sqrt(fan_in)), generated from a fixed seed per layer name and rounded to float16. `stored_gb` is
    what the built multiquantizer keeps (uint8 codes + lookup tables), for comparison with the peak RSS
    (GB = 2^30 B).

(b) Against the original procedure: the re-implementation of Qua2SeDiMo's `MultiQuantizer` init in
    `qsd.reference.original_quantizers`, run in this process on the same weights: UAQ as a Python loop
    over output channels with the 10-ratio clipping search scored by mean(|x - x̂|^2.4); K-Means-C as one
    sklearn `KMeans(max_iter=100)` per output channel; K-Means-A as one sklearn `KMeans` over the whole
    tensor; both K-Means followed by the per-element Python write-back loop. As in the original (which
    ran PixArt in fp16), UAQ computes in the weight's dtype (float16) and the K-Means results are written
    back into a float16 array. Ours is `qsd.quantizers.quantize_weight` on exactly the same inputs (one
    call covers both bit widths). Subset: a fixed sample of output channels (`--rows`) of `attn1.to_q`
    [1152, 1152], `ff.net.0.proj` [4608, 1152] and `ff.net.2` [1152, 4608] of block 0 for UAQ and
    K-Means-C (rows are independent there); for K-Means-A the whole `attn1.to_q` tensor. Both at 3 and 4
    bits. Errors are `qsd.quantizers.relative_error` for both. The measured per-row / per-element costs
    of the original are also extrapolated to the layers built in (a) (`original_build_estimate_s`, a
    rough estimate).
    Ours uses the default settings: K-Means-A's codebook is the exact DP optimum over the fp16 histogram,
    K-Means-C's come from the "coarse_to_fine" DP, which is not guaranteed optimal; `kmeans_c_gap_vs_exact`
    measures it on the same K-Means-C rows: per bit width, the mean and max over rows of
    SSE(coarse_to_fine) / SSE(exact DP) - 1 and the share of rows above 0.
    Both are timed after a warm-up as the fastest of `--repeats` runs (sklearn gets a fixed
    random_state, so its repeats are identical). Same threads for both (torch, numba and sklearn's
    OpenMP all use the machine's cores); on a loaded machine OpenMP spin-waiting makes single runs of
    either side many times slower, hence the minimum.

Run:  .venv/bin/python benchmarks/multiquantizer.py [--quick] [--rows 128] [--repeats 3]
      (--quick: only blocks 0-1 plus the non-block layers in (a); (b) is unchanged.)
The last stdout line is one JSON object; progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import statistics
import time
import zlib

import torch
from torch import nn
from tqdm import tqdm

from qsd import MultiQuantizer
from qsd.config import METHODS
from qsd.layers import QUANTIZABLE_TYPES
from qsd.quantizers import QuantizerSettings, quantize_weight, relative_error
from qsd.quantizers.kmeans import optimal_codebooks
from qsd.reference import original_quantize, pixart_alpha_layers
from qsd.reference.pixart_alpha import N_BLOCKS

BITS = (3, 4)
GEN_CHUNK_ELEMENTS = 1 << 22
SUBSET_LAYERS = (
    "transformer_blocks.0.attn1.to_q",
    "transformer_blocks.0.ff.net.0.proj",
    "transformer_blocks.0.ff.net.2",
)
KMEANS_A_LAYER = SUBSET_LAYERS[0]


# ---------------------------------------------------------------------------------------------- model
@torch.no_grad()
def fill_heavy_tailed(weight: torch.Tensor, generator: torch.Generator) -> None:
    """In place: Student-t(4) / sqrt(2·fan_in) times a log-normal per-output-channel scale, as float16.

    t(4) = z / sqrt(χ²₄ / 4) with χ²₄ = -2·log(U₁U₂); its variance is 2, hence the sqrt(2).
    Generated in row chunks so that at most GEN_CHUNK_ELEMENTS float32 temporaries exist at once.
    """
    rows = weight.view(weight.shape[0], -1)
    out_ch, fan_in = rows.shape
    scale = torch.exp(0.5 * torch.randn(out_ch, 1, generator=generator)) / math.sqrt(2.0 * fan_in)
    step = max(1, GEN_CHUNK_ELEMENTS // fan_in)
    for start in range(0, out_ch, step):
        n = min(step, out_ch - start)
        z = torch.randn(n, fan_in, generator=generator)
        log_u = torch.log1p(-torch.rand(2, n, fan_in, generator=generator)).sum(dim=0)
        chi2 = (-2.0 * log_u).clamp_min(1e-12)
        rows[start : start + n] = (z * torch.sqrt(4.0 / chi2) * scale[start : start + n]).half()


def build_model(n_blocks: int, seed: int) -> nn.Module:
    """PixArt-α layer set with `n_blocks` blocks; each layer seeded by (seed, its name), biases zero."""
    model = pixart_alpha_layers(n_blocks)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZABLE_TYPES)]
    for name, module in tqdm(layers, desc="weights", unit="layer"):
        generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
        fill_heavy_tailed(module.weight.data, generator)
        module.bias.data.zero_()
    return model


# ---------------------------------------------------------------------------- the two implementations
def ours(method: str, rows: torch.Tensor) -> dict[int, torch.Tensor]:
    """Our fake-quantized weights for `method` at every bit width in BITS (one call)."""
    return {b: qw.dequantize() for b, qw in quantize_weight(rows, method, BITS).items()}


# ------------------------------------------------------------------------------------- measurements
def measure_build(model: nn.Module) -> tuple[dict, list[tuple[int, int]]]:
    """(a): time MultiQuantizer.build; returns the results and each unit's (rows, elements per row)."""
    start = time.perf_counter()
    mq = MultiQuantizer.build(model, progress=True)
    build_s = time.perf_counter() - start
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    table = mq.search_space()
    shapes = [tuple(mq.quantized[name][mq.options[0]].codes.shape) for name in mq.unit_names]
    stored = [t for options in mq.quantized.values() for qw in options.values() for t in (qw.codes, qw.lut)]
    result = {
        "pixart_alpha_build_s": build_s,
        "peak_rss_gb": peak_rss_gb,
        "stored_gb": sum(t.numel() * t.element_size() for t in stored) / 1024**3,  # codes + lookup tables
        "n_units": len(mq.unit_names),
        "mean_error_by_option": table.groupby("option")["error"].mean().to_dict(),
    }
    del mq, table, stored
    gc.collect()
    return result, shapes


def subset_inputs(model: nn.Module, n_rows: int, seed: int) -> dict[tuple[str, str], torch.Tensor]:
    """(method, layer) -> the fp16 tensor both implementations quantize (sampled rows or whole tensor)."""
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    for layer in SUBSET_LAYERS:
        weight = modules[layer].weight.detach()
        rows = torch.randperm(weight.shape[0], generator=generator)[:n_rows].sort().values
        sample = weight[rows]  # advanced indexing copies
        inputs["uaq", layer] = inputs["kmeans_c", layer] = sample
    inputs["kmeans_a", KMEANS_A_LAYER] = modules[KMEANS_A_LAYER].weight.detach().clone()
    return inputs


def warm_up(seed: int) -> None:
    """One small call of every code path, so JIT compilation and first-call costs are not timed."""
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(seed)).half()
    for method in METHODS:
        ours(method, x)
        original_quantize(method, x, BITS[0], seed)


def best_of(repeats: int, fn, *args):
    """(fastest wall seconds over `repeats` calls, the last result): the min resists load from other processes."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def compare_with_original(inputs: dict, repeats: int, seed: int, original_dtype: torch.dtype) -> list[dict]:
    """(b): one record per (method, layer, bits) with both errors; the original computes in `original_dtype`."""
    warm_up(seed)
    records = []
    for (method, layer), rows in tqdm(inputs.items(), desc="original vs ours", unit="case"):
        w = rows.float()
        ours_s, mine = best_of(repeats, ours, method, rows)
        their_rows = rows.to(original_dtype)
        for b in BITS:
            original_s, theirs = best_of(repeats, original_quantize, method, their_rows, b, seed)
            ours_err, orig_err = relative_error(w, mine[b]), relative_error(w, theirs.float())
            records.append(
                {
                    "method": method,
                    "layer": layer,
                    "shape": list(rows.shape),
                    "bits": b,
                    "original_s": original_s,
                    "ours_s": ours_s / len(BITS),  # one call covers every bit width; split evenly
                    "ours_error": ours_err,
                    "original_error": orig_err,
                    "error_ratio": ours_err / orig_err,
                }
            )
    return records


def kmeans_c_gap(inputs: dict) -> dict[str, dict[str, float]]:
    """Per bit width: relative SSE gap of the default K-Means-C solver to the exact DP over the subset rows."""
    gaps: dict[int, list[torch.Tensor]] = {b: [] for b in BITS}
    for (method, _), rows in inputs.items():
        if method != "kmeans_c":
            continue
        x = rows.double()
        books = {s: optimal_codebooks(x, [1 << b for b in BITS], s) for s in ("coarse_to_fine", "exact")}
        for a, b in enumerate(BITS):
            sse = {s: ((x[:, :, None] - c[:, a, None, : 1 << b]) ** 2).min(2).values.sum(1) for s, c in books.items()}
            gaps[b].append(sse["coarse_to_fine"] / sse["exact"] - 1)
    stats = {}
    for b, parts in gaps.items():
        g = torch.cat(parts)
        stats[f"{b}bit"] = {
            "mean": g.mean().item(),
            "max": g.max().item(),
            "share_above_0": (g > 1e-12).double().mean().item(),
        }
    return stats


def original_cost_model(records: list[dict]) -> dict[str, tuple[float, float]]:
    """Per method: (a, b) such that the original takes ≈ rows·(a + b·N) s on a [rows, N] weight (both bits).

    Per-channel methods: the line through the mean measured per-row cost at the shortest and longest
    row length N. K-Means-A (one measured tensor): a = 0, b = its measured seconds per element.
    """
    model = {}
    for method in METHODS:
        per_row: dict[int, list[float]] = {}
        for layer in dict.fromkeys(r["layer"] for r in records if r["method"] == method):
            rs = [r for r in records if r["method"] == method and r["layer"] == layer]
            rows, n = rs[0]["shape"][0], math.prod(rs[0]["shape"][1:])
            per_row.setdefault(n, []).append(sum(r["original_s"] for r in rs) / rows)
        points = sorted((n, statistics.mean(v)) for n, v in per_row.items())
        (n0, t0), (n1, t1) = points[0], points[-1]
        slope = (t1 - t0) / (n1 - n0) if n1 > n0 else t0 / n0
        model[method] = (max(0.0, t0 - slope * n0), slope)
    return model


def estimate_original_build(records: list[dict], shapes: list[tuple[int, int]]) -> float:
    """Rough seconds the original would need for the layers built in (a), from the measured costs."""
    cost = original_cost_model(records)
    total = 0.0
    for rows, n in shapes:
        for method in ("uaq", "kmeans_c"):
            a, b = cost[method]
            total += rows * (a + b * n)
        total += rows * n * cost["kmeans_a"][1]
    return total


def summarise(records: list[dict]) -> dict:
    """Totals, speedup and mean error ratio, overall and per method."""

    def block(rs: list[dict]) -> dict:
        orig_s, ours_s = sum(r["original_s"] for r in rs), sum(r["ours_s"] for r in rs)
        ratios = [r["error_ratio"] for r in rs]
        return {
            "original_s": orig_s,
            "ours_s": ours_s,
            "speedup": orig_s / ours_s,
            "error_ratio": sum(ratios) / len(ratios),
            "error_ratio_min": min(ratios),
            "error_ratio_max": max(ratios),
        }

    per_method = {}
    for method in METHODS:
        rs = [r for r in records if r["method"] == method]
        entries = [
            {k: r[k] for k in ("layer", "shape", "bits", "ours_error", "original_error", "error_ratio")} for r in rs
        ]
        per_method[method] = {**block(rs), "entries": entries}
    return {"overall": block(records), "per_method": per_method}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="build only blocks 0-1 plus non-block layers")
    parser.add_argument("--rows", type=int, default=128, help="output channels sampled per subset layer")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case and implementation (min kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--original-dtype",
        choices=("float16", "float32"),
        default="float16",
        help="arithmetic of the original's UAQ and dtype of its K-Means write-back (the original: float16)",
    )
    args = parser.parse_args()

    n_blocks = 2 if args.quick else N_BLOCKS
    start = time.perf_counter()
    model = build_model(n_blocks, args.seed)
    gen_s = time.perf_counter() - start
    n_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, QUANTIZABLE_TYPES))
    print(f"PixArt-α layer set, {n_blocks} blocks: {n_weights:,} weights ({n_weights / 1e9:.3f} B), fp16")

    build, shapes = measure_build(model)
    print(f"MultiQuantizer.build: {build['pixart_alpha_build_s']:.1f} s, peak RSS {build['peak_rss_gb']:.2f} GB")

    inputs = subset_inputs(model, args.rows, args.seed)
    records = compare_with_original(inputs, args.repeats, args.seed, getattr(torch, args.original_dtype))
    summary = summarise(records)
    overall = summary["overall"]
    gap = kmeans_c_gap(inputs)
    estimate_s = estimate_original_build(records, shapes)
    print(
        f"subset: original {overall['original_s']:.2f} s, ours {overall['ours_s']:.3f} s "
        f"(x{overall['speedup']:.0f}); mean error ratio ours/original {overall['error_ratio']:.4f}"
    )
    result = {
        "name": "multiquantizer",
        "quick": args.quick,
        "speedup_vs_original": overall["speedup"],
        "error_ratio_vs_original": overall["error_ratio"],
        **build,
        "n_weights": n_weights,
        "n_blocks": n_blocks,
        "weight_generation_s": gen_s,
        "original_build_estimate_s": estimate_s,
        "build_speedup_estimate": estimate_s / build["pixart_alpha_build_s"],
        "subset": (
            f"block 0 of the same weights; UAQ and K-Means-C: {args.rows} sampled output channels of each of "
            f"{', '.join(SUBSET_LAYERS)}; K-Means-A: the whole {KMEANS_A_LAYER} tensor; bits {list(BITS)}; "
            f"original computes in {args.original_dtype}; times = fastest of {args.repeats} runs each"
        ),
        "subset_original_s": overall["original_s"],
        "subset_ours_s": overall["ours_s"],
        "kmeans_c_gap_vs_exact": gap,
        "settings": QuantizerSettings().to_json(),
        "per_method": summary["per_method"],
        "original_dtype": args.original_dtype,
        "threads": torch.get_num_threads(),
        "seed": args.seed,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    with torch.no_grad():
        main()
