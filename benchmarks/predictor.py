"""Benchmark: the GNN predictor on CPU — training time per fold and a learning curve, against the yardsticks.

Data: stage 02's random labelled configurations of `--model` / `--run` (notebooks 01-02 must have run), the
FID-only target (−FID: the harder one, since in the paper's −FID − λ·avg_bits the exactly known bits carry part
of the ranking). The same K seeded folds for every method.

(a) Full data: each fold trains the GNN (`--loss`, `--epochs`) on the other folds; training wall seconds per
    fold, and test Spearman, Kendall τ, NDCG@10 of the GNN and of the three yardsticks on the same folds
    (summed layer error, ridge on one-hot layer choices, MLP).
(b) Learning curve: for n in `--sizes` (capped at what the training folds hold), every fold trains on the first
    n of its training configurations (in labelling order, so a smaller budget is a prefix of a larger one, as
    when stage 02 labels fewer) and tests on the same full fold. Spearman mean ± std of the GNN, ridge and the
    summed error per n.

Run:  .venv/bin/python benchmarks/predictor.py [--model tiny_pixart] [--run default] [--epochs 50]
The last stdout line is one JSON object; progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import json
import time

from qsd.predictor.cross_validation import cross_validate
from qsd.predictor.folds import kfold_splits
from qsd.predictor.model import PredictorSettings
from qsd.predictor.target import FID_ONLY, TargetExpression
from qsd.predictor.training import TrainSettings
from qsd.predictor.yardsticks import YARDSTICKS, evaluate_yardsticks
from qsd.stages.train_predictor import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny_pixart")
    parser.add_argument("--run", default="default")
    parser.add_argument("--loss", default="hybrid")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dataset = load_dataset(args.model, args.run)
    graphs, targets = dataset.encode(TargetExpression(FID_ONLY), hops=4)
    mq = dataset.multiquantizer
    splits = kfold_splits(len(graphs), args.folds, args.seed)
    model_settings = PredictorSettings()
    train_settings = TrainSettings(loss=args.loss, epochs=args.epochs, seed=args.seed)

    start = time.perf_counter()
    full = cross_validate(graphs, splits, model_settings, train_settings, progress=True, label="all labels")
    gnn_seconds = time.perf_counter() - start
    yardsticks = evaluate_yardsticks(dataset.configs, dataset.labels, targets, splits, mq.unit_names, mq.options,
                                     args.seed, errors=mq.errors)
    yardstick_means = yardsticks.groupby("yardstick")[["spearman", "kendall", "ndcg10"]].mean()
    best = yardstick_means["spearman"].idxmax()

    curve = {}
    largest = min(len(train) for train, _ in splits)
    for n in sorted({min(n, largest) for n in args.sizes} | {largest}):
        prefix = [(train[:n], test) for train, test in splits]  # sorted indices: rows in labelling order
        cv = cross_validate(graphs, prefix, model_settings, train_settings, progress=True, label=f"n={n}")
        small = evaluate_yardsticks(dataset.configs, dataset.labels, targets, prefix, mq.unit_names, mq.options,
                                    args.seed, yardsticks=("summed_error", "ridge"), errors=mq.errors)
        spear = small.groupby("yardstick")["spearman"]
        curve[n] = {"gnn": [float(cv.metrics["spearman"].mean()), float(cv.metrics["spearman"].std())],
                    **{b: [float(spear.mean()[b]), float(spear.std()[b])] for b in ("summed_error", "ridge")}}
        print(f"n={n}: GNN {curve[n]['gnn'][0]:.3f} ± {curve[n]['gnn'][1]:.3f}, ridge {curve[n]['ridge'][0]:.3f}, "
              f"summed error {curve[n]['summed_error'][0]:.3f}")

    for name in YARDSTICKS:
        print(f"{name}: Spearman {yardstick_means.loc[name, 'spearman']:.3f}")
    print(f"GNN ({args.loss}): Spearman {full.metrics['spearman'].mean():.3f} ± {full.metrics['spearman'].std():.3f}, "
          f"NDCG@10 {full.metrics['ndcg10'].mean():.3f}; {full.metrics['seconds'].mean():.1f} s per fold")
    print(json.dumps({
        "model": args.model, "run": args.run, "target": FID_ONLY, "n_configs": len(graphs), "folds": args.folds,
        "loss": args.loss, "epochs": args.epochs,
        "gnn_spearman_mean": float(full.metrics["spearman"].mean()),
        "gnn_spearman_std": float(full.metrics["spearman"].std()),
        "gnn_kendall_mean": float(full.metrics["kendall"].mean()),
        "ndcg10_mean": float(full.metrics["ndcg10"].mean()),
        "best_baseline": best, "best_baseline_spearman": float(yardstick_means.loc[best, "spearman"]),
        "baseline_spearman_mean": {b: float(yardstick_means.loc[b, "spearman"]) for b in YARDSTICKS},
        "baseline_ndcg10_mean": {b: float(yardstick_means.loc[b, "ndcg10"]) for b in YARDSTICKS},
        "train_seconds_per_fold": float(full.metrics["seconds"].mean()),
        "gnn_wall_seconds_all_folds": gnn_seconds,
        "learning_curve_spearman": curve,
    }))


if __name__ == "__main__":
    main()
