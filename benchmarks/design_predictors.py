"""Benchmark: which label design teaches the predictors the budget region (issue 31 item 2): two runs of the same
model and search space whose stage 02 drew by different designs, at the same label count.

Each run's first `n` random labels (n = the smaller run's count, in stream order) train the GNN (the reference run's
stage-03 recipe), ridge, the MLP and their ensemble (`qsd.search.predictor_choice.fit_predictors`, 5 folds). Each
is scored two ways, both restricted to configurations at ≤ `--max_bits` average bits (what the knapsack builds
from): out-of-fold on its own run's labels (cross-validation), and with its fold mean on a common test set, the
union of both runs' test streams (stage 02 `test_configs`), which neither design chose. Spearman and MAE (FID).
The paper's design (the reference run) is the baseline, measured in the same run of this script.

Run:  .venv/bin/python benchmarks/design_predictors.py --runs default stratified [--model_id tiny_pixart]
      [--max_bits 4.0] [--folds 5] [--epochs 50] [--seed 0]
Needs notebooks 01-02 for both runs (same model, same space) and 03 for the first. Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pandas as pd

from qsd.config import QuantConfig
from qsd.errors import InvalidSettingError
from qsd.run_folder import LABELS, RunFolder
from qsd.search.predictor_choice import fit_predictors, validation_table
from qsd.stages.build_configs import PredictorRecipe
from qsd.store import TEST_KIND, labelled


def rows(run: RunFolder, kind: str) -> pd.DataFrame:
    return labelled(run.labels(), [kind]).sort_values("sample_index")


def numbers(table: pd.DataFrame) -> dict:
    return {r.predictor: {"spearman": None if np.isnan(r.spearman_region) else round(float(r.spearman_region), 4),
                          "mae": None if np.isnan(r.mae_region) else round(float(r.mae_region), 2)}
            for r in table.itertuples()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_id", default="tiny_pixart")
    parser.add_argument("--runs", nargs=2, default=["default", "stratified"])
    parser.add_argument("--max_bits", type=float, default=4.0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    runs = [RunFolder(args.model_id, run_id) for run_id in args.runs]
    spaces = {run.run_id: run.space() for run in runs}
    if len(set(spaces.values())) != 1:
        raise InvalidSettingError(f"both runs must share one search space; got {spaces}")
    random_rows = [rows(run, "random") for run in runs]
    n = min(len(r) for r in random_rows)
    tests = pd.concat([rows(run, TEST_KIND) for run in runs], ignore_index=True).drop_duplicates("fingerprint")
    if tests.empty:
        raise InvalidSettingError("neither run has a test stream; run notebook 02 with test_configs > 0")
    test_configs = [QuantConfig.loads(c) for c in tests["config"]]
    recipe = PredictorRecipe.of_run(runs[0])
    graph, option_table = runs[0].graph(), runs[0].option_table()
    result = {"model": args.model_id, "space": spaces[runs[0].run_id], "labels_each": n, "max_bits": args.max_bits,
              "test_configs": len(tests), "test_at_most_max_bits": int((tests["avg_bits"] <= args.max_bits).sum()),
              "runs": {}}
    for run, training in zip(runs, random_rows, strict=True):
        training = training.iloc[:n]
        print(f"{run.run_id}: fitting on {n} labels", file=sys.stderr)
        configs = [QuantConfig.loads(c) for c in training["config"]]
        fids, bits = training["fid"].to_numpy(float), training["avg_bits"].to_numpy(float)
        fitted = fit_predictors(graph, option_table, configs, fids, args.folds, recipe.predictor,
                                recipe.training(args.epochs, args.seed), args.seed)
        predicted = {name: predict(test_configs) for name, predict in fitted.predict.items()}
        result["runs"][run.run_id] = {
            "design": run.settings(LABELS).get("design", "paper"),
            "labels_at_most_max_bits": int((bits <= args.max_bits).sum()),
            "cross_validated": numbers(validation_table(fitted.held_out, fids, bits, args.max_bits)),
            "test": numbers(validation_table(predicted, tests["fid"].to_numpy(float), tests["avg_bits"].to_numpy(float),
                                             args.max_bits))}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
