"""Measurement: which UAQ range rule puts an embedded model in the paper's regime (docs/label_regime.md).

For one model at its entry's guidance: the float model's FID under 3 noise seeds, then uniform W4 and W3 UAQ
under each range rule (the paper's clipping search, min-max, the search scored by L4 and by L8), and uniform
K-Means-C / K-Means-A, all labelled by stage 02's `Labeller` (compiled, native dtype, FP16 overhead). For every
option it also reports where the weight error sits: the relative error on each layer's largest 1 % of
weights against the rest, and the share of a layer's largest |weight| the quantized layer keeps (median over
layers). `--keep-float a,b` keeps the units whose names contain any of those strings float (e.g. the output
layers), to find what dominates a uniform row.

Run:  .venv/bin/python benchmarks/uaq_range_rule.py --model tiny_pixart [--images 512] [--keep-float proj_out]
Last stdout line: one JSON object with every row (the paper's rule is the baseline it is compared with).
"""

from __future__ import annotations

import argparse
import json

import torch

from qsd.config import QuantSpec
from qsd.labelling import Labeller
from qsd.models import load_model
from qsd.multiquant import MultiQuantizer
from qsd.quantizers import QuantizerSettings
from qsd.sampling import SamplingProtocol, native_compute_dtype

RULES = {"paper": QuantizerSettings(), "min-max": QuantizerSettings(uaq_clip_ratios=(0.0,)),
         "search L4": QuantizerSettings(uaq_clip_p=4.0), "search L8": QuantizerSettings(uaq_clip_p=8.0)}


def where_the_error_sits(model, mq: MultiQuantizer, spec: QuantSpec) -> dict:
    """Relative error on the largest 1 % of each layer's weights vs the rest; share of the peak |w| kept."""
    modules = dict(model.denoiser.named_modules())
    top_err = top_pow = rest_err = rest_pow = 0.0
    peaks = []
    for unit in mq.units:
        w = unit.weight_slice(modules[unit.module].weight.detach()).float().reshape(-1)
        q = mq.option(unit.name, spec).dequantize().reshape(-1)
        top = torch.zeros_like(w, dtype=torch.bool)
        top[w.abs().topk(max(1, w.numel() // 100)).indices] = True
        err = (w - q) ** 2
        top_err, top_pow = top_err + err[top].sum().item(), top_pow + w[top].square().sum().item()
        rest_err, rest_pow = rest_err + err[~top].sum().item(), rest_pow + w[~top].square().sum().item()
        peaks.append((q.abs().max() / w.abs().max()).item())
    return {"rel_error_top1pct": round(top_err / top_pow, 5), "rel_error_rest": round(rest_err / rest_pow, 5),
            "peak_kept_median": round(float(torch.tensor(peaks).median()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny_pixart")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--keep-float", default="", help="comma-separated substrings of units kept float")
    args = parser.parse_args()
    model = load_model(args.model)
    sampler = model.entry.sampler
    protocol = SamplingProtocol(n_images=args.images, steps=sampler.steps, guidance=sampler.guidance,
                                compute_dtype=native_compute_dtype(), compile=True)
    labeller = Labeller(model, protocol, progress=False)
    float_fids = labeller.seed_scores(3)[0]["fid_seeds"]
    print(f"float FID over 3 seeds: {float_fids}", flush=True)
    keep = [k for k in args.keep_float.split(",") if k]
    builds = {rule: (settings, [QuantSpec("uaq", 4), QuantSpec("uaq", 3)]) for rule, settings in RULES.items()}
    builds["k-means"] = (QuantizerSettings(), [QuantSpec(m, b) for m in ("kmeans_c", "kmeans_a") for b in (4, 3)])
    rows = []
    for rule, (settings, options) in builds.items():
        mq = MultiQuantizer.build(model.denoiser, options, settings, progress=False)
        for spec in options:
            config = mq.uniform(spec).with_layers({u: None for u in mq.unit_names if any(k in u for k in keep)})
            labels = labeller.label_config(mq, config)
            rows.append({"rule": rule, "option": spec.key, "fid": round(labels["fid"], 3),
                         "prompt_accuracy": round(labels["prompt_accuracy"], 4),
                         "avg_bits": round(labels["avg_bits"], 4), "summed_error": round(labels["summed_error"], 4),
                         "sample_mse": round(labels["sample_mse"], 6), **where_the_error_sits(model, mq, spec)})
            print(rows[-1], flush=True)
    print(json.dumps({"model": args.model, "guidance": protocol.guidance, "images": args.images,
                      "kept_float": keep, "float_fid_seeds": [round(f, 3) for f in float_fids], "rows": rows}))


if __name__ == "__main__":
    main()
