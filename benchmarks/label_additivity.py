"""Benchmark: how additive the labels are (issue 31) — is a configuration's FID change the sum of its units' single
changes, as a knapsack over per-unit scores assumes (paper §3.4)?

From a base configuration (uniform UAQ-3 and uniform UAQ-4 of stage 01's multiquantizer), the `--units` units with
the largest sample MSE at UAQ-3 in stage 01's layer damage are changed one at a time and all together, two ways: to
the other bit width of the same method (the paper's search space) and to float (FP16, beyond the paper's space).
Every configuration is sampled under stage 06's held-out protocol (`--seeds` noise seeds, the same noise for every
configuration), so each change is a difference paired by seed. Per base and change: each single change Δᵢ, their sum
(the additive prediction, the baseline the joint change is compared to), the joint change and the ratio joint / sum
(1: additive), each as mean ± std over the seeds. The run's stages 00-02 must exist; nothing is re-run.

Run:  .venv/bin/python benchmarks/label_additivity.py [--model_id tiny_pixart] [--run_id default] [--units 4]
      [--seeds 3]
The last stdout line is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from qsd.config import QuantConfig, QuantSpec
from qsd.labelling import Labeller
from qsd.models import load_model
from qsd.run_folder import MULTIQUANTIZER, RunFolder
from qsd.stages import final_comparison as stage

BASES = (QuantSpec("uaq", 3), QuantSpec("uaq", 4))
OTHER_BITS = {3: 4, 4: 3}


def spread(values: np.ndarray) -> dict:
    return {"mean": round(float(values.mean()), 2), "std": round(float(values.std(ddof=1)), 2),
            "per_seed": [round(float(v), 2) for v in values]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_id", default="tiny_pixart")
    parser.add_argument("--run_id", default="default")
    parser.add_argument("--units", type=int, default=4, help="units changed (the most damaging at UAQ-3)")
    parser.add_argument("--seeds", type=int, default=3, help="noise seeds every configuration is sampled at (>= 2)")
    args = parser.parse_args()
    if args.units < 2 or args.seeds < 2:
        parser.error("--units and --seeds must be at least 2 (a joint change, a spread)")
    run = RunFolder(args.model_id, args.run_id)
    damage = pd.read_csv(run.require(MULTIQUANTIZER, "layer_damage.csv", "layer damage"))
    at_uaq3 = damage[damage["option"] == "uaq-3"]
    if at_uaq3.empty:
        sys.exit("stage 01 measured no layer damage at uaq-3 (its damage_options); re-run notebook 01 with them")
    units = list(at_uaq3.nlargest(args.units, "sample_mse")["unit"])
    labelling, protocol = stage.evaluation_protocol(run, stage.Settings(model_id=args.model_id, run_id=args.run_id,
                                                                         noise_seeds=args.seeds))
    model = load_model(args.model_id, device=labelling.device)
    mq = run.multiquantizer(model.denoiser)
    labeller = Labeller(model, protocol, labelling.n_probe, labelling.batch_size, progress=False,
                        clip_dir=labelling.clip_dir)
    configs = len(BASES) * (1 + 2 * (len(units) + 1))
    bar = tqdm(total=configs, desc="label additivity", unit="config", file=sys.stderr)

    def fids(config: QuantConfig) -> np.ndarray:
        mq.restore()
        mq.apply(config)
        scores, _ = labeller.seed_scores(args.seeds, model)
        mq.restore()
        bar.update()
        return np.asarray(scores["fid_seeds"])

    def changed(base: QuantConfig, names: list[str], spec: QuantSpec | None) -> QuantConfig:
        return QuantConfig({n: spec if n in names else base[n] for n in base})

    cases = []
    for base_spec in BASES:
        base = mq.uniform(base_spec)
        base_fids = fids(base)
        other_bits = QuantSpec(base_spec.method, OTHER_BITS[base_spec.w_bits])
        for label, spec in ((f"to {other_bits.method}-{other_bits.w_bits}", other_bits), ("to float", None)):
            singles = {u: fids(changed(base, [u], spec)) - base_fids for u in units}
            joint = fids(changed(base, units, spec)) - base_fids
            total = sum(singles.values())
            case = {"base": f"uniform {base_spec.method}-{base_spec.w_bits}", "change": label,
                    "base_fid": spread(base_fids), "singles": {u: spread(d) for u, d in singles.items()},
                    "sum_of_singles": spread(total), "joint": spread(joint), "joint_over_sum": spread(joint / total)}
            cases.append(case)
            print(case["base"], label, "joint", case["joint"]["mean"], "sum", case["sum_of_singles"]["mean"],
                  file=sys.stderr, flush=True)
    bar.close()
    print(json.dumps({"model_id": args.model_id, "run_id": args.run_id, "units": units, "noise_seeds": args.seeds,
                      "evaluation_seeds": list(range(protocol.seed, protocol.seed + args.seeds)), "cases": cases}))


if __name__ == "__main__":
    main()
