"""Stage 02: label random quantization configurations (paper §3.2; notebook 02_label_configs).

Draws `n_configs` random configurations by the paper's scheme (`MultiQuantizer.sample`: p ~ U(0,1), each
layer low-bit with probability p, method uniform), configuration i from its own generator seeded by
(seed, i) so that asking for more extends the same stream. It also labels the reference rows: the float
model and the six uniform configurations (every layer one method at 4 bits, and at 3 bits). Each label is
FID, prompt accuracy (embedded models), average bits incl. overhead, quantized size, summed layer error and
the two cheap proxies, under common random numbers.

Labels go to `data/runs/<model_id>/<run_id>/02_label_configs/labels.sqlite` (`qsd.store`) as they finish;
a restarted run continues where it stopped. Also written: labels.csv, labels.parquet, summary.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from qsd.config import QuantConfig
from qsd.executors import LabelJob, WorkerSpec, make_executor
from qsd.models import get_entry
from qsd.multiquant import MultiQuantizer
from qsd.paths import stage_dir
from qsd.plotting import new_figure, savefig
from qsd.provenance import write_run_record
from qsd.sampling import SamplingProtocol
from qsd.stages import StageSettings
from qsd.stages import multiquantizer as multiquantizer_stage
from qsd.store import LabelStore

STAGE = "02_label_configs"
N_PROBE = 16
SMOKE = {"n_configs": 4, "n_images": 32, "steps": 8}
PROXIES = ("sample_mse", "eps_error", "summed_error")
LABEL_OFFSETS = {"uaq": (6, -12), "kmeans_c": (6, 4), "kmeans_a": (6, 8)}
"""Where the uniform rows' names go (points), so that neighbouring 4-bit rows stay readable."""


@dataclass(frozen=True)
class Settings(StageSettings):
    n_configs: int = 160
    """Random configurations (the reference rows come on top). Sized for ≤ 20 min on 2 cores (README)."""
    n_images: int = 256
    steps: int | None = None
    """Solver steps; None = the model's protocol (20 for the embedded defaults)."""
    compute_dtype: str = "bfloat16"
    """The denoiser's compute precision under autocast ('bfloat16' or 'float32'; see README: bfloat16 changes
    the float model's FID by about 1 % and is 1.1-1.4x faster here; use float32 on CPUs without bf16 units)."""
    compile: bool = True
    """Run the denoiser through torch.compile (`SamplingProtocol.compile`; README: measured gain and one-off
    compile time). Needs a C++ compiler on CPU; set False where there is none."""
    executor: str = "inprocess"
    """'inprocess' or 'ray'."""
    workers: int = 2
    """Ray actors."""
    ray_address: str | None = None
    """An existing Ray cluster; None = start a local one (executor 'ray' only)."""
    device: str = "cpu"
    """Where the denoisers run: 'cpu' or 'cuda' (Ray then gives every worker one GPU)."""
    progress: bool = True
    """Progress bars (always off in smoke runs, whose printed outputs nbval compares)."""

    def effective(self) -> Settings:
        """The sizes actually used: smoke caps them to `SMOKE`."""
        steps = self.steps or get_entry(self.model_id).sampler.steps
        sized = dataclasses.replace(self, steps=steps)
        if not self.smoke:
            return sized
        return dataclasses.replace(sized, **{k: min(getattr(sized, k), v) for k, v in SMOKE.items()})


@dataclass
class Result:
    settings: Settings
    directory: Path
    labels: pd.DataFrame
    summary: dict


def reference_jobs(multiquantizer: MultiQuantizer) -> list[LabelJob]:
    """The float model and every uniform configuration (one per option: method × bits)."""
    jobs = [LabelJob(multiquantizer.uniform(None), "float", "float")]
    options = sorted(multiquantizer.options, key=multiquantizer_stage.option_order)
    return jobs + [LabelJob(multiquantizer.uniform(s), "uniform", f"uniform {s.key}") for s in options]


def random_jobs(multiquantizer: MultiQuantizer, seed: int, n: int) -> list[LabelJob]:
    """Random configurations 0..n-1 of the seed stream `seed` (configuration i depends only on (seed, i))."""
    return [LabelJob(multiquantizer.sample(np.random.default_rng([seed, i])), "random", f"random {i}", i)
            for i in range(n)]


