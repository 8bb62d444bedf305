"""Benchmark (issue 30): train the paper-shaped embedded candidates (`qsd.embedded.models.CANDIDATE_SHAPES`:
PixArt-α-like transformers of 8-12 blocks at width 256-384 on `tiny_pixart`'s captions, digits and 16 tokens).

Each candidate trains with `tiny_pixart`'s recipe (`qsd.embedded.training`, batch 64, `--steps`, seed 0) into
`build/candidates/<name>/` (`qsd.embedded.models.checkpoint_dir`, where the stages load it from): the resumable
training state (`train_state.pt`, saved every 250 steps; a killed or `--max-minutes`-limited run continues from it)
and, once complete, `<name>.safetensors` with its training record (settings, minutes, final loss) as metadata, as
the shipped checkpoints have. The baseline measured in the same run: `tiny_pixart`'s seconds per training step on
this machine, next to every candidate's (`--timing-steps` steps after 3 warm-up steps, fresh weights). Then
notebooks 00-02 measure a trained candidate like any model (`make reproduce MODEL=<name>`, stopped after 02).

Run:  .venv/bin/python benchmarks/denoiser_candidates.py [--candidates pixart_w256_d8] [--max-minutes 60]
Last stdout line: one JSON object, per candidate and for tiny_pixart: parameters, seconds per step, steps done,
whether training completed, its minutes and final loss.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from qsd.embedded import captions
from qsd.embedded.models import (
    CANDIDATE_SHAPES,
    candidate_entry,
    checkpoint_dir,
    checkpoint_path,
    load_embedded,
    save_checkpoint,
)
from qsd.embedded.training import TrainSettings, train_denoiser
from qsd.models import get_entry

BASELINE = "tiny_pixart"


def parameters(entry) -> int:
    return sum(p.numel() for p in load_embedded(entry, trained=False).denoiser.parameters())


def seconds_per_step(entry, timing_steps: int) -> float:
    """Wall seconds of one training step (batch 64) of fresh weights, after 3 warm-up steps."""
    model = load_embedded(entry, trained=False)
    optimizer = torch.optim.AdamW(model.denoiser.parameters(), lr=1e-3)
    x = torch.randn(64, *model.latent_shape)
    t = torch.randint(1000, (64,))
    condition = model.condition([captions.caption(3, 0)] * 64)
    for step in range(3 + timing_steps):
        if step == 3:
            start = time.perf_counter()
        loss = model.predict_noise(x, t, condition).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / timing_steps


def train(name: str, settings: TrainSettings) -> dict:
    """Train (or resume) candidate `name` in its checkpoint folder; the checkpoint is written once training
    completes."""
    directory = checkpoint_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint_path(name)
    model = load_embedded(candidate_entry(name), trained=False)
    record = train_denoiser(model, settings, directory)
    if record["complete"] and not checkpoint.is_file():
        save_checkpoint(model.denoiser, checkpoint, record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATE_SHAPES))
    parser.add_argument("--steps", type=int, default=6000, help="training steps (tiny_pixart's recipe: 6000)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop resumably after this much training")
    parser.add_argument("--timing-steps", type=int, default=10)
    args = parser.parse_args()
    names = [n for n in args.candidates.split(",") if n]
    baseline = get_entry(BASELINE)
    results = {BASELINE: {"parameters": parameters(baseline),
                          "s_per_step": seconds_per_step(baseline, args.timing_steps)}}
    for name in names:
        entry = candidate_entry(name)
        s_per_step = seconds_per_step(entry, args.timing_steps)
        record = train(name, TrainSettings(steps=args.steps, max_minutes=args.max_minutes))
        width, depth = CANDIDATE_SHAPES[name]
        results[name] = {"width": width, "blocks": depth, "parameters": parameters(entry), "s_per_step": s_per_step,
                         "step_cost_vs_baseline": s_per_step / results[BASELINE]["s_per_step"],
                         **{k: record[k] for k in ("steps_done", "complete", "minutes", "final_loss")}}
        print(f"{name}: {record['steps_done']} steps, {record['minutes']:.1f} min, loss {record['final_loss']:.4f}",
              flush=True)
    print(json.dumps({"benchmark": "denoiser_candidates", "steps": args.steps, "models": results}))


if __name__ == "__main__":
    main()
