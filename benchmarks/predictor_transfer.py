"""Benchmark (beyond the paper): does a predictor pretrained on one denoiser's labels transfer to another?

No published method predicts quantization sensitivity for a new denoiser without hundreds of fresh labels. The
graph features here are generic (roles, relative block position, sizes, errors, bits), so one predictor can read
any denoiser's graph. Measured: pretrain on every random label of `--source` (stage 02 of `--run`), then for each
`--targets` model fine-tune on k of its labels (at each of `--finetune-lrs`), against training from scratch on
the same k, for k in `--ks`; k = 0 is the pretrained predictor as it is (zero-shot). The target model's last
`--eval` random labels are the fixed test set; the k training labels are drawn from the ones before (`--repeats`
draws per k, seeded; a k larger than that pool is skipped). Ridge regression on the same k labels (one-hot layer
choices of the target model; it cannot transfer) is the yardstick.
Target: FID alone. Metric: test Spearman, mean ± std over the draws.

Needs notebooks 01-02 for every model of the same run; label the targets with, e.g.,
  .venv/bin/papermill notebooks/02_label_configs.ipynb out.ipynb --cwd . -p model_id tiny_dit -p n_configs 80
(resumable: a rerun labels only what is missing). Figure: figures/03_transfer.png.

Run:  .venv/bin/python benchmarks/predictor_transfer.py [--source tiny_pixart] [--targets tiny_dit tiny_sd]
The last stdout line is one JSON object; progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from qsd.plotting import new_figure, savefig
from qsd.predictor.metrics import spearman
from qsd.predictor.model import PredictorSettings
from qsd.predictor.target import FID_ONLY, TargetExpression
from qsd.predictor.training import TrainSettings, train_predictor
from qsd.predictor.yardsticks import RidgeYardstick
from qsd.stages.train_predictor import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="tiny_pixart")
    parser.add_argument("--targets", nargs="+", default=["tiny_dit", "tiny_sd"])
    parser.add_argument("--run", default="default")
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 10, 25, 50])
    parser.add_argument("--eval", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loss", default="hybrid")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--finetune-lrs", type=float, nargs="+", default=[3e-3, 3e-4],
                        help="learning rates of the fine-tuning runs (the first = training's own)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    target = TargetExpression(FID_ONLY)
    model_settings = PredictorSettings()
    settings = TrainSettings(loss=args.loss, epochs=args.epochs, seed=args.seed)
    source_graphs, _ = load_dataset(args.source, args.run).encode(target, model_settings.hops)
    pretrained = train_predictor(source_graphs, model_settings, settings, progress=True)

    results = {}
    for name in args.targets:
        dataset = load_dataset(name, args.run)
        graphs, y = dataset.encode(target, model_settings.hops)
        if len(graphs) <= args.eval + min(k for k in args.ks if k > 0):
            raise SystemExit(f"{name} has {len(graphs)} random labels; this needs more than {args.eval} + "
                             f"{min(k for k in args.ks if k > 0)} (label more with notebook 02, n_configs)")
        test = np.arange(len(graphs) - args.eval, len(graphs))
        pool = np.arange(len(graphs) - args.eval)
        ks = [k for k in args.ks if 0 < k <= len(pool)]  # budgets beyond the labelled pool are skipped (reported)
        test_graphs = [graphs[i] for i in test]
        rows = {"zero_shot": spearman(pretrained.predict(test_graphs), y[test]), "labels": len(graphs), "ks": ks}
        rng = np.random.default_rng(args.seed)
        for k in tqdm(ks, desc=name):
            tuned_names = [f"fine-tuned lr {lr:g}" for lr in args.finetune_lrs]
            scores = {**{name: [] for name in tuned_names}, "scratch": [], "ridge": []}
            for _ in range(args.repeats):
                train = rng.choice(pool, size=k, replace=False)
                train_graphs = [graphs[i] for i in train]
                for lr, tuned_name in zip(args.finetune_lrs, tuned_names, strict=True):
                    tuned = train_predictor(train_graphs, model_settings, replace(settings, lr=lr), init=pretrained)
                    scores[tuned_name].append(spearman(tuned.predict(test_graphs), y[test]))
                scratch = train_predictor(train_graphs, model_settings, settings)
                ridge = RidgeYardstick(dataset.multiquantizer.unit_names, dataset.multiquantizer.options)
                ridge.fit([dataset.configs[i] for i in train], y[train])
                scores["scratch"].append(spearman(scratch.predict(test_graphs), y[test]))
                scores["ridge"].append(spearman(ridge.score([dataset.configs[i] for i in test]), y[test]))
            rows[k] = {method: [float(np.mean(v)), float(np.std(v))] for method, v in scores.items()}
            print(f"{name} k={k}: " + ", ".join(f"{method} {v[0]:.3f} ± {v[1]:.3f}" for method, v in rows[k].items()))
        results[name] = rows
        print(f"{name}: zero-shot Spearman {rows['zero_shot']:.3f}")

    fig, axes = new_figure(5 * len(args.targets), 4, ncols=len(args.targets), squeeze=False)
    for ax, name in zip(axes[0], args.targets, strict=True):
        ks = results[name]["ks"]
        for method in results[name][ks[0]]:
            means = [results[name][k][method][0] for k in ks]
            stds = [results[name][k][method][1] for k in ks]
            style = "o-" if method.startswith("fine") else ("s--" if method == "scratch" else "^:")
            ax.errorbar(ks, means, yerr=stds, fmt=style, capsize=3, label=method)
        ax.axhline(results[name]["zero_shot"], color="0.4", lw=0.8, ls="-.", label="zero-shot (k = 0)")
        ax.set(xlabel=f"labels of {name} (k)", ylabel=f"test Spearman, last {args.eval} labels", ylim=(-0.5, 1),
               title=f"{args.source} → {name}")
        ax.legend(fontsize=8, frameon=False)
    savefig(fig, "03_transfer")
    print(json.dumps({"source": args.source, "targets": args.targets, "run": args.run, "eval": args.eval,
                      "repeats": args.repeats, "loss": args.loss, "epochs": args.epochs,
                      "finetune_lrs": args.finetune_lrs,
                      "source_labels": len(source_graphs), "spearman": results}))


if __name__ == "__main__":
    main()
