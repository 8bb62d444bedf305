"""Benchmark: how much FID a sub-4-bit budget leaves room for, with a sensitivity oracle instead of a predictor.

The yardstick for stage 05's headline ("a configuration at ≤ 3.5 average bits as good as the best uniform W4"):
every layer is UAQ at 3 or 4 bits, chosen by the exact knapsack (`qsd.search.construct.budget_config`) with score
−(image damage of that layer alone at UAQ-3), the damage stage 01 measured by sampling (`layer_damage.csv`,
sample MSE to the float model; UAQ-4 counted as no damage). That is close to the best a per-layer sensitivity
ranking can do, and it uses measured image damage no predictor sees. Compared in the same run with uniform UAQ-3
and UAQ-4 under stage 02's protocol. Nothing is written to the store.

Run:  .venv/bin/python benchmarks/sub4bit_headroom.py [--model tiny_pixart] [--run default]
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json

import pandas as pd

from qsd.config import QuantSpec
from qsd.label_session import LabelSession
from qsd.run_folder import MULTIQUANTIZER, RunFolder
from qsd.search.construct import budget_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny_pixart")
    parser.add_argument("--run", default="default")
    parser.add_argument("--budgets", type=float, nargs="+", default=[3.3, 3.4, 3.5, 3.7])
    args = parser.parse_args()
    run = RunFolder(args.model, args.run)
    session = LabelSession.of_run(run)
    labeller, mq = session.executor.worker.labeller, session.multiquantizer
    damage = pd.read_csv(run.require(MULTIQUANTIZER, "layer_damage.csv", "single-layer damage table"))
    damage = damage[damage["option"] == "uaq-3"].set_index("unit")["sample_mse"]
    option_table = run.option_table()
    table = option_table[option_table["method"] == "uaq"].rename(columns={"unit": "layers", "option": "options"})
    table = table.assign(unit=table["layers"],
                         score=[-damage[u] if o == "uaq-3" else 0.0 for u, o in zip(table["layers"], table["options"],
                                                                                     strict=True)])
    uniform = {f"uniform uaq-{b}": labeller.label_config(mq, mq.uniform(QuantSpec("uaq", b)))["fid"] for b in (3, 4)}
    oracle = {}
    for budget in args.budgets:
        built = budget_config(table, budget)
        oracle[f"{budget:.2f}"] = {"avg_bits": round(built.solution.avg_bits, 4),
                                   "fid": round(labeller.label_config(mq, built.config)["fid"], 3)}
    print(json.dumps({"name": "sub4bit_headroom", "model": args.model, "oracle_uaq_damage_knapsack": oracle,
                      "baseline": {k: round(v, 3) for k, v in uniform.items()},
                      "uniform_bits": {f"uniform uaq-{b}": round(mq.cost(mq.uniform(QuantSpec("uaq", b)))["avg_bits"],
                                                                 4) for b in (3, 4)}}))


if __name__ == "__main__":
    main()