def sampling_protocol(settings: Settings) -> SamplingProtocol:
    """The labelling protocol of (effective) `settings`: the model's guidance, the run's seed."""
    return SamplingProtocol(n_images=settings.n_images, steps=settings.steps,
                            guidance=get_entry(settings.model_id).sampler.guidance, seed=settings.seed,
                            compute_dtype=settings.compute_dtype, compile=settings.compile)


def protocol_record(model_id: str, protocol: SamplingProtocol, multiquantizer: MultiQuantizer) -> dict:
    """What every label in the dataset depends on (the store refuses to mix different ones)."""
    entry = get_entry(model_id)
    return {"model_id": model_id, "float_weights_sha256": multiquantizer.checksum,
            "fid_reference": entry.fid_reference, "sampler": entry.sampler.scheduler,
            "n_images": protocol.n_images, "steps": protocol.steps, "guidance": protocol.guidance,
            "compute_dtype": protocol.compute_dtype, "compile": protocol.compile,
            "noise_seed": protocol.seed, "n_probe": N_PROBE, "options": [s.key for s in multiquantizer.options],
            "quantizer": multiquantizer.settings.to_json()}


def run(settings: Settings) -> Result:
    """Label the reference rows and `n_configs` random configurations, resuming from the store."""
    settings = settings.effective()
    directory = stage_dir(settings.model_id, settings.run_id, STAGE)
    built = multiquantizer_stage.run(multiquantizer_stage.Settings(
        model_id=settings.model_id, run_id=settings.run_id, seed=settings.seed, smoke=settings.smoke,
        progress=settings.progress and not settings.smoke))
    multiquantizer = built.multiquantizer
    jobs = reference_jobs(multiquantizer) + random_jobs(multiquantizer, settings.seed, settings.n_configs)
    protocol = sampling_protocol(settings)
    spec = WorkerSpec(settings.model_id, protocol, str(built.directory / "multiquantizer.safetensors"), N_PROBE,
                      device=settings.device)
    with LabelStore(directory / "labels.sqlite", protocol_record(settings.model_id, protocol, multiquantizer)) as store:
        done = store.fingerprints()
        pending = [j for j in jobs if j.config.fingerprint not in done]
        executor = make_executor(settings.executor, spec, settings.workers, settings.ray_address)
        with tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc="labelling", unit="config",
                  disable=not settings.progress or settings.smoke) as bar:
            for record in executor.run(pending):
                store.add(record)
                bar.update()
        labels = store.to_pandas()
        store.to_csv(directory / "labels.csv")
        store.to_parquet(directory / "labels.parquet")
        summary = store.summary() | {"fid_by_reference_row": reference_fids(labels),
                                     "proxy_spearman_vs_fid": proxy_correlations(labels)}
    write_run_record(directory, settings, summary)
    return Result(settings, directory, labels, summary)


def kmeans_share(config_json: str) -> float:
    """Share of quantized layers that use K-Means (C or A) rather than UAQ."""
    specs = [s for s in QuantConfig.loads(config_json).values() if s is not None]
    return sum(s.method != "uaq" for s in specs) / max(1, len(specs))


def reference_fids(labels: pd.DataFrame) -> dict[str, float]:
    rows = labels[labels["kind"].isin(["float", "uniform"])]
    return {name: round(float(fid), 4) for name, fid in zip(rows["name"], rows["fid"], strict=True)}


def proxy_correlations(labels: pd.DataFrame) -> dict[str, float | None]:
    """Spearman correlation of each proxy with FID over the quantized rows (None with < 3 rows)."""
    rows = labels[labels["kind"] != "float"]
    if len(rows) < 3:
        return {p: None for p in PROXIES}
    return {p: round(float(spearmanr(rows[p], rows["fid"]).statistic), 4) for p in PROXIES}


