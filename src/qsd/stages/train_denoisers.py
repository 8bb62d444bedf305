"""Stage 00: the embedded default denoisers and their feature classifier (notebook 00_train_denoisers).

By default it uses the checkpoints shipped in `data/checkpoints/` and only measures them. It sweeps the
classifier-free guidance scale over `guidance_grid` (FID and prompt accuracy of `eval_images` samples at each,
DPM-Solver++, 20 steps, the labelling protocol's dtype and compilation), because the labels of stage 02 are
only meaningful where the float model is at its best: an oversaturating guidance lets quantization noise
"improve" FID. The FID-optimal scale is the one the model's registry entry must use (`SamplerSettings.guidance`,
with the measurement written beside it); the summary says whether they agree. Also: the real-vs-real FID floor,
the sweep table (guidance_sweep.csv), a sweep figure and a sample grid at the entry's guidance in `figures/`.
With `retrain=True` it retrains the denoiser (resumable) and the classifier and overwrites the shipped checkpoints.
`smoke=True` trains a few steps into the stage folder (never touching `data/checkpoints/`) and measures the
shipped model on a few images (eagerly, at two scales and the entry's).
Paper models have nothing to train; the stage records that and returns. Issue 30's candidates
(`qsd.embedded.models.CANDIDATE_SHAPES`) are trained by `benchmarks/denoiser_candidates.py`; here they are measured,
and their sweep is written beside their checkpoint, where their registry entry reads its guidance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from qsd.embedded import digits
from qsd.embedded.classifier import classifier_path, classifier_record, save_classifier, train_classifier
from qsd.embedded.models import (
    CANDIDATE_SHAPES,
    EMBEDDED_BUILDERS,
    GUIDANCE_TABLE,
    checkpoint_dir,
    checkpoint_metadata,
    checkpoint_path,
    load_embedded,
    save_checkpoint,
)
from qsd.embedded.training import TrainSettings, train_denoiser
from qsd.errors import InvalidSettingError
from qsd.files import atomic_write
from qsd.metrics.fid import fid_scorer
from qsd.metrics.prompt_accuracy import prompt_accuracy
from qsd.models import feature_backend, get_entry, load_model
from qsd.plotting import new_figure, savefig
from qsd.provenance import write_run_record
from qsd.run_folder import DENOISERS
from qsd.sampling import AUTO_DTYPE, SamplingProtocol, generate, resolve_compute_dtype
from qsd.stages import StageSettings

STAGE = DENOISERS
TRAIN_STEPS = {"tiny_pixart": 6000, "tiny_dit": 4000, "tiny_sd": 1200}
"""Training steps (batch 64) of the shipped checkpoints."""
GUIDANCE_GRID = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)


@dataclass(frozen=True)
class Settings(StageSettings):
    retrain: bool = False
    """Retrain the classifier and the denoiser into data/checkpoints/ (a smoke run always trains, briefly, into
    the stage folder and never touches data/checkpoints/)."""
    train_steps: int | None = None
    """None = the shipped checkpoint's step count (TRAIN_STEPS)."""
    checkpoint_every: int = 250
    """Training steps between resumable saves of the training state."""
    classifier_epochs: int = 40
    """Epochs of the digit classifier (FID features, prompt accuracy) when retraining."""
    eval_images: int = 1000
    """Samples per guidance scale."""
    guidance_grid: tuple[float, ...] = GUIDANCE_GRID
    """Guidance scales swept. The entry's own scale is always added."""
    compute_dtype: str = AUTO_DTYPE
    """The denoiser's compute precision while sampling (as in stage 02's labelling protocol; 'auto' = bfloat16
    where the CPU computes it natively, else float32)."""
    compile: bool = True
    """torch.compile the denoiser (as in stage 02; never in smoke runs); False where no C++ compiler is available."""
    progress: bool = True

    SMOKE: ClassVar[dict[str, object]] = {"retrain": True, "train_steps": 20, "classifier_epochs": 1,
                                          "eval_images": 40, "guidance_grid": GUIDANCE_GRID[:2], "compile": False,
                                          "progress": False}
    RANGES: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "train_steps": (1, None), "checkpoint_every": (1, None), "classifier_epochs": (1, None),
        "eval_images": (2, None), "guidance_grid": (0, None)}
    NEUTRAL: ClassVar[tuple[str, ...]] = ("checkpoint_every",)

    def resolve(self) -> Settings:
        return dataclasses.replace(self, train_steps=self.train_steps or TRAIN_STEPS.get(self.model_id),
                                   compute_dtype=resolve_compute_dtype(self.compute_dtype))


