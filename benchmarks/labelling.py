"""Benchmark: labelled configurations per hour, in-process vs a local 2-worker Ray cluster (issue 4).

Both executors label the same random configurations of `--model` (stage 02's seed stream) at the stage's
default protocol (`--images` images, the model's 20 DPM-Solver++ steps). In-process: one worker using all
torch threads. Ray: a local cluster of `--workers` actors with one CPU (one torch thread) each. Reported:
steady-state throughput (after each worker's first label, so model loading and cluster start are excluded)
and end-to-end throughput including that set-up.

Run:  .venv/bin/python benchmarks/labelling.py [--configs 12] [--images 256] [--workers 2]
Last stdout line: one JSON object with configs_per_hour_inprocess and configs_per_hour_ray.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from qsd.design import config_sampler
from qsd.executors import InProcessExecutor, RayExecutor, WorkerSpec
from qsd.label_session import LabellingSetup
from qsd.stages import label_configs, multiquantizer


def throughput(executor, jobs, warm: int) -> dict:
    """configs/hour after the first `warm` labels (steady state) and from the start (incl. set-up)."""
    start = time.perf_counter()
    arrivals = [time.perf_counter() for _ in executor.run(jobs)]
    steady = (len(arrivals) - warm) / (arrivals[-1] - arrivals[warm - 1]) * 3600
    return {"configs_per_hour": steady, "configs_per_hour_with_setup": len(arrivals) / (arrivals[-1] - start) * 3600,
            "setup_s": arrivals[warm - 1] - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny_pixart")
    parser.add_argument("--configs", type=int, default=12)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    built = multiquantizer.run(multiquantizer.Settings(model_id=args.model, run_id="bench", damage_options=(),
                                                               progress=False))
    jobs = label_configs.random_jobs(config_sampler("paper", built.multiquantizer), seed=0, n=args.configs)
    protocol = LabellingSetup.of(label_configs.Settings(model_id=args.model, n_images=args.images).effective()
                                 ).protocol()
    path = str(built.directory / "multiquantizer.safetensors")
    n_probe = label_configs.Settings().n_probe
    inprocess = throughput(InProcessExecutor(WorkerSpec(args.model, protocol, path, n_probe)), jobs, 1)
    print(f"in-process ({torch.get_num_threads()} threads): {inprocess}", flush=True)
    spec = WorkerSpec(args.model, protocol, path, n_probe, threads=1)
    ray = throughput(RayExecutor(spec, workers=args.workers), jobs, args.workers)
    print(f"ray ({args.workers} workers x 1 thread): {ray}", flush=True)
    print(json.dumps({
        "model": args.model, "configs": args.configs, "images": args.images, "steps": protocol.steps,
        "configs_per_hour_inprocess": round(inprocess["configs_per_hour"], 1),
        "configs_per_hour_ray": round(ray["configs_per_hour"], 1),
        "configs_per_hour_inprocess_with_setup": round(inprocess["configs_per_hour_with_setup"], 1),
        "configs_per_hour_ray_with_setup": round(ray["configs_per_hour_with_setup"], 1),
        "ray_vs_inprocess": round(ray["configs_per_hour"] / inprocess["configs_per_hour"], 3),
        "workers": args.workers, "inprocess_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
