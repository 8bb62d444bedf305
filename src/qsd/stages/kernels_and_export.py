"""Stage 07: real low-bit weights for a mixed-precision configuration (notebook 07_kernels_and_export).

Steps:
  1. The configuration: `config_path` if given (any `QuantConfig` JSON), else the W3.x configuration stage 05 built
     at the largest budget ≤ `w3x_budget` average bits (stage 05's frontier.csv, `RunFolder.frontier_config`: the
     best labelled configuration at that budget; a budget below every built one is an error naming the lowest);
     which one was taken is recorded in the summary.
  2. `qsd.export` writes it packed (codes at exactly b bits + tables); `qsd.load_quantized` rebuilds the
     denoiser from that file alone, with `QLinear`/`QConv` layers that never hold the float weights.
  3. The same images (common random numbers) are sampled from the float model, the fake-quantized model and
     the packed model; packed must reproduce fake-quantized (max |Δ| reported, 0 when every GEMM is large
     enough to run on the decoded weight).
  4. Resident bytes and file bytes against the fp16 and fp32 weights; sampling wall time of each model.

Outputs in `data/runs/<model_id>/<run_id>/07_kernels_and_export/`: the packed model file, config.json,
summary.json; figure `figures/07_export_<model_id>.png`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from qsd.config import QuantConfig
from qsd.models import get_entry, load_model
from qsd.packed import cpu as cpu_kernels
from qsd.packed import export, load_quantized, memory_report
from qsd.plotting import new_figure, savefig
from qsd.provenance import write_run_record
from qsd.run_folder import EXPORT, RunFolder
from qsd.sampling import SamplingProtocol, generate
from qsd.stages import SamplingSettings

STAGE = EXPORT
GRID_IMAGES = 8


@dataclass(frozen=True)
class Settings(SamplingSettings):
    config_path: str | None = None
    """A QuantConfig JSON to export; None = stage 05's W3.x configuration at `w3x_budget`."""
    w3x_budget: float = 3.7
    """Which of stage 05's budget configurations to export (the largest built budget at most this)."""
    SMOKE: ClassVar[dict[str, object]] = {"n_images": 8, "steps": 4}
    RANGES: ClassVar[dict[str, tuple[float | None, float | None]]] = {"w3x_budget": (1, 16), "n_images": (1, None),
                                                                      "steps": (1, None)}


@dataclass
class Result:
    settings: Settings
    directory: Path
    config: QuantConfig
    images: dict[str, torch.Tensor]
    seconds: dict[str, float]
    memory: dict[str, float]
    summary: dict


def choose_config(settings: Settings) -> tuple[QuantConfig, str]:
    """(configuration, where it came from) per `Settings.config_path` / `w3x_budget`."""
    if settings.config_path is not None:
        return QuantConfig.load(settings.config_path), f"file {settings.config_path}"
    config, row = RunFolder(settings.model_id, settings.run_id).frontier_config(settings.w3x_budget)
    return config, f"stage 05 {row['name']} (measured FID {row['fid']:.1f})"


def timed_generate(model, protocol: SamplingProtocol) -> tuple[torch.Tensor, float]:
    """The protocol's images and the seconds they took, after a one-image warm-up (first-call costs)."""
    generate(model, protocol, progress=False, n_images=1)
    start = time.perf_counter()
    images = generate(model, protocol, progress=False)
    return images, time.perf_counter() - start


def run(settings: Settings) -> Result:
    """Export the chosen configuration packed, reload it, and compare it with the fake-quantized model."""
    settings = settings.effective()
    config, source = choose_config(settings)
    model = load_model(settings.model_id)
    mq = RunFolder(settings.model_id, settings.run_id).multiquantizer(model.denoiser)
    directory = settings.output_dir(STAGE)
    config.save(directory / "config.json")
    protocol = SamplingProtocol.for_model(get_entry(settings.model_id), n_images=settings.n_images,
                                          steps=settings.steps, seed=settings.seed)
    path = export(model.denoiser, config, directory / f"{settings.model_id}_packed.safetensors",
                  model_id=settings.model_id, multiquantizer=mq)
    packed = model.with_denoiser(load_quantized(path, settings.model_id))
    images, seconds = {}, {}
    images["float"], seconds["float"] = timed_generate(model, protocol)
    mq.apply(config)
    images["fake-quantized"], seconds["fake-quantized"] = timed_generate(model, protocol)
    mq.restore()
    images["packed"], seconds["packed"] = timed_generate(packed, protocol)
    memory = memory_report(packed.denoiser) | {"file_bytes": path.stat().st_size}
    difference = (images["packed"] - images["fake-quantized"]).abs().max().item()
    cost = mq.cost(config)
    summary = {
        "config_source": source, "config_fingerprint": config.fingerprint, "avg_bits": round(cost["avg_bits"], 4),
        "n_images": protocol.n_images, "steps": protocol.steps,
        "packed_vs_fake_quantized_max_abs_diff": difference,
        "packed_equals_fake_quantized": difference == 0.0,
        "packed_layers_ratio_vs_fp16": round(memory["packed_layers_ratio_vs_fp16"], 4),
        "denoiser_ratio_vs_fp16": round(memory["denoiser_bytes"] / memory["denoiser_fp16_bytes"], 4),
        "file_ratio_vs_fp16": round(memory["file_bytes"] / memory["denoiser_fp16_bytes"], 4),
        "memory_bytes": memory, "sampling_seconds": {k: round(v, 3) for k, v in seconds.items()},
        "cpu_kernels": cpu_kernels.status(),
    }
    write_run_record(directory, settings, summary)
    return Result(settings, directory, config, images, seconds, memory, summary)