@dataclass
class Result:
    settings: Settings
    directory: Path
    summary: dict
    images: torch.Tensor | None


def _checkpoint_dir(settings: Settings, directory: Path) -> Path:
    return directory / "checkpoints" if settings.smoke else checkpoint_dir(settings.model_id)


def _train(settings: Settings, directory: Path) -> dict:
    """Retrain (smoke: briefly, into the stage folder) the classifier and the denoiser; returns records."""
    target = _checkpoint_dir(settings, directory)
    classifier, clf_record = train_classifier(epochs=settings.classifier_epochs, seed=settings.seed)
    save_classifier(classifier, classifier_path(target), clf_record)
    model = load_embedded(get_entry(settings.model_id), trained=False)
    train_settings = TrainSettings(steps=settings.train_steps, seed=settings.seed,
                                   checkpoint_every=min(settings.checkpoint_every, settings.train_steps))
    record = train_denoiser(model, train_settings, directory / "train_state", progress=settings.progress)
    if record["complete"]:
        save_checkpoint(model.denoiser, checkpoint_path(settings.model_id, target), record)
    return {"classifier": clf_record, "denoiser": record}


def run(settings: Settings) -> Result:
    settings = settings.effective()
    candidate = settings.model_id in CANDIDATE_SHAPES
    if candidate and settings.retrain and not settings.smoke:
        raise InvalidSettingError(f"{settings.model_id} is an issue-30 candidate: train it with "
                                  "benchmarks/denoiser_candidates.py (retrain=True also retrains the shipped "
                                  "digit classifier, which every embedded model's FID uses)")
    directory = settings.output_dir(STAGE)
    if settings.model_id not in EMBEDDED_BUILDERS and not candidate:
        summary = {"trained": False, "reason": f"{settings.model_id} is not an embedded model; nothing to train"}
        write_run_record(directory, settings, summary)
        return Result(settings, directory, summary, None)
    trained = _train(settings, directory) if settings.retrain else None
    model = load_model(settings.model_id)  # the shipped (or, after a full retrain, the new) checkpoint
    backend = feature_backend(model.entry.fid_reference)
    fid = fid_scorer(backend, model.entry.fid_reference)
    n = settings.eval_images
    entry_guidance = model.entry.sampler.guidance
    grid = sorted({*settings.guidance_grid, entry_guidance})
    _, targets = model.protocol_prompts(n)
    rows, images = [], None
    for guidance in tqdm(grid, desc="guidance sweep", unit="scale", disable=not settings.progress):
        protocol = SamplingProtocol.for_model(model.entry, n_images=n, guidance=guidance, seed=settings.seed,
                                              compute_dtype=settings.compute_dtype, compile=settings.compile)
        sampled = generate(model, protocol, progress=False)
        rows.append({"guidance": guidance, "fid": fid(sampled),
                     "prompt_accuracy": prompt_accuracy(backend.classifier, sampled, targets)})
        if guidance == entry_guidance:
            images, at_entry = sampled, rows[-1]
    sweep = pd.DataFrame(rows)
    sweep.to_csv(directory / "guidance_sweep.csv", index=False)
    # a new checkpoint ships with its own sweep; a candidate's entry takes its guidance from its own sweep
    if (trained is not None and trained["denoiser"]["complete"]) or (candidate and not settings.smoke):
        ship_guidance_sweep(settings.model_id, sweep, _checkpoint_dir(settings, directory))
    best = sweep.loc[sweep["fid"].idxmin()]
    heldout = digits.load_digits("heldout")[0]
    path = checkpoint_path(settings.model_id)
    summary = {
        "model_id": settings.model_id,
        "parameters": sum(p.numel() for p in model.denoiser.parameters()),
        "checkpoint_bytes": path.stat().st_size,
        "checkpoint": checkpoint_metadata(path),
        "classifier": classifier_record(),
        "protocol": {"n_images": n, "steps": model.entry.sampler.steps, "guidance": entry_guidance,
                     "seed": settings.seed, "compute_dtype": settings.compute_dtype,
                     "compile": settings.compile},
        "prompt_accuracy": at_entry["prompt_accuracy"],
        "fid": at_entry["fid"],
        "fid_real_heldout": fid(heldout),
        "guidance_sweep": sweep.round(4).to_dict(orient="records"),
        "guidance_fid_optimal": float(best["guidance"]),
        "entry_guidance_is_fid_optimal": bool(best["guidance"] == entry_guidance),
        "retrained": trained,
    }
    write_run_record(directory, settings, summary)
    return Result(settings, directory, summary, images)


