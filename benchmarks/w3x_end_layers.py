"""Benchmark: how much of the gap between stage 05's W3.x configurations and the W4 baselines (stage 06) the two end
layers explain.

The baselines keep the first and the last layer a forward pass calls in float (Q-Diffusion's convention; on the
embedded transformers the 2×2 patch embedding and the final projection to pixels); Qua²SeDiMo's search space, like
the paper's, quantizes every layer, so its configurations hold them at 3-4 bits. Measured here with stage 06's
protocol (stage 02's prompts and solver, 3 noise seeds, float activations):
  * RTN W4 (min-max per channel) with the end layers float and at 4 bits;
  * stage 05's configurations at 4.0 and 3.7 bits as built, and with their end layers set to float (the added bits
    are the end layers' FP16 weights, counted as everywhere: `MultiQuantizer.cost`);
  * with `--search_seeds`, also the search loop's last-round configuration of every training seed at those budgets
    (`05_build_configs/constructions.csv`): the search's own spread at held-out seeds, beside the one its selection
    seed chose.
Each row also gives its first noise seed's pixel MSE to the float model's images (`sample_mse_vs_float`).
The run's stages 00-05 must exist (`make reproduce`); nothing is re-run.

Run:  .venv/bin/python benchmarks/w3x_end_layers.py [--model_id tiny_pixart] [--run_id default] [--search_seeds]
The last stdout line is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd

from qsd.baselines import rtn
from qsd.baselines.calibration import CalibrationSet
from qsd.baselines.common import first_and_last
from qsd.config import QuantConfig
from qsd.labelling import Labeller
from qsd.layers import quantizable_units
from qsd.models import load_model
from qsd.run_folder import CONFIGS, RunFolder
from qsd.stages import final_comparison as stage
from qsd.stages.build_configs import SEARCH

BUDGETS = (4.0, 3.7)
SEEDS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_id", default="tiny_pixart")
    parser.add_argument("--run_id", default="default")
    parser.add_argument("--search_seeds", action="store_true",
                        help="also every training seed's last-round search configuration at each budget")
    args = parser.parse_args()
    run = RunFolder(args.model_id, args.run_id)
    labelling, protocol = stage.evaluation_protocol(run, stage.Settings(model_id=args.model_id, run_id=args.run_id,
                                                                         noise_seeds=SEEDS))
    model = load_model(args.model_id, device=labelling.device)
    mq = run.multiquantizer(model.denoiser)
    labeller = Labeller(model, protocol, labelling.n_probe, labelling.batch_size, progress=False,
                        clip_dir=labelling.clip_dir)

    def fids(sampled) -> dict:
        scores, _ = labeller.seed_scores(SEEDS, sampled)
        return {"fid_mean": round(scores["fid_mean"], 2), "fid_std": round(scores["fid_std"], 2),
                "fid_seeds": [round(v, 2) for v in scores["fid_seeds"]],
                "sample_mse_vs_float": round(scores["sample_mse"], 5)}

    calibration = CalibrationSet.from_model(model, protocol, 1, seed=1000)  # one image: call order and RTN only
    ends = first_and_last(model.denoiser, calibration)
    end_units = {u.name for u in quantizable_units(model.denoiser) if u.module in ends}
    rows = {}
    for keep in (True, False):
        result = rtn.quantize(model.denoiser, calibration, 4, None, rtn.Settings(keep_first_last=keep))
        name = f"RTN W4, end layers {'float' if keep else '4-bit'}"
        rows[name] = {"avg_bits": round(result.avg_bits, 3)} | fids(model.with_denoiser(result.denoiser))
        print(name, rows[name], file=sys.stderr, flush=True)
    for budget in BUDGETS:
        config, row = run.frontier_config(budget)
        candidates = {row["name"]: config} | (last_round_configs(run, budget) if args.search_seeds else {})
        for config_name, config in candidates.items():
            float_ends = QuantConfig({n: None if n in end_units else config[n] for n in config})
            for label, chosen in (("as built", config), ("end layers float", float_ends)):
                name = f"{config_name}, {label}"
                if name in rows:
                    continue
                mq.restore()
                mq.apply(chosen)
                rows[name] = {"avg_bits": round(mq.cost(chosen)["avg_bits"], 3)} | fids(model)
                print(name, rows[name], file=sys.stderr, flush=True)
        mq.restore()
    print(json.dumps({"model_id": args.model_id, "run_id": args.run_id, "end_layers": ends, "noise_seeds": SEEDS,
                      "rows": rows}))


def last_round_configs(run: RunFolder, budget: float) -> dict[str, QuantConfig]:
    """The search loop's last-round configuration of every training seed at `budget`, by name (from the store, where
    each configuration the loop labelled sits under the name it was first labelled with)."""
    built = pd.read_csv(run.path(CONFIGS) / "constructions.csv")
    searched = built[built["method"].str.startswith(SEARCH) & (built["budget"] - budget).abs().lt(1e-9)]
    last = searched[searched["round"] == searched["round"].max()]
    labels = run.labels().set_index("fingerprint")
    return {labels.loc[fp, "name"]: QuantConfig.loads(labels.loc[fp, "config"]) for fp in last["fingerprint"]}


if __name__ == "__main__":
    main()
