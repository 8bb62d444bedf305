"""The embedded default denoisers: small real diffusers models trained in-project on 16×16 MNIST digits
(`qsd.embedded.digits`), one per family of the paper — `tiny_pixart` (PixArtTransformer2DModel, text-to-image,
the default), `tiny_sd` (UNet2DConditionModel with cross-attention, the U-Net family) and `tiny_dit`
(DiTTransformer2DModel, class-conditional like DiT-XL/2). They denoise in pixel space (1×16×16, no
VAE), use a linear β schedule over 1,000 steps, ε-prediction, and sample with DPM-Solver++.

Checkpoints are shipped as fp16 safetensors in `data/checkpoints/` (made by notebook 00).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from qsd.embedded import captions, digits
from qsd.errors import CorruptFileError, ModelNotAvailableError
from qsd.files import atomic_write
from qsd.models.attention import use_short_sequence_attention
from qsd.models.base import Condition, DiffusionModel, ModelEntry, SamplerSettings
from qsd.paths import project_root
from qsd.quantizers import QuantizerSettings

TRAIN_TIMESTEPS = 1000
BETA_SCHEDULE = "linear"
NULL_CLASS = digits.N_CLASSES
FID_REFERENCE = "mnist16-train"
"""The embedded models' FID reference set: the `train` digits, on the digit classifier's features."""
GUIDANCE_BASIS = ("FID-optimal scale of stage 00's guidance sweep (1,000 images, 20 DPM-Solver++ steps, bfloat16, "
                  "scales 1-4; data/checkpoints/guidance_sweep.csv): {}")


def _sampler(guidance: float, measured: str) -> SamplerSettings:
    return SamplerSettings(scheduler="dpmsolver++", steps=20, guidance=guidance, resolution=digits.RESOLUTION,
                           guidance_basis=GUIDANCE_BASIS.format(measured))


MIN_MAX_UAQ = QuantizerSettings(uaq_clip_ratios=(0.0,))
"""UAQ over each channel's full range. The paper's clipping search (shrink 0-90 %, L2.4) clips the few large
weights that carry these small models' outputs (docs/label_regime.md)."""
L4_SEARCH_UAQ = QuantizerSettings(uaq_clip_p=4.0)
"""The paper's shrink search scored by L4 instead of L2.4: large errors (clipped outliers) weigh more."""
RANGE_RULE_BASIS = ("uniform UAQ W4/W3 FID at 512 images (benchmarks/uaq_range_rule.py): {}; the paper's models "
                    "keep the paper's search")


def _pixart(width: int = 128, depth: int = 4) -> nn.Module:
    """PixArt-α's transformer at `width` channels (heads of 32) and `depth` blocks; `tiny_pixart` is 128 × 4."""
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        num_attention_heads=width // 32, attention_head_dim=32, in_channels=1, out_channels=1, num_layers=depth,
        cross_attention_dim=width, caption_channels=captions.EMBED_DIM, sample_size=digits.RESOLUTION,
        patch_size=4, use_additional_conditions=False, norm_num_groups=1,
    )


def _unet() -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=digits.RESOLUTION, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
        cross_attention_dim=captions.EMBED_DIM, attention_head_dim=8, norm_num_groups=8,
    )


def _dit() -> nn.Module:
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=32, in_channels=1, out_channels=1, num_layers=4,
        sample_size=digits.RESOLUTION, patch_size=2, num_embeds_ada_norm=digits.N_CLASSES, norm_num_groups=1,
    )


EMBEDDED_BUILDERS = {"tiny_pixart": _pixart, "tiny_sd": _unet, "tiny_dit": _dit}
CANDIDATE_SHAPES: dict[str, tuple[int, int]] = {"pixart_w256_d8": (256, 8), "pixart_w256_d12": (256, 12),
                                                "pixart_w384_d8": (384, 8)}
"""Issue 30's paper-shaped candidates, (width, blocks): `tiny_pixart`'s captions, digits and 16 tokens, deeper and
wider. Registered models whose checkpoints do not ship: `benchmarks/denoiser_candidates.py` trains each into
`build/candidates/<name>/`, where the stages find it; the one chosen ships in `data/checkpoints/`."""
CANDIDATE_BUILDERS = {name: partial(_pixart, *shape) for name, shape in CANDIDATE_SHAPES.items()}
GUIDANCE_TABLE = "guidance_sweep.csv"
"""Beside the checkpoints: the guidance sweep each embedded entry's guidance was chosen from (stage 00)."""


def checkpoint_dir(model_id: str) -> Path:
    """Where `model_id`'s checkpoint and guidance sweep live: `data/checkpoints/`, a candidate's build folder."""
    if model_id in CANDIDATE_SHAPES:
        return project_root() / "build" / "candidates" / model_id
    return project_root() / "data" / "checkpoints"


def checkpoint_path(model_id: str, directory: Path | None = None) -> Path:
    return (directory or checkpoint_dir(model_id)) / f"{model_id}.safetensors"


