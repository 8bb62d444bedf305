"""Benchmark: which part of each baseline makes it win or lose at W4A6 (results: docs/measurements.md, the
baselines with one part switched off).

Each baseline is measured as stage 06 runs it and with one part switched off, under stage 06's protocol (stage 02's
prompts and solver, the same calibration set of 32 images at noise seed 1000, FID over 3 noise seeds):
  * weights only (A16): does the weight treatment (AdaRound; channel balancing over every layer) cost FID?
  * Q-Diffusion's activation ranges as calibrated (min-max), without its learned step sizes, and its steps learned
    as first shipped (Adam at 1e-2 × Δ₀, kept even where they raised a block's loss);
  * attention float: Q-Diffusion quantizes Q, K, V and the softmax probabilities with static per-tensor ranges,
    ViDiT-Q token-wise; RTN, the reference, leaves attention's act-to-act products float;
  * Q-Diffusion's weight grid as this project first had it (Lp search) and its softmax at the activation bits;
  * ViDiT-Q with every layer quantized, with the first and last layer float instead of its released float layers,
    without smoothing, at α = 0.5, smoothing every linear layer, and with the paper's balancing (every linear layer
    smoothed from absolute maxima, then rotated; released: one layer smoothed, none rotated) with and without its
    rotation.
  * DMQ as released and, at the common convention (first and last layer float, 4.24 bits on `tiny_pixart`, where it
    leads every method at equal bits): weights only, without LES, without weight reconstruction.
Besides FID, each row's images at the first noise seed are compared pixel by pixel with the float model's
(`sample_mse_vs_float`): FID can move with changes that are no closer to the float model's images. `ink_vs_float`
is the share of the first seed's pixels above 0.5 (stroke weight) relative to the float model's: a global bias that
a digit classifier's features see and pixel MSE hardly does.
The run's stage 02 must exist (its protocol); nothing is re-run.

Run:  .venv/bin/python benchmarks/baseline_ablations.py [--model_id tiny_pixart] [--run_id default] [--only TEXT]
The last stdout line is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from qsd.baselines import baseline, baseline_settings, dmq, viditq
from qsd.baselines.calibration import CalibrationSet
from qsd.labelling import Labeller
from qsd.models import load_model
from qsd.run_folder import RunFolder
from qsd.stages import final_comparison as stage

A_BITS = 6
ABLATIONS = (
    ("rtn", "as in stage 06", A_BITS, {}),
    ("rtn", "weights only (A16)", None, {}),
    ("qdiffusion", "as in stage 06", A_BITS, {}),
    ("qdiffusion", "attention float", A_BITS, {"quantize_attention": False}),
    ("qdiffusion", "min-max activation ranges (steps not learned)", A_BITS, {"act_steps": None}),
    ("qdiffusion", "steps learned as first shipped (lr 1e-2, none reverted)", A_BITS,
     {"act_steps": {"lr": 1e-2, "revert_worse": False}}),
    ("qdiffusion", "weights only (A16)", None, {}),
    ("qdiffusion", "Lp-searched weight grid (before issue 28)", A_BITS, {"reconstruction": {"grid": "mse"}}),
    ("qdiffusion", "softmax at the activation bits", A_BITS, {"softmax_bits": None}),
    ("viditq", "as in stage 06", A_BITS, {}),
    ("viditq", "attention float", A_BITS, {"quantize_attention": False}),
    ("viditq", "every layer quantized (the paper's text)", A_BITS, {"keep_released": False}),
    ("viditq", "first and last layer float instead of its own", A_BITS,
     {"keep_released": False, "keep_first_last": True}),
    ("viditq", "without smoothing", A_BITS, {"smoothing": False}),
    ("viditq", "alpha 0.5 (before issue 28)", A_BITS, {"alpha": 0.5}),
    ("viditq", "every linear layer smoothed (moving average)", A_BITS, {"smoothed_layers": "all"}),
    ("viditq", "the paper's balancing (every linear layer smoothed, absolute maxima, rotated)", A_BITS,
     viditq.PAPER_BALANCING),
    ("viditq", "the paper's balancing without rotation", A_BITS, viditq.PAPER_BALANCING | {"rotation": "none"}),
    ("viditq", "weights only (A16)", None, {}),
    ("dmq", "as in stage 06", A_BITS, {}),
    ("dmq", "first and last layer float instead of its own", A_BITS, dmq.FIRST_LAST_FLOAT),
    ("dmq", "first and last layer float, weights only (A16)", None, dmq.FIRST_LAST_FLOAT),
    ("dmq", "first and last layer float, without LES", A_BITS, dmq.FIRST_LAST_FLOAT | {"les_iters": 0}),
    ("dmq", "first and last layer float, without reconstruction (round to nearest on its MSE grid)", A_BITS,
     dmq.FIRST_LAST_FLOAT | {"reconstruction": {"iters": 0}}),
)
"""(baseline, variant, activation bits (None: float), overrides of its stage-06 settings)."""


def ink(images) -> float:
    """Share of pixels above half intensity (how much stroke the digits carry)."""
    return float((images.float() > 0.5).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_id", default="tiny_pixart")
    parser.add_argument("--run_id", default="default")
    parser.add_argument("--only", default="", help="measure only the ablations whose '<baseline> <variant>' "
                        "contains this text (the float row is always measured)")
    args = parser.parse_args()
    settings = stage.Settings(model_id=args.model_id, run_id=args.run_id)
    labelling, protocol = stage.evaluation_protocol(RunFolder(args.model_id, args.run_id), settings)
    model = load_model(args.model_id, device=labelling.device)
    labeller = Labeller(model, protocol, labelling.n_probe, labelling.batch_size, progress=False,
                        clip_dir=labelling.clip_dir)
    calibration = CalibrationSet.from_model(model, protocol, settings.calibration_samples, settings.calibration_seed)

    def scores(sampled=None) -> dict:
        measured, first = labeller.seed_scores(settings.noise_seeds, sampled, keep_images=protocol.n_images)
        return {"fid_mean": round(measured["fid_mean"], 2), "fid_std": round(measured["fid_std"], 2),
                "fid_seeds": [round(v, 2) for v in measured["fid_seeds"]],
                "sample_mse_vs_float": round(measured["sample_mse"], 5),
                "ink_vs_float": round(ink(first) / ink(labeller.float_images), 4)}

    rows = [{"baseline": "float", "variant": "", "a_bits": 16, "avg_bits": 16.0, "calibration_s": 0.0} | scores()]
    print(rows[-1], file=sys.stderr, flush=True)
    for name, variant, a_bits, overrides in ABLATIONS:
        if args.only not in f"{name} {variant}":
            continue
        result = baseline(name).quantize(model.denoiser, calibration, stage.W_BITS, a_bits,
                                         baseline_settings(name, overrides), seed=settings.seed)
        rows.append({"baseline": name, "variant": variant, "a_bits": a_bits or 16,
                     "avg_bits": round(result.avg_bits, 3), "calibration_s": round(result.calibration_seconds, 1)}
                    | scores(model.with_denoiser(result.denoiser)))
        print(rows[-1], file=sys.stderr, flush=True)
    print(json.dumps({"model_id": args.model_id, "run_id": args.run_id, "w_bits": stage.W_BITS,
                      "noise_seeds": settings.noise_seeds, "rows": rows}))


if __name__ == "__main__":
    main()