def config_composition(result: Result) -> pd.Series:
    """How many layers of the exported configuration use each option ("float": kept in float)."""
    return pd.Series([spec.key if spec else "float" for spec in result.config.values()]).value_counts()


def memory_table(result: Result) -> pd.DataFrame:
    """Resident MiB of the quantized layers and of the whole denoiser: packed, and the same weights in fp16 and
    fp32, with the packed / fp16 ratio."""
    m = result.memory
    table = pd.DataFrame({"packed": [m["packed_layers_bytes"], m["denoiser_bytes"]],
                          "fp16": [m["packed_layers_fp16_bytes"], m["denoiser_fp16_bytes"]],
                          "fp32": [m["packed_layers_fp32_bytes"], m["denoiser_fp32_bytes"]]},
                         index=["quantized layers", "whole denoiser"]) / 2**20
    table["packed / fp16"] = table["packed"] / table["fp16"]
    return table


def summary_text(result: Result) -> str:
    s, m = result.summary, result.memory
    mib = 2**20
    return "\n".join([
        f"configuration: {s['config_source']}, {s['avg_bits']:.3f} avg bits",
        f"packed file: {m['file_bytes'] / mib:.3f} MiB ({s['file_ratio_vs_fp16']:.3f}x the fp16 denoiser)",
        f"quantized layers resident: {m['packed_layers_bytes'] / mib:.3f} MiB packed vs "
        f"{m['packed_layers_fp16_bytes'] / mib:.3f} MiB fp16 ({s['packed_layers_ratio_vs_fp16']:.3f}x) and "
        f"{m['packed_layers_fp32_bytes'] / mib:.3f} MiB fp32",
        f"whole denoiser resident: {m['denoiser_bytes'] / mib:.3f} MiB vs {m['denoiser_fp16_bytes'] / mib:.3f} MiB "
        f"fp16 ({s['denoiser_ratio_vs_fp16']:.3f}x)",
        f"packed vs fake-quantized images ({s['n_images']}, {s['steps']} steps): max |diff| = "
        f"{s['packed_vs_fake_quantized_max_abs_diff']:.3g}",
        "sampling seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in s["sampling_seconds"].items()),
        f"CPU kernels: {s['cpu_kernels']}",
    ])


def plot_export(result: Result) -> Figure:
    """Memory (quantized layers and whole denoiser), sampling time, and the first images of each model."""
    memory = memory_table(result)
    fig, axes = new_figure(15, 4.2, ncols=3, width_ratios=[1.2, 0.8, 1.6])
    width, colours = 0.27, ("#999999", "#5b8fd1", "#d1495b")
    for g, group in enumerate(memory.index):
        for j, label in enumerate(("fp32", "fp16", "packed")):
            value = memory.loc[group, label]
            axes[0].bar(g + (j - 1) * width, value, width, color=colours[j], label=label if g == 0 else None)
            axes[0].annotate(f"{value:.2f}", (g + (j - 1) * width, value), ha="center", va="bottom", fontsize=7)
    axes[0].set_xticks(range(len(memory)), list(memory.index))
    axes[0].set_ylabel("resident MiB")
    axes[0].set_title(f"{result.settings.model_id}: {result.summary['avg_bits']:.2f} avg bits, "
                      f"{result.summary['packed_layers_ratio_vs_fp16']:.3f}x fp16")
    axes[0].legend(fontsize=8)
    names = list(result.seconds)
    axes[1].bar(names, [result.seconds[n] for n in names], color=colours)
    axes[1].set_ylabel("seconds")
    axes[1].set_title(f"sampling {result.summary['n_images']} images, {result.summary['steps']} steps")
    rows = [result.images[n][:GRID_IMAGES, 0].numpy() for n in names]
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    axes[2].imshow(grid, cmap="gray", vmin=0, vmax=1)
    height = rows[0].shape[1]
    axes[2].set_yticks([height * (i + 0.5) for i in range(len(names))], names)
    axes[2].set_xticks([])
    axes[2].grid(False)
    axes[2].set_title(f"same noise and prompts; packed vs fake-quantized max |Δ| = "
                      f"{result.summary['packed_vs_fake_quantized_max_abs_diff']:.2g}")
    savefig(fig, f"07_export_{result.settings.model_id}", result.settings.figures_to(result.directory))
    return fig