def ship_guidance_sweep(model_id: str, sweep: pd.DataFrame, checkpoint_dir: Path) -> Path:
    """Write `model_id`'s rows of the shipped guidance table (`GUIDANCE_TABLE` beside the checkpoints), keeping
    the other models' rows: the measurement behind each embedded entry's guidance."""
    path = checkpoint_dir / GUIDANCE_TABLE
    table = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["model_id", *sweep.columns])
    table = pd.concat([table[table["model_id"] != model_id], sweep.assign(model_id=model_id)], ignore_index=True)
    return atomic_write(path, lambda tmp: table.round(4).to_csv(tmp, index=False))


def sweep_table(result: Result) -> pd.DataFrame:
    """FID and prompt accuracy of the float model per guidance scale (empty: nothing was sampled)."""
    return pd.DataFrame(result.summary.get("guidance_sweep", []), columns=["guidance", "fid", "prompt_accuracy"])


def summary_text(result: Result) -> str:
    s = result.summary
    if result.images is None:
        return s["reason"]
    ckpt = s["checkpoint"]
    return (f"{s['model_id']}: {s['parameters']:,} parameters, checkpoint {s['checkpoint_bytes'] / 2**20:.2f} MiB "
            f"(fp16), trained {ckpt.get('steps_done')} steps\n"
            f"  {s['protocol']['n_images']} samples, {s['protocol']['steps']} DPM-Solver++ steps, guidance "
            f"{s['protocol']['guidance']} (the entry's): prompt accuracy {s['prompt_accuracy']:.1%}, "
            f"FID {s['fid']:.2f}\n"
            f"  FID-optimal guidance of the sweep: {s['guidance_fid_optimal']:g} "
            f"({'matches' if s['entry_guidance_is_fid_optimal'] else 'DIFFERS FROM'} the registry entry)\n"
            f"  real held-out digits: FID {s['fid_real_heldout']:.2f}; classifier accuracy on unseen digits "
            f"{s['classifier']['test_accuracy']:.1%}")


def plot_sample_grid(result: Result, rows: int = 8) -> Figure | None:
    """Samples in a grid: column d holds the first `rows` images prompted with digit d (None: no samples)."""
    images = result.images
    if images is None:
        return None
    n_cols = digits.N_CLASSES
    rows = min(rows, len(images) // n_cols)
    fig, grid = new_figure(n_cols * 0.7, rows * 0.7 + 0.4, nrows=rows, ncols=n_cols, squeeze=False)
    for r in range(rows):
        for d in range(n_cols):
            ax = grid[r][d]
            ax.imshow(images[r * n_cols + d, 0], cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(str(d), fontsize=9)
    s = result.summary
    fig.suptitle(f"{s['model_id']}: prompt accuracy {s['prompt_accuracy']:.1%}, FID {s['fid']:.1f} "
                 f"(real held-out {s['fid_real_heldout']:.1f})", fontsize=9)
    directory = result.settings.figures_to(result.directory)
    savefig(fig, f"00_samples_{s['model_id']}", directory)
    return fig


def plot_guidance_sweep(result: Result) -> Figure | None:
    """FID (left axis, log) and prompt accuracy (right axis) of the float model against the guidance scale, the
    entry's scale marked; saved to figures/ (None: nothing was sampled)."""
    if result.images is None:
        return None
    s = result.summary
    sweep = sweep_table(result)
    fig, ax = new_figure(6.4, 3.6)
    ax.plot(sweep["guidance"], sweep["fid"], "o-", color="C0", label="FID")
    best = sweep.loc[sweep["fid"].idxmin()]
    ax.scatter([best["guidance"]], [best["fid"]], marker="*", s=160, color="C3", zorder=3,
               label=f"FID optimum {best['fid']:.1f} at {best['guidance']:g}")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("classifier-free guidance scale")
    ax.set_ylabel("FID vs real digits (log)", color="C0")
    accuracy = ax.twinx()
    accuracy.plot(sweep["guidance"], 100 * sweep["prompt_accuracy"], "s--", color="C1", label="prompt accuracy")
    accuracy.set_ylabel("prompt accuracy (%)", color="C1")
    accuracy.grid(False)
    ax.axvline(s["protocol"]["guidance"], color="black", linestyle=":", linewidth=1)
    ax.annotate(f"entry: {s['protocol']['guidance']:g}", (s["protocol"]["guidance"], sweep["fid"].max()),
                textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_title(f"{s['model_id']}: float model vs guidance ({s['protocol']['n_images']} images, "
                 f"{s['protocol']['steps']} steps)")
    directory = result.settings.figures_to(result.directory)
    savefig(fig, f"00_guidance_{s['model_id']}", directory)
    return fig