def build_denoiser(model_id: str, seed: int = 0) -> nn.Module:
    """A freshly initialised (untrained) denoiser of an embedded model. DiT's label embeddings drop labels
    at random in train mode, independently per block; that is switched off because training drops the
    condition itself, once per sample (`qsd.embedded.training`)."""
    from diffusers.models.embeddings import LabelEmbedding

    torch.manual_seed(seed)
    denoiser = (EMBEDDED_BUILDERS | CANDIDATE_BUILDERS)[model_id]()
    for module in denoiser.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0
    return denoiser


def save_checkpoint(denoiser: nn.Module, path: Path, metadata: dict) -> None:
    """fp16 weights plus `metadata` (how it was trained, measured quality) as JSON, written atomically."""
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in denoiser.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"qsd": json.dumps(metadata, sort_keys=True)}))


def checkpoint_metadata(path: Path) -> dict:
    with safe_open(path, "pt") as f:
        return json.loads((f.metadata() or {}).get("qsd", "{}"))


def load_trained_denoiser(model_id: str, directory: Path | None = None) -> nn.Module:
    """The shipped (or retrained) denoiser in float32, eval mode."""
    path = checkpoint_path(model_id, directory)
    if not path.is_file():
        how = (f"train it with `.venv/bin/python benchmarks/denoiser_candidates.py --candidates {model_id}`"
               if model_id in CANDIDATE_SHAPES else "it ships in data/checkpoints/ with the repository, or run "
               f"notebooks/00_train_denoisers.ipynb with model_id={model_id!r} to train it")
        raise ModelNotAvailableError(f"no checkpoint for {model_id!r} at {path}; {how}")
    denoiser = build_denoiser(model_id)
    try:
        state = load_file(path)
        denoiser.load_state_dict({k: v.float() for k, v in state.items()})
    except Exception as exc:  # safetensors / shape errors: the file is not this model's checkpoint
        raise CorruptFileError(f"{path} is not a valid {model_id!r} checkpoint: {exc}") from exc
    return denoiser.eval()


class EmbeddedModel(DiffusionModel):
    """Shared by the three embedded defaults: pixel-space 1×16×16, linear β, DPM-Solver++, attention with
    explicit scores for their 16-64-token sequences (`qsd.models.attention`)."""

    def __init__(self, entry: ModelEntry, denoiser: nn.Module) -> None:
        self.entry, self.denoiser = entry, self.prepare_denoiser(denoiser)
        self.latent_shape = (1, digits.RESOLUTION, digits.RESOLUTION)

    def prepare_denoiser(self, denoiser: nn.Module) -> nn.Module:
        use_short_sequence_attention(denoiser)
        return denoiser

    def protocol_prompts(self, n: int) -> tuple[list, torch.Tensor]:
        """Image i asks for digit i mod 10 (phrasing cycling every 10 images for text models)."""
        targets = torch.arange(n) % digits.N_CLASSES
        if self.entry.conditioning == "class":
            return targets.tolist(), targets
        phrasing = (torch.arange(n) // digits.N_CLASSES) % len(captions.PHRASINGS)
        return [captions.caption(int(d), int(p)) for d, p in zip(targets, phrasing, strict=True)], targets

    def make_scheduler(self, sampler: bool = True):
        from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

        if not sampler:
            return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE)
        return DPMSolverMultistepScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE,
                                           algorithm_type="dpmsolver++", solver_order=2)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents + 1) / 2).clamp(0, 1)


class TextConditioned(EmbeddedModel):
    """`tiny_pixart` and `tiny_sd`: frozen MiniLM caption states, empty caption as the null condition."""

    def condition(self, prompts: Sequence[str]) -> Condition:
        states, mask = captions.caption_encoder()(list(prompts))
        return {"encoder_hidden_states": states, "encoder_attention_mask": mask}

    def null_condition(self, n: int) -> Condition:
        return self.condition([captions.NULL_CAPTION] * n)

    def predict_noise(self, latents: torch.Tensor, timestep: torch.Tensor, condition: Condition) -> torch.Tensor:
        if self.entry.family == "pixart":
            out = self.denoiser(hidden_states=latents, timestep=timestep, return_dict=False,
                                added_cond_kwargs={"resolution": None, "aspect_ratio": None}, **condition)
        else:
            out = self.denoiser(sample=latents, timestep=timestep, return_dict=False, **condition)
        return out[0]


class ClassConditioned(EmbeddedModel):
    """`tiny_dit`: class labels 0-9, label 10 is DiT's null class (its label embedding has 11 rows)."""

    def condition(self, prompts: Sequence[int]) -> Condition:
        return {"class_labels": torch.as_tensor(list(prompts), dtype=torch.long)}

    def null_condition(self, n: int) -> Condition:
        return {"class_labels": torch.full((n,), NULL_CLASS, dtype=torch.long)}

    def predict_noise(self, latents: torch.Tensor, timestep: torch.Tensor, condition: Condition) -> torch.Tensor:
        return self.denoiser(hidden_states=latents, timestep=timestep, return_dict=False, **condition)[0]


