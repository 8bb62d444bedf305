"""Measurement: how much of AdaRound's gain does a shortened schedule at the papers' learning rate leave unused?

An Adam step moves each rounding variable α by about the learning rate, so iterations × rate bounds how far the
rounding can move from round-to-nearest (the papers: 20k × 1e-3; stage 06: 300 × 1e-3; the test smoke: 12 steps).
For each (iterations, rate) this runs Q-Diffusion's weight reconstruction at W4A6 (calibrated min-max activation
ranges, no learned step sizes) on the random-init PixArt and SD1.5 U-Net of the tests, with the tests' calibration set
(3 timesteps × 8 rows), and reports the denoiser's output error relative to RTN W4A6 measured in the same run.

Run:  .venv/bin/python benchmarks/adaround_rate.py [--iters 12,300] [--rates 1e-3,1e-2] [--seeds 3]
The last stdout line is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from qsd.baselines import qdiffusion, rtn
from qsd.baselines.calibration import CalibrationSet, output_error
from qsd.baselines.reconstruction import ReconstructionSettings
from qsd.models.random_init import example_steps, random_denoiser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", default="12,300")
    parser.add_argument("--rates", default="1e-3,1e-2")
    parser.add_argument("--seeds", default="3")
    args = parser.parse_args()
    iters, rates = [int(i) for i in args.iters.split(",")], [float(r) for r in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)
    rows = []
    for arch in ("pixart", "sd15_unet"):
        denoiser, cal = random_denoiser(arch, 0), CalibrationSet.from_inputs(example_steps(arch))  # the tests' set
        reference = cal.outputs(denoiser)
        rtn_error = output_error(rtn.quantize(denoiser, cal).denoiser, reference, cal)
        for n in iters:
            for lr in rates:
                for seed in seeds:
                    start = time.perf_counter()
                    settings = qdiffusion.Settings(reconstruction=ReconstructionSettings(iters=n, batch=8, lr=lr),
                                                   act_steps=None)
                    result = qdiffusion.quantize(denoiser, cal, 4, 6, settings, seed=seed)
                    torch.set_num_threads(1)  # the numba UAQ kernel leaves its own thread count behind
                    error = output_error(result.denoiser, reference, cal)
                    rows.append({"arch": arch, "iters": n, "lr": lr, "seed": seed, "error": error,
                                 "rtn_error": rtn_error, "vs_rtn": error / rtn_error - 1,
                                 "seconds": time.perf_counter() - start})
                    print(f"{arch:10s} iters {n:4d} lr {lr:.0e} seed {seed}: error {error:.4g} "
                          f"({rows[-1]['vs_rtn']:+.1%} vs RTN)", file=sys.stderr, flush=True)
    print(json.dumps({"name": "adaround_rate", "unit": "output error relative to RTN W4A6", "rows": rows}))


if __name__ == "__main__":
    main()
