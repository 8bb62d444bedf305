"""Stage 00: the embedded default denoisers and their feature classifier (notebook 00_train_denoisers).

By default it uses the checkpoints shipped in `data/checkpoints/` and only measures them: prompt accuracy
and FID of `eval_images` samples at the model's protocol (DPM-Solver++, 20 steps, guidance 3), the
real-vs-real FID floor, and a sample grid in `figures/`. With `retrain=True` it retrains the denoiser
(resumable) and the classifier and overwrites the shipped checkpoints. `smoke=True` trains a few steps into
the stage folder (never touching `data/checkpoints/`) and measures the shipped model on a few images.
Paper models have nothing to train; the stage records that and returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from qsd import digits
from qsd.labelling import feature_backend, fid_scorer
from qsd.metrics.classifier import classifier_path, classifier_record, save_classifier, train_classifier
from qsd.metrics.prompt_accuracy import prompt_accuracy
from qsd.models import get_entry, load_model
from qsd.models.embedded import ARCHITECTURES, checkpoint_metadata, checkpoint_path, load_embedded, save_checkpoint
from qsd.paths import project_root, stage_dir
from qsd.plotting import new_figure, savefig
from qsd.provenance import write_run_record
from qsd.sampling import SamplingProtocol, generate
from qsd.stages import StageSettings
from qsd.training.denoiser import TrainSettings, train_denoiser

STAGE = "00_train_denoisers"
TRAIN_STEPS = {"tiny_pixart": 6000, "tiny_dit": 4000, "tiny_sd": 1200}
"""Training steps (batch 64) of the shipped checkpoints."""
SMOKE_STEPS = 20


@dataclass(frozen=True)
class Settings(StageSettings):
    retrain: bool = False
    train_steps: int | None = None
    """None = the shipped checkpoint's step count (TRAIN_STEPS)."""
    eval_images: int = 1000
    progress: bool = True


@dataclass
class Result:
    settings: Settings
    directory: Path
    summary: dict
    images: torch.Tensor | None


def _checkpoint_dir(settings: Settings, directory: Path) -> Path:
    return directory / "checkpoints" if settings.smoke else project_root() / "data" / "checkpoints"


def _train(settings: Settings, directory: Path) -> dict:
    """Retrain (smoke: briefly, into the stage folder) the classifier and the denoiser; returns records."""
    target = _checkpoint_dir(settings, directory)
    classifier, clf_record = train_classifier(epochs=1 if settings.smoke else 40, seed=settings.seed)
    save_classifier(classifier, classifier_path(target), clf_record)
    model = load_embedded(get_entry(settings.model_id), trained=False)
    steps = SMOKE_STEPS if settings.smoke else settings.train_steps or TRAIN_STEPS[settings.model_id]
    train_settings = TrainSettings(steps=steps, seed=settings.seed, checkpoint_every=min(250, steps))
    record = train_denoiser(model, train_settings, directory / "train_state", progress=settings.progress)
    if record["complete"]:
        save_checkpoint(model.denoiser, checkpoint_path(settings.model_id, target), record)
    return {"classifier": clf_record, "denoiser": record}


def run(settings: Settings) -> Result:
    directory = stage_dir(settings.model_id, settings.run_id, STAGE)
    if settings.model_id not in ARCHITECTURES:
        summary = {"trained": False, "reason": f"{settings.model_id} is not an embedded model; nothing to train"}
        write_run_record(directory, settings, summary)
        return Result(settings, directory, summary, None)
    trained = _train(settings, directory) if settings.retrain or settings.smoke else None
    model = load_model(settings.model_id)  # the shipped (or, after a full retrain, the new) checkpoint
    backend = feature_backend(model.entry.fid_reference)
    fid = fid_scorer(backend, model.entry.fid_reference)
    n = 40 if settings.smoke else settings.eval_images
    protocol = SamplingProtocol(n_images=n, steps=model.entry.sampler.steps, guidance=model.entry.sampler.guidance,
                                seed=settings.seed)
    images = generate(model, protocol, progress=settings.progress)
    _, targets = model.protocol_prompts(n)
    heldout = digits.load_digits("heldout")[0]
    path = checkpoint_path(settings.model_id)
    summary = {
        "model_id": settings.model_id,
        "parameters": sum(p.numel() for p in model.denoiser.parameters()),
        "checkpoint_bytes": path.stat().st_size,
        "checkpoint": checkpoint_metadata(path),
        "classifier": classifier_record(),
        "protocol": vars(protocol),
        "prompt_accuracy": prompt_accuracy(backend.classifier, images, targets),
        "fid": fid(images),
        "fid_real_heldout": fid(heldout),
        "retrained": trained,
    }
    write_run_record(directory, settings, summary)
    return Result(settings, directory, summary, images)


def summary_text(result: Result) -> str:
    s = result.summary
    if result.images is None:
        return s["reason"]
    ckpt = s["checkpoint"]
    return (f"{s['model_id']}: {s['parameters']:,} parameters, checkpoint {s['checkpoint_bytes'] / 2**20:.2f} MiB "
            f"(fp16), trained {ckpt.get('steps_done')} steps\n"
            f"  {s['protocol']['n_images']} samples, {s['protocol']['steps']} DPM-Solver++ steps, guidance "
            f"{s['protocol']['guidance']}: prompt accuracy {s['prompt_accuracy']:.1%}, FID {s['fid']:.2f}\n"
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
    directory = result.directory if result.settings.smoke else None
    savefig(fig, f"00_samples_{s['model_id']}", directory)
    return fig
