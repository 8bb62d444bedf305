"""Benchmark: what each label design draws (issue 31 item 2): the paper's sampling scheme against the budget-stratified
design, in the paper's and the extended search space, at the same number of configurations.

No labelling: configurations are drawn by stage 02's seed stream (configuration i from the generator (seed, i)) over
`--model`'s multiquantizer built here, and described by what the knapsack needs labels for: the average-bit range,
how many lie at ≤ 4 bits and ≤ 3.6 bits, how many are UAQ-heavy (at least half their layers UAQ; the paper's scheme
draws the method uniformly, so it almost never makes one) and UAQ-heavy at ≤ 3.6 bits, and how many keep a layer
float. The paper's scheme is the baseline, measured in the same run.

Run:  .venv/bin/python benchmarks/label_design.py [--model tiny_pixart] [--configs 160] [--seed 0]
Last stdout line: one JSON object with one entry per (space, design).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from qsd.design import config_sampler, stream_generator
from qsd.models import load_denoiser
from qsd.multiquant import MultiQuantizer
from qsd.space import search_space


def describe(multiquantizer: MultiQuantizer, configs: list) -> dict:
    bits = np.array([multiquantizer.cost(c)["avg_bits"] for c in configs])
    uaq = np.array([np.mean([s is not None and s.method == "uaq" for s in c.values()]) for c in configs])
    floats = np.array([sum(s is None for s in c.values()) for c in configs])
    heavy = uaq >= 0.5
    return {"configs": len(configs), "avg_bits_min": round(float(bits.min()), 3),
            "avg_bits_max": round(float(bits.max()), 3), "at_most_4_bits": int((bits <= 4).sum()),
            "at_most_3_6_bits": int((bits <= 3.6).sum()), "uaq_heavy": int(heavy.sum()),
            "uaq_heavy_at_most_3_6_bits": int((heavy & (bits <= 3.6)).sum()),
            "holding_float_layers": int((floats > 0).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny_pixart")
    parser.add_argument("--configs", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    denoiser = load_denoiser(args.model)
    result = {"model": args.model, "seed": args.seed}
    for name, designs in (("paper", ("paper", "stratified")), ("extended", ("stratified",))):
        space = search_space(name)
        mq = MultiQuantizer.build(denoiser, space.options(), progress=False, float_option=space.float_option)
        for design in designs:
            sampler = config_sampler(design, mq)
            configs = [sampler(stream_generator(args.seed, i), i) for i in range(args.configs)]
            result[f"{name}/{design}"] = describe(mq, configs)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