def load_embedded(entry: ModelEntry, checkpoint_dir: Path | None = None, trained: bool = True,
                  device: str | torch.device = "cpu", denoiser: nn.Module | None = None) -> EmbeddedModel:
    """The embedded model `entry`, from its shipped checkpoint (or untrained, for training/tests), with the
    denoiser on `device` (captions are encoded on the CPU). `denoiser` replaces the checkpoint's (e.g. a packed
    one from `qsd.load_quantized`), so the float weights are never loaded."""
    if denoiser is None:
        denoiser = load_trained_denoiser(entry.model_id, checkpoint_dir) if trained else build_denoiser(entry.model_id)
    denoiser = denoiser.to(device)
    cls = ClassConditioned if entry.conditioning == "class" else TextConditioned
    return cls(entry, denoiser)


ENTRIES = (
    ModelEntry("tiny_pixart", "pixart", "PixArtTransformer2DModel", "text",
               _sampler(1.5, "FID 15.9 at 1.5 (prompt accuracy 91.7 %) vs 23.0 at 1.25, 22.0 at 1.75, 144.3 at 3"),
               FID_REFERENCE,
               "PixArt-α-like text-to-image transformer (4 blocks, d=128) on MNIST-16, MiniLM captions",
               loader=load_embedded, quantizer=MIN_MAX_UAQ,
               quantizer_basis=RANGE_RULE_BASIS.format("min-max 30.0/58.7, the paper's search 192.2/246.6, L4 "
                                                       "search 50.2/144.3, L8 search 30.0/126.4 (float 19.3)")),
    ModelEntry("tiny_sd", "unet", "UNet2DConditionModel", "text",
               _sampler(1.25, "FID 8.6 at 1.25 (prompt accuracy 92.1 %) vs 13.9 at 1.0, 18.2 at 1.5, 187.1 at 3"),
               FID_REFERENCE, "SD-like cross-attention U-Net on MNIST-16, MiniLM captions", loader=load_embedded,
               quantizer=L4_SEARCH_UAQ,
               quantizer_basis=RANGE_RULE_BASIS.format("L4 search 43.8/202.2, min-max 101.3/511.1, the paper's "
                                                       "search 253.0/943.9, L8 search 101.3/310.0 (float 10.4)")),
    ModelEntry("tiny_dit", "dit", "DiTTransformer2DModel", "class",
               _sampler(1.25, "FID 15.0 at 1.25 (prompt accuracy 94.1 %) vs 39.0 at 1.0, 19.1 at 1.5, 264.8 at 3"),
               FID_REFERENCE, "DiT-like class-conditional transformer (4 blocks, d=128) on MNIST-16",
               loader=load_embedded, quantizer=MIN_MAX_UAQ,
               quantizer_basis=RANGE_RULE_BASIS.format(
                   "min-max 106.7/105.3, L4 search 104.8/68.1, the paper's search 193.3/127.4 (float 19.3): no rule "
                   "reaches the paper's regime, the output layers dominate; min-max inverts W3/W4 least")),
)


def measured_guidance(model_id: str) -> tuple[float, float] | None:
    """(FID-optimal guidance, its FID) in `model_id`'s guidance sweep beside its checkpoint, None if not swept."""
    path = checkpoint_dir(model_id) / GUIDANCE_TABLE
    rows = list(csv.DictReader(path.read_text().splitlines())) if path.is_file() else []
    rows = [(float(r["fid"]), float(r["guidance"])) for r in rows if r["model_id"] == model_id]
    return (min(rows)[1], min(rows)[0]) if rows else None


def candidate_entry(name: str) -> ModelEntry:
    """A candidate's entry: `tiny_pixart`'s protocol under the candidate's name, at the FID-optimal guidance of the
    candidate's own sweep (stage 00 writes it beside the checkpoint), `tiny_pixart`'s until it is swept."""
    if name not in CANDIDATE_SHAPES:
        raise ModelNotAvailableError(f"unknown candidate {name!r}; candidates: {', '.join(CANDIDATE_SHAPES)}")
    width, depth = CANDIDATE_SHAPES[name]
    tiny = ENTRIES[0]
    measured = measured_guidance(name)
    basis = (f"FID-optimal scale of stage 00's guidance sweep (build/candidates/{name}/{GUIDANCE_TABLE}): "
             f"FID {measured[1]:.1f} at {measured[0]:g}" if measured else
             f"not swept yet: tiny_pixart's ({tiny.sampler.guidance})")
    sampler = dataclasses.replace(tiny.sampler, guidance=measured[0] if measured else tiny.sampler.guidance,
                                  guidance_basis=basis)
    return dataclasses.replace(tiny, model_id=name, sampler=sampler, description=(
        f"issue 30 candidate: PixArt-α-like text-to-image transformer ({depth} blocks, d={width}) on MNIST-16, "
        "MiniLM captions; checkpoint in build/candidates/"))


CANDIDATE_ENTRIES = tuple(candidate_entry(name) for name in CANDIDATE_SHAPES)