def summary_text(result: Result) -> str:
    s, labels = result.summary, result.labels
    random_rows = labels[labels["kind"] == "random"]
    lines = [f"{s['rows']} labelled configurations in {result.directory / 'labels.sqlite'} ({s['by_kind']})",
             f"  protocol: {s['protocol']['n_images']} images, {s['protocol']['steps']} steps, guidance "
             f"{s['protocol']['guidance']}, noise seed {s['protocol']['noise_seed']}",
             f"  avg bits {s['avg_bits_range'][0]:.3f}..{s['avg_bits_range'][1]:.3f}, "
             f"FID {s['fid_range'][0]:.2f}..{s['fid_range'][1]:.2f}"]
    lines += [f"  {name:<20} FID {fid:10.2f}" for name, fid in s["fid_by_reference_row"].items()]
    if len(random_rows):
        lines.append(f"  random configurations: FID median {random_rows['fid'].median():.2f}, "
                     f"5-95% {random_rows['fid'].quantile(0.05):.2f}..{random_rows['fid'].quantile(0.95):.2f}")
    lines.append("  Spearman(proxy, FID): " + ", ".join(
        f"{p} {'n/a' if r is None else f'{r:.3f}'}" for p, r in s["proxy_spearman_vs_fid"].items()))
    return "\n".join(lines)


def plot_fid_vs_bits(result: Result) -> Figure:
    """FID vs average bits (coloured by K-Means share, float and uniform rows marked), and each proxy vs FID
    with its Spearman correlation; saved to figures/."""
    labels = result.labels.copy()
    labels["kmeans_share"] = [kmeans_share(c) for c in labels["config"]]
    random_rows, uniform = labels[labels["kind"] == "random"], labels[labels["kind"] == "uniform"]
    shares = random_rows["kmeans_share"] if len(random_rows) else labels["kmeans_share"]
    low = float(shares.min())
    colour = {"cmap": "viridis", "vmin": low, "vmax": max(float(shares.max()), low + 1e-6)}
    fig, axes = new_figure(17, 4.4, ncols=1 + len(PROXIES), width_ratios=[1.6] + [1] * len(PROXIES))
    ax = axes[0]
    points = ax.scatter(random_rows["avg_bits"], random_rows["fid"], c=random_rows["kmeans_share"], s=14, alpha=0.85,
                        label="random configurations", **colour)
    fig.colorbar(points, ax=axes, label="share of K-Means layers (vs UAQ)", location="bottom", shrink=0.35,
                 aspect=40, pad=0.02)
    markers = {"uaq": "s", "kmeans_c": "o", "kmeans_a": "^"}
    for row in uniform.itertuples():
        option = row.name.removeprefix("uniform ")
        ax.scatter(row.avg_bits, row.fid, marker=markers[option.rsplit("-", 1)[0]], s=70, facecolor="none",
                   edgecolor="crimson", linewidth=1.5)
        ax.annotate(option, (row.avg_bits, row.fid), textcoords="offset points", fontsize=7, color="crimson",
                    xytext=LABEL_OFFSETS[option.rsplit("-", 1)[0]])
    float_rows = labels[labels["kind"] == "float"]
    if len(float_rows):
        ax.axhline(float_rows["fid"].iloc[0], color="black", linestyle="--", linewidth=1,
                   label=f"float model (FID {float_rows['fid'].iloc[0]:.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("average bits per weight (incl. overhead)")
    ax.set_ylabel("FID (log scale)")
    ax.set_title(f"{result.settings.model_id}: {len(random_rows)} random configurations + uniform (red)")
    ax.legend(loc="upper right", fontsize=7)
    quantized = labels[labels["kind"] != "float"]
    correlations = result.summary["proxy_spearman_vs_fid"]
    for ax, proxy in zip(axes[1:], PROXIES, strict=True):
        ax.scatter(quantized[proxy], quantized["fid"], c=quantized["kmeans_share"], s=10, alpha=0.85, **colour)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(proxy.replace("_", " "))
        rho = correlations[proxy]
        ax.set_title(f"Spearman ρ = {'n/a' if rho is None else f'{rho:.3f}'}")
    axes[1].set_ylabel("FID")
    directory = result.directory if result.settings.smoke else None
    savefig(fig, f"02_fid_vs_bits_{result.settings.model_id}", directory)
    return fig
