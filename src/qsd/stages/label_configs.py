"""Stage 02: label random quantization configurations (paper §3.2; notebook 02_label_configs).

Draws `n_configs` random configurations by the run's label design (`qsd.design`; `design`): the paper's scheme
(`MultiQuantizer.sample`: p ~ U(0,1), each layer low-bit with probability p, method uniform) for the paper's search
space, or the budget-stratified design (average bits spread evenly over `design_bits`), the default of the extended
space. Configuration i comes from its own generator seeded by (seed, i), so asking for more extends the same stream.
A test stream of `test_configs` more is stored as kind `test` (drawn the same way, from generators with their own
spawn key): no stage trains on it or chooses with it; stage 05 reports every predictor's ranking on it.
It also labels the reference rows: the float model and every uniform configuration (every layer one option).
Each label is FID, prompt accuracy (embedded models), average bits incl. overhead, quantized size, summed layer
error and the two cheap proxies, under common random numbers.

It reads the multiquantizer that stage 01 saved for the same run (a missing or mismatched file is an error
naming notebook 01, never a rebuild) and labels through a `qsd.label_session.LabelSession`, in this process,
with the model and multiquantizer it has already loaded; the float images are sampled once and also give the
probe of the ε proxy. Stage 05 labels into the same store through a session opened from this stage's settings.

The regime check (`regime`): labels are only worth learning from if they rank the way the paper's do, so the
summary says whether the float model is the best row by more than its own FID spread over 3 noise seeds, and
whether every uniform 3-bit row is worse than its 4-bit row (paper §6.1: PixArt-α uniform W4 FID ≈ 33,
W3 ≈ 77-81).

Labels go to `data/runs/<model_id>/<run_id>/02_label_configs/labels.sqlite` (`qsd.store`) as they finish;
a restarted run continues where it stopped. Also written: labels.csv, labels.parquet, regime.csv,
rows/ (the float model's seed FIDs, `qsd.row_cache`), summary.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from scipy.stats import spearmanr

from qsd.config import QuantConfig, QuantSpec
from qsd.design import DEFAULT_BITS_RANGE, DESIGNS, ConfigSampler, config_sampler, stream_generator
from qsd.errors import InvalidSettingError
from qsd.executors import InProcessExecutor, LabelJob
from qsd.label_session import LabellingSetup, LabelSession
from qsd.labelling import Labeller
from qsd.multiquant import MultiQuantizer
from qsd.plotting import new_figure, savefig
from qsd.provenance import write_run_record
from qsd.row_cache import RowCache
from qsd.run_folder import LABELS, RunFolder
from qsd.sampling import AUTO_DTYPE, resolve_compute_dtype
from qsd.space import search_space
from qsd.stages import SamplingSettings
from qsd.store import DATASET_KINDS, TEST_KIND, LabelStore

STAGE = LABELS
PROXIES = ("sample_mse", "eps_error", "summed_error")
TEST_STREAM = 2
"""Seed stream of the test stream (`qsd.design.stream_generator`; the random stream is 0, stage 05's active pool 1)."""
LABEL_OFFSETS = {"uaq": (6, -12), "kmeans_c": (6, 4), "kmeans_a": (6, 8)}
"""Where the uniform rows' names go (points), so that neighbouring 4-bit rows stay readable."""


@dataclass(frozen=True)
class Settings(SamplingSettings):
    n_configs: int = 160
    """Random configurations (the reference rows come on top). Sized by the predictor's learning curve: the
    smallest measured budget whose 5-fold GNN Spearman on FID clears 0.85 by more than its spread, and ≤ 20 min
    on 2 cores (docs/stages.md, "Label budget")."""
    test_configs: int = 40
    """Test-stream configurations (kind `test`): labelled once, scored against, never trained on or chosen with."""
    design: str | None = None
    """How the random configurations are drawn (`qsd.design`): 'paper' or 'stratified'; None = the search space's
    own (stage 01's `space`: 'paper' for the paper's space, 'stratified' for the extended one)."""
    design_bits: tuple[float, float] = DEFAULT_BITS_RANGE
    """The average bits the stratified design spreads its configurations over (raised to the space's lowest)."""
    n_images: int = 256
    compute_dtype: str = AUTO_DTYPE
    """The denoiser's compute precision under autocast: 'bfloat16', 'float32', or 'auto' = bfloat16 where `device`
    computes it natively, else float32 (docs/deviations.md: bfloat16 moves the float model's FID by about 1 %; it
    is 1.1-1.4x faster with bf16 units and 8x slower without). settings.json records the resolved one."""
    compile: bool = True
    """Run the denoiser through torch.compile (`SamplingProtocol.compile`; docs/measurements.md: measured gain and
    one-off compile time). Needs a C++ compiler on CPU; set False where there is none. Never in smoke runs (a cold
    compile cost the smoke run about a minute; tests/test_sampling_metrics.py checks the compiled path)."""
    n_probe: int = 16
    """Images whose float trajectory probes the ε-error proxy."""
    batch_size: int = 256
    """Most images per batched generation (part of the protocol: compiled results depend on the batch shape)."""
    float_seeds: int = 3
    """Noise seeds over which the float model's FID spread is measured (the regime check's yardstick)."""
    clip_dir: str | None = None
    """A local CLIP directory (see qsd.metrics.clip_score): text-to-image models then get a CLIP score."""
    executor: str = "inprocess"
    """'inprocess' or 'ray'."""
    workers: int = 2
    """Ray actors."""
    ray_address: str | None = None
    """An existing Ray cluster; None = start a local one (executor 'ray' only)."""
    device: str = "cpu"
    """Where the denoisers run: 'cpu' or 'cuda' (Ray then gives every worker one GPU)."""
    w4_max_avg_bits: float = 4.5
    """`best_w4_fid_ratio` takes uniform 4-bit rows up to this many average bits (a per-channel 4-bit codebook
    alone costs 2 bits on 128-wide layers)."""
    progress: bool = True
    """Progress bars (always off in smoke runs, whose printed outputs nbval compares)."""

    SMOKE: ClassVar[dict[str, object]] = {"n_configs": 4, "test_configs": 3, "n_images": 32, "steps": 8,
                                          "compile": False, "progress": False}
    RANGES: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "n_configs": (0, None), "test_configs": (0, None), "n_images": (1, None), "steps": (1, None),
        "n_probe": (1, None), "batch_size": (1, None), "float_seeds": (1, None), "workers": (1, None)}
    NEUTRAL: ClassVar[tuple[str, ...]] = ("executor", "workers", "ray_address")
    """The executors label identically (tests/test_label_configs.py)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.design is not None and self.design not in DESIGNS:
            raise InvalidSettingError(f"label_configs setting design = {self.design!r}: choose one of {DESIGNS} "
                                      "(or None: the search space's own)")

    def resolve(self) -> Settings:
        resolved = super().resolve()
        return dataclasses.replace(resolved, compute_dtype=resolve_compute_dtype(self.compute_dtype, self.device),
                                   design=self.design or search_space(self.run_space()).default_design)


@dataclass
class Result:
    settings: Settings
    directory: Path
    labels: pd.DataFrame
    summary: dict


def reference_jobs(multiquantizer: MultiQuantizer) -> list[LabelJob]:
    """The float model and every uniform configuration (one per quantized option: method × bits)."""
    jobs = [LabelJob(multiquantizer.uniform(None), "float", "float")]
    options = sorted(multiquantizer.options, key=QuantSpec.display_order)
    return jobs + [LabelJob(multiquantizer.uniform(s), "uniform", f"uniform {s.key}") for s in options]


def random_jobs(sampler: ConfigSampler, seed: int, n: int) -> list[LabelJob]:
    """Random configurations 0..n-1 of the seed stream `seed` (configuration i depends only on (seed, i))."""
    return [LabelJob(sampler(stream_generator(seed, i), i), "random", f"random {i}", i) for i in range(n)]


def test_jobs(sampler: ConfigSampler, seed: int, n: int) -> list[LabelJob]:
    """Test-stream configurations 0..n-1: the same design, seed stream `TEST_STREAM` (`stream_generator`)."""
    return [LabelJob(sampler(stream_generator(seed, i, TEST_STREAM), i), TEST_KIND, f"test {i}", i) for i in range(n)]


def run(settings: Settings) -> Result:
    """Label the reference rows and `n_configs` random configurations, resuming from the store."""
    settings = settings.effective()
    session = LabelSession.open(LabellingSetup.of(settings), RunFolder(settings.model_id, settings.run_id),
                                settings.progress)
    directory = settings.output_dir(STAGE)
    multiquantizer = session.multiquantizer
    sampler = config_sampler(settings.design, multiquantizer, settings.design_bits)
    labels = session.label(reference_jobs(multiquantizer) + random_jobs(sampler, settings.seed, settings.n_configs)
                           + test_jobs(sampler, settings.seed, settings.test_configs))
    tests = int((labels["kind"] == TEST_KIND).sum())
    labels = labels[labels["kind"].isin(DATASET_KINDS)].reset_index(drop=True)
    float_fids = float_seed_fids(directory, session, settings.float_seeds)
    table = regime_table(labels, float_fids)
    table.to_csv(directory / "regime.csv")
    with LabelStore(session.store_path, session.record) as store:
        summary = {"space": settings.run_space(), "design": settings.design} | store.summary(DATASET_KINDS) | {
            "test_configs": tests,
            "fid_by_reference_row": reference_fids(labels), "proxy_spearman_vs_fid": proxy_correlations(labels),
            **regime(labels, float_fids, settings.w4_max_avg_bits)}
    write_run_record(directory, settings, summary)
    return Result(settings, directory, labels, summary)


def float_seed_fids(directory: Path, session: LabelSession, float_seeds: int) -> list[float]:
    """The float model's FID under `float_seeds` noise seeds (the protocol's first), measured once per protocol
    (`qsd.row_cache`). In this process the labelling worker's float images are reused; with Ray the driver samples
    them itself."""
    def measure() -> dict:
        if isinstance(session.executor, InProcessExecutor):
            labeller = session.executor.worker.labeller
        else:
            setup = session.setup
            labeller = Labeller(session.model, setup.protocol(), setup.n_probe, setup.batch_size, progress=False)
        return {"fids": labeller.seed_scores(float_seeds)[0]["fid_seeds"]}

    depends_on = {"protocol": session.record, "float_seeds": float_seeds}
    return RowCache(directory / "rows").measure("float seed FIDs", depends_on, measure)["fids"]


def regime_table(labels: pd.DataFrame, float_fids: list[float]) -> pd.DataFrame:
    """Float plus the uniform rows: FID, prompt accuracy, average bits, FID ratio to float; the float row also
    carries its FID range over noise seeds."""
    rows = labels[labels["kind"].isin(["float", "uniform"])].set_index("name")
    table = rows[["fid", "prompt_accuracy", "avg_bits"]].copy()
    table["fid_ratio_to_float"] = table["fid"] / rows.loc["float", "fid"]
    table["float_seed_fid_spread"] = np.nan
    table.loc["float", "float_seed_fid_spread"] = max(float_fids) - min(float_fids)
    return table


def regime(labels: pd.DataFrame, float_fids: list[float], w4_max_avg_bits: float = 4.5) -> dict:
    """The headline checks of the label regime (see the module docstring); the best uniform W4 row is taken among
    those with at most `w4_max_avg_bits` average bits."""
    by_name = labels.set_index("name")
    float_fid = float(by_name.loc["float", "fid"])
    spread = max(float_fids) - min(float_fids)
    quantized = labels[labels["kind"] != "float"]
    uniform = labels[labels["kind"] == "uniform"].set_index("name")
    fid = uniform.set_index(["method", "w_bits"])["fid"]
    pairs = {m: (fid[m, 3], fid[m, 4]) for m in sorted(set(uniform["method"]))
             if (m, 3) in fid.index and (m, 4) in fid.index}
    w4 = uniform[(uniform["w_bits"] == 4) & (uniform["avg_bits"] <= w4_max_avg_bits)]
    best_w4 = w4["fid"].idxmin() if len(w4) else None
    prompt_accuracy = by_name.loc["float", "prompt_accuracy"]
    return {
        "float_fid": round(float_fid, 4),
        "float_prompt_accuracy": None if pd.isna(prompt_accuracy) else round(float(prompt_accuracy), 4),
        "float_seed_fids": [round(f, 4) for f in float_fids],
        "float_seed_fid_spread": round(spread, 4),
        "float_is_best": bool(len(quantized)) and bool((quantized["fid"] > float_fid + spread).all()),
        "w3_worse_than_w4": bool(pairs) and all(w3 > w4_fid for w3, w4_fid in pairs.values()),
        "best_w4": best_w4,
        "best_w4_fid_ratio": None if best_w4 is None else round(float(w4.loc[best_w4, "fid"]) / float_fid, 4),
    }


def regime_text(result: Result) -> str:
    """The regime table and its verdicts, as the notebook prints them."""
    s = result.summary
    table = pd.read_csv(result.directory / "regime.csv", index_col=0)
    verdicts = (f"float model best beyond its {len(s['float_seed_fids'])}-seed FID spread "
                f"({s['float_seed_fid_spread']:.2f}): {s['float_is_best']}; every uniform W3 worse than its W4: "
                f"{s['w3_worse_than_w4']}; best uniform W4 (≤ {result.settings.w4_max_avg_bits} avg bits): "
                f"{s['best_w4']}, "
                f"FID {s['best_w4_fid_ratio']}× the float model's")
    return table.to_string(float_format=lambda v: f"{v:.3f}", na_rep="") + "\n" + verdicts


def label_table(result: Result) -> pd.DataFrame:
    """One row per labelled configuration, without the configuration JSON and the per-row provenance and timing
    columns (which differ from run to run)."""
    return result.labels.drop(columns=["config", "provenance", "seconds", "labelled_at"])


def config_table(result: Result, name: str) -> pd.DataFrame:
    """The per-layer choices of the labelled configuration `name` (e.g. "random 0"): method and bits per unit
    (a float layer: method "float", 16 bits)."""
    config = QuantConfig.loads(result.labels.set_index("name").loc[name, "config"])
    rows = {unit: ("float", 16) if spec is None else (spec.method, spec.w_bits) for unit, spec in config.items()}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["method", "w_bits"]).rename_axis("unit")


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
        option = QuantSpec(row.method, int(row.w_bits)).key
        ax.scatter(row.avg_bits, row.fid, marker=markers[row.method], s=70, facecolor="none",
                   edgecolor="crimson", linewidth=1.5)
        ax.annotate(option, (row.avg_bits, row.fid), textcoords="offset points", fontsize=7, color="crimson",
                    xytext=LABEL_OFFSETS[row.method])
    float_rows = labels[labels["kind"] == "float"]
    if len(float_rows):
        ax.axhline(float_rows["fid"].iloc[0], color="black", linestyle="--", linewidth=1,
                   label=f"float model (FID {float_rows['fid'].iloc[0]:.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("average bits per weight (incl. overhead)")
    ax.set_ylabel("FID (log scale)")
    ax.set_title(f"{result.settings.subject()}: {len(random_rows)} random configurations + uniform (red)")
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
    directory = result.settings.figures_to(result.directory)
    savefig(fig, result.settings.figure_name("02_fid_vs_bits"), directory)
    return fig
