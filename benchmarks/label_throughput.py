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

qsd is measured in every variant of `--variants` (compute dtype: bfloat16 autocast or float32; the denoiser
torch.compile'd or eager); the first is the headline and stage 02's default (compiled, in this machine's native
dtype: bfloat16 with bf16 units, else float32; `qsd.sampling.native_compute_dtype`). The naive
protocol runs eagerly in each of those dtypes, and the headline speed-up is against the *fastest* naive dtype
(on CPUs without fast bf16 the naive batch-1 loop is quicker in float32). Steady-state seconds per
configuration exclude the one-off compilation, which `first_label_s` includes.

Label noise: FID of the float model under 3 noise seeds (`fid_seed_spread` = max − min) and the FID
difference between labellings of the same configuration (`fid_repeat_diff`, must be 0).

Run:  .venv/bin/python benchmarks/label_throughput.py [--models tiny_pixart,tiny_sd,tiny_dit]
Last stdout line: one JSON object; s_per_config and speedup_vs_naive refer to tiny_pixart's headline variant
against its fastest naive dtype; `models` holds every variant of every model.
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

from qsd.config import QuantSpec
from qsd.embedded.captions import caption_encoder
from qsd.labelling import Labeller
from qsd.metrics.prompt_accuracy import prompt_accuracy
from qsd.models import feature_backend, load_model
from qsd.multiquant import MultiQuantizer
from qsd.sampling import (
    COMPUTE_DTYPES,
    SamplingProtocol,
    generate,
    guidance_condition,
    guided_noise,
    initial_noise,
    native_compute_dtype,
)

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
            eps = guided_noise(model, model_input, t, condition, protocol)
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


def bench_qsd(model, mq, args, protocol: SamplingProtocol) -> tuple[dict, Labeller]:
    """qsd's seconds per configuration under `protocol` (steady state, the best of `--repeats` labels after
    one warm-up label; the warm-up's time, which includes any compilation, is reported as `first_label_s`),
    and the labeller that measured them."""
    config = mq.uniform(BENCH_SPEC)
    start = time.perf_counter()
    labeller = Labeller(model, protocol, progress=False)
    setup = time.perf_counter() - start
    first = labeller.label_config(mq, config)
    runs = [labeller.label_config(mq, config) for _ in range(args.repeats)]
    return {"setup_s": setup, "first_label_s": first["seconds"], "s_per_config": min(r["seconds"] for r in runs),
            "fid_repeat_diff": max(abs(r["fid"] - first["fid"]) for r in runs), "labels": runs[-1]}, labeller


def label_noise(model, labeller: Labeller) -> dict:
    """FID of the float model under 3 noise seeds of the labeller's protocol."""
    fids = [labeller.fid(generate(model, dataclasses.replace(labeller.protocol, seed=seed), progress=False))
            for seed in (0, 1, 2)]
    return {"fid_seed_spread": max(fids) - min(fids), "fid_float_by_seed": fids}


def bench_model(model_id: str, args) -> dict:
    """qsd in every (dtype, compile) variant and the naive protocol in every dtype, on one model."""
    model = load_model(model_id)
    mq = MultiQuantizer.build(model.denoiser, settings=model.entry.quantizer, progress=False)
    guidance = model.entry.sampler.guidance
    variants = args.variants.split(",")
    qsd, naive = {}, {}
    for variant in variants:
        dtype, mode = variant.split(":")
        protocol = SamplingProtocol(n_images=args.images, steps=args.steps, guidance=guidance, compute_dtype=dtype,
                                    compile=mode == "compiled")
        qsd[variant], labeller = bench_qsd(model, mq, args, protocol)
        if variant == variants[0]:
            noise = label_noise(model, labeller)
        if dtype not in naive:
            timing = naive_label(model, dataclasses.replace(protocol, compile=False), args.naive_images)
            naive[dtype] = timing | {"s_per_config": timing["reference_s"] + args.images * (
                timing["generation_s_per_image"] + timing["scoring_s_per_image"])}
    fastest_naive = min(naive, key=lambda dtype: naive[dtype]["s_per_config"])
    for variant, result in qsd.items():
        result["speedup_vs_fastest_naive"] = naive[fastest_naive]["s_per_config"] / result["s_per_config"]
        result["speedup_vs_same_dtype_naive"] = naive[variant.split(":")[0]]["s_per_config"] / result["s_per_config"]
    return {"model_id": model_id, "headline_variant": variants[0], "fastest_naive": fastest_naive, "qsd": qsd,
            "naive": naive} | noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny_pixart,tiny_sd,tiny_dit")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--naive-images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    native, other = sorted(COMPUTE_DTYPES, key=lambda dtype: dtype != native_compute_dtype())
    parser.add_argument("--variants", default=f"{native}:compiled,{native}:eager,{other}:compiled,{other}:eager",
                        help="qsd variants dtype:compiled|eager; the first is the headline (stage 02's default)")
    args = parser.parse_args()
    results = {m: bench_model(m, args) for m in args.models.split(",")}
    for model_id, r in results.items():
        for variant, q in r["qsd"].items():
            print(f"{model_id} [{variant}]: {q['s_per_config']:.2f} s/config (first {q['first_label_s']:.1f} s), "
                  f"{q['speedup_vs_fastest_naive']:.1f}x the fastest naive, "
                  f"{q['speedup_vs_same_dtype_naive']:.1f}x the same-dtype naive, repeat diff {q['fid_repeat_diff']}")
        for dtype, n in r["naive"].items():
            print(f"{model_id} naive [{dtype}]: {n['s_per_config']:.1f} s/config")
        print(f"{model_id}: FID seed spread {r['fid_seed_spread']:.2f}")
    head = results.get("tiny_pixart", next(iter(results.values())))
    best = head["qsd"][head["headline_variant"]]
    print(json.dumps({"s_per_config": best["s_per_config"], "speedup_vs_naive": best["speedup_vs_fastest_naive"],
                      "fid_seed_spread": head["fid_seed_spread"], "fid_repeat_diff": best["fid_repeat_diff"],
                      "headline_variant": head["headline_variant"], "first_label_s": best["first_label_s"],
                      "naive_s_per_config": head["naive"][head["fastest_naive"]]["s_per_config"],
                      "fastest_naive": head["fastest_naive"], "images": args.images, "steps": args.steps,
                      "torch_threads": torch.get_num_threads(), "models": results}))


if __name__ == "__main__":
    main()
