"""Benchmark: seconds per labelled configuration, qsd's labelling engine vs the released original's
naive protocol, on the embedded default models (issue 3 / research/performance.md §4.4).

qsd (`qsd.labelling.Labeller.label_config`): a uniform W4 K-Means-C configuration applied from the
multiquantizer, `--images` images at `--steps` DPM-Solver++ steps with guidance batched with the
conditional pass (batch 256), captions encoded once, images kept in memory, FID against cached reference
statistics, prompt accuracy, plus the two proxies.

Naive (the original's evaluation loop, re-implemented here on the same model and configuration): batch 1,
the caption re-encoded for every image, every image written to PNG and read back, reference features
recomputed for the FID of every configuration. It is timed on the first `--naive-images` images and its
per-image cost extrapolated to `--images` (the reference-feature cost is added once, as measured).

Both are measured in each compute dtype of `--dtypes` (the denoiser under bfloat16 autocast, the stage-02
default, and plain float32), qsd and naive always in the same dtype; the first dtype is the headline.

Label noise: FID of the float model under 3 noise seeds (`fid_seed_spread` = max − min) and the FID
difference between two labellings of the same configuration (`fid_repeat_diff`, must be 0).

Run:  .venv/bin/python benchmarks/label_throughput.py [--models tiny_pixart,tiny_sd,tiny_dit]
Last stdout line: one JSON object (s_per_config and speedup_vs_naive refer to tiny_pixart in the first dtype;
`*_float32` keys to float32).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import time

import numpy as np
import torch
from PIL import Image
from torchmetrics.image.fid import FrechetInceptionDistance

from qsd.captions import caption_encoder
from qsd.config import QuantSpec
from qsd.labelling import Labeller, feature_backend
from qsd.metrics.prompt_accuracy import prompt_accuracy
from qsd.models import load_model
from qsd.multiquant import MultiQuantizer
from qsd.sampling import SamplingProtocol, generate, guidance_condition, guided_noise, initial_noise

BENCH_SPEC = QuantSpec("kmeans_c", 4)


def png_round_trip(image: torch.Tensor) -> torch.Tensor:
    """Write one [C, H, W] image in [0, 1] as PNG and read it back (what the original did per image)."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    buffer.seek(0)
    return torch.from_numpy(np.asarray(Image.open(buffer))).float()[None] / 255


@torch.no_grad()
def naive_label(model, protocol: SamplingProtocol, n_images: int) -> dict:
    """The original's protocol on the first `n_images` images; returns timings."""
    backend = feature_backend(model.entry.fid_reference)
    prompts, targets = model.protocol_prompts(n_images)
    start = time.perf_counter()
    images = []
    for i in range(n_images):
        if model.entry.conditioning == "text":
            caption_encoder()._memo.clear()  # no caching: re-encode per image, as the original did
        condition = guidance_condition(model, [prompts[i]], protocol.guidance)
        scheduler = model.make_scheduler()
        scheduler.set_timesteps(protocol.steps)
        latents = initial_noise(model.latent_shape, 1, protocol.seed, i) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            eps = guided_noise(model, model_input, t, condition, protocol.guidance, protocol.compute_dtype)
            latents = scheduler.step(eps, t, latents, return_dict=False)[0]
        images.append(png_round_trip(model.decode(latents)[0]))
    generation = time.perf_counter() - start
    start = time.perf_counter()
    metric = FrechetInceptionDistance(feature=backend.feature, normalize=True, input_img_size=backend.image_shape)
    metric.update(backend.reference_images(), real=True)  # reference features recomputed per configuration
    reference = time.perf_counter() - start
    start = time.perf_counter()
    stacked = torch.stack(images)
    metric.update(stacked, real=False)
    float(metric.compute())
    prompt_accuracy(backend.classifier, stacked, targets)
    scoring = time.perf_counter() - start
    return {"generation_s_per_image": generation / n_images, "reference_s": reference,
            "scoring_s_per_image": scoring / n_images}


def bench_dtype(model, mq, args, compute_dtype: str) -> dict:
    """qsd's and the naive protocol's seconds per configuration, both computing in `compute_dtype`."""
    protocol = SamplingProtocol(n_images=args.images, steps=args.steps, guidance=model.entry.sampler.guidance,
                                compute_dtype=compute_dtype)
    config = mq.uniform(BENCH_SPEC)
    start = time.perf_counter()
    labeller = Labeller(model, protocol, progress=False)
    setup = time.perf_counter() - start
    labeller.label_config(mq, config)  # warm-up
    runs = [labeller.label_config(mq, config) for _ in range(args.repeats)]
    s_per_config = min(r["seconds"] for r in runs)
    naive = naive_label(model, protocol, args.naive_images)
    naive_s = naive["reference_s"] + args.images * (naive["generation_s_per_image"] + naive["scoring_s_per_image"])
    seed_fids = []
    for seed in (0, 1, 2):
        images = generate(model, dataclasses.replace(protocol, seed=seed), progress=False)
        seed_fids.append(labeller.fid(images))
    return {"setup_s": setup, "s_per_config": s_per_config, "naive_s_per_config": naive_s,
            "speedup_vs_naive": naive_s / s_per_config, "naive": naive,
            "fid_seed_spread": max(seed_fids) - min(seed_fids), "fid_float_by_seed": seed_fids,
            "fid_repeat_diff": abs(runs[0]["fid"] - runs[-1]["fid"]), "labels": runs[-1]}


def bench_model(model_id: str, args) -> dict:
    model = load_model(model_id)
    mq = MultiQuantizer.build(model.denoiser, progress=False)
    return {"model_id": model_id} | {dtype: bench_dtype(model, mq, args, dtype) for dtype in args.dtypes.split(",")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny_pixart,tiny_sd,tiny_dit")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--naive-images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtypes", default="bfloat16,float32",
                        help="compute dtypes to measure; the first one is the headline")
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    results = {m: bench_model(m, args) for m in args.models.split(",")}
    for model_id, by_dtype in results.items():
        for dtype in dtypes:
            r = by_dtype[dtype]
            print(f"{model_id} [{dtype}]: {r['s_per_config']:.2f} s/config (naive {r['naive_s_per_config']:.1f} s, "
                  f"{r['speedup_vs_naive']:.1f}x), FID seed spread {r['fid_seed_spread']:.2f}, "
                  f"repeat diff {r['fid_repeat_diff']}")
    head = results.get("tiny_pixart", next(iter(results.values())))
    headline = {key: head[dtypes[0]][key] for key in ("s_per_config", "speedup_vs_naive", "fid_seed_spread",
                                                       "fid_repeat_diff")}
    others = {f"{key}_{dtype}": head[dtype][key] for dtype in dtypes[1:] for key in ("s_per_config",
                                                                                    "speedup_vs_naive")}
    print(json.dumps(headline | others | {"compute_dtype": dtypes[0], "images": args.images, "steps": args.steps,
                                          "torch_threads": torch.get_num_threads(), "models": results}))


if __name__ == "__main__":
    main()
