"""The paper's six denoisers (Qua²SeDiMo, AAAI-25, Sec. 5), loaded from local diffusers directories.

| model id       | checkpoint (a local diffusers copy)      | res  | sampler                           | steps | CFG |
|----------------|------------------------------------------|------|-----------------------------------|-------|-----|
| `pixart_alpha` | PixArt-alpha/PixArt-XL-2-512x512         | 512  | shipped (DPM-Solver)              | 20    | 4.5 |
| `pixart_sigma` | PixArt-alpha/PixArt-Sigma-XL-2-1024-MS   | 1024 | shipped (DPM-Solver)              | 20    | 4.5 |
| `hunyuan_dit`  | Tencent-Hunyuan/HunyuanDiT-Diffusers     | 1024 | shipped (DDPM, v-prediction)      | 50    | 5.0 |
| `sdxl`         | stabilityai/stable-diffusion-xl-base-1.0 | 512  | shipped (Euler)                   | 40    | 5.0 |
| `sdv15`        | stable-diffusion-v1-5 (diffusers layout) | 512  | shipped (PNDM, i.e. PLMS)         | 50    | 7.5 |
| `dit_xl2`      | facebook/DiT-XL-2-512                    | 512  | DPM-Solver++ replaces the shipped | 250   | 4.0 |

(The protocol of the released evaluation scripts, research/code.md §3.) Text-to-image models caption image
i with COCO-2017-val caption i (`coco_captions`); DiT-XL/2 draws image i from ImageNet class i mod 1000.

Where weights come from (nothing is ever downloaded): the `root` argument of `load_paper`, else
`$QSD_MODEL_DIR_<MODEL_ID>` (e.g. `QSD_MODEL_DIR_PIXART_ALPHA`), else `$QSD_MODELS_DIR/<model_id>`. The
first of these that is set is the one used. The directory holds the denoiser (`transformer/` or
`unet/`), `vae/`, `scheduler/` and the text side (`text_encoder[_2]/`, `tokenizer[_2]/`), as a hub
snapshot or `DiffusionPipeline.save_pretrained` lays them out. The denoiser loads eagerly (it is what gets
quantized); text encoders and the VAE load on first use.

`predict_noise` always returns ε: learned-variance channels are dropped, and a v-prediction model
(HunyuanDiT) is converted with ε = √ᾱ_t·v + √(1-ᾱ_t)·x_t, so `make_scheduler` hands out its scheduler
with `prediction_type="epsilon"` (the same update, written in ε). The conversion is affine in v with the
same x_t for both halves of a guided batch, so classifier-free guidance on ε equals guidance on v.

Departures from the original runs (what a re-run here differs in):
  * SDXL: base model only. The paper ran the base to `denoising_end=0.8` and let the (unquantized)
    refiner finish the last 20 % of the 40 steps; here the base runs all 40 steps.
  * SDv1.5: the paper used the CompVis ldm code (`v1-5-pruned-emaonly.ckpt`) with its PLMS sampler;
    here it is the diffusers UNet with the shipped PNDM scheduler (`skip_prk_steps`, i.e. PLMS), whose
    warm-up step differs from ldm's. The paper also never re-seeded between configurations; the
    sampler here uses common random numbers for every model.
  * PixArt: captions are lower-cased and stripped, which is what diffusers does when its full caption
    cleaner (`bs4` + `ftfy`) is unavailable; the cleaner itself is not reproduced.
  * Only square images at the protocol resolution (no resolution binning is needed there).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qsd.errors import CorruptFileError, ModelNotAvailableError, UnsupportedSpecError
from qsd.models.base import Condition, DiffusionModel, ModelEntry, SamplerSettings

MODELS_DIR_ENV = "QSD_MODELS_DIR"
CAPTIONS_ENV = "QSD_COCO_CAPTIONS"
CAPTIONS_FILE = "coco_captions.txt"


def model_dir_env(model_id: str) -> str:
    """The per-model directory variable, e.g. `QSD_MODEL_DIR_PIXART_ALPHA`."""
    return f"QSD_MODEL_DIR_{model_id.upper()}"


@dataclass(frozen=True)
class Layout:
    """What a model's directory holds: the denoiser's subfolder and the `transformers` class of each text
    encoder (`text_encoder/`, `text_encoder_2/`, each with its `tokenizer[_2]/`)."""

    denoiser: str
    text_encoders: tuple[str, ...] = ()
    max_tokens: int | None = None
    """Caption length in tokens, where the pipeline fixes it (PixArt's T5); else from the tokenizer/config."""

    def subfolders(self) -> dict[str, str]:
        """Subfolder -> the config file it must contain."""
        folders = {self.denoiser: "config.json", "vae": "config.json", "scheduler": "scheduler_config.json"}
        for i in range(len(self.text_encoders)):
            suffix = f"_{i + 1}" if i else ""
            folders[f"text_encoder{suffix}"] = "config.json"
            folders[f"tokenizer{suffix}"] = "tokenizer_config.json"
        return folders


def model_dir(entry: ModelEntry, root: str | os.PathLike | None = None) -> Path:
    """The local diffusers directory of `entry`: `root`, else `$QSD_MODEL_DIR_<ID>`, else
    `$QSD_MODELS_DIR/<model_id>` (the first one set is used, with no fall-through), checked to hold every
    component of its layout. Raises ModelNotAvailableError naming each source, the paths and the layout."""
    env = model_dir_env(entry.model_id)
    parent = os.environ.get(MODELS_DIR_ENV)
    sources = {"root argument": root, f"${env}": os.environ.get(env),
               f"${MODELS_DIR_ENV}/{entry.model_id}": Path(parent) / entry.model_id if parent else None}
    looked = "; ".join(f"{name}: {value if value is not None else 'not set'}" for name, value in sources.items())
    folders = LAYOUTS[entry.model_id].subfolders()
    layout = ", ".join(f"{folder}/{config}" for folder, config in folders.items())
    advice = (f"Sources, in order: {looked}. Put a local diffusers copy of {entry.description} in a directory "
              f"(hub snapshot or DiffusionPipeline.save_pretrained layout: <dir>/{{{layout}}}) and pass "
              f"root=<dir>, or set {env}=<dir>, or set {MODELS_DIR_ENV}=<parent> with <parent>/{entry.model_id}. "
              "Nothing is downloaded.")
    name, value = next(((n, v) for n, v in sources.items() if v is not None), (None, None))
    if value is None:
        raise ModelNotAvailableError(f"no local weights configured for {entry.model_id!r}. {advice}")
    path = Path(value)
    if not path.is_dir():
        raise ModelNotAvailableError(f"{entry.model_id!r}: {path} (from {name}) is not a directory. {advice}")
    missing = [f"{folder}/{config}" for folder, config in folders.items() if not (path / folder / config).is_file()]
    if missing:
        raise ModelNotAvailableError(f"{entry.model_id!r}: {path} (from {name}) lacks {', '.join(missing)}. {advice}")
    return path


def coco_captions(n: int, path: str | os.PathLike | None = None, model_directory: Path | None = None) -> list[str]:
    """The first `n` COCO-2017-val captions (one per line; image i gets line i). Looked up at `path`,
    else `$QSD_COCO_CAPTIONS`, else `<model dir>/coco_captions.txt`, else `$QSD_MODELS_DIR/coco_captions.txt`."""
    explicit = path or os.environ.get(CAPTIONS_ENV)
    if explicit:
        candidates = [Path(explicit)]
    else:
        candidates = [Path(d) / CAPTIONS_FILE for d in (model_directory, os.environ.get(MODELS_DIR_ENV)) if d]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        looked = ", ".join(map(str, candidates)) or "nothing (no path given, no variable set)"
        raise ModelNotAvailableError(
            f"no COCO captions file; looked at {looked}. Write the first captions of the COCO-2017 val annotations "
            f"(captions_val2017.json, in annotation order) one per line to a file and pass captions=<file>, set "
            f"{CAPTIONS_ENV}=<file>, or save it as {CAPTIONS_FILE} in the model directory or in ${MODELS_DIR_ENV}."
        )
    lines = found.read_text(encoding="utf-8").splitlines()
    if len(lines) < n:
        raise CorruptFileError(f"{found} holds {len(lines)} captions but {n} were asked for; add more lines")
    blank = [i + 1 for i, line in enumerate(lines[:n]) if not line.strip()]
    if blank:
        raise CorruptFileError(f"{found} has blank captions on lines {blank[:5]}; one caption per line, no blanks")
    return [line.strip() for line in lines[:n]]


def epsilon_from_v(v: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """ε from a v-prediction (Salimans & Ho 2022): x_t = √ᾱ x₀ + √(1-ᾱ) ε and v = √ᾱ ε - √(1-ᾱ) x₀ give
    ε = √ᾱ v + √(1-ᾱ) x_t. `alpha_bar` is ᾱ_t per sample [B] (or a scalar)."""
    a = alpha_bar.to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
    return a.sqrt() * v + (1 - a).sqrt() * x_t


def _batched(timestep: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(timestep, device=device).reshape(-1).expand(batch)


class PaperModel(DiffusionModel):
    """What the six share: directory, latent geometry, scheduler, VAE decoding, ε output, COCO prompts."""

    def __init__(self, entry: ModelEntry, directory: Path, denoiser: nn.Module, captions: str | os.PathLike | None,
                 dtype: torch.dtype, device: torch.device) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler

        self.entry, self.directory, self.denoiser = entry, directory, denoiser
        self.layout = LAYOUTS[entry.model_id]
        self.dtype, self.device, self._captions = dtype, device, captions
        self.vae_config = AutoencoderKL.load_config(directory, subfolder="vae", local_files_only=True)
        self.scheduler_config = DDPMScheduler.load_config(directory, subfolder="scheduler", local_files_only=True)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise CorruptFileError(f"{directory}/scheduler: prediction_type {self.prediction_type!r} is not supported "
                                   "(epsilon or v_prediction)")
        self.vae_scale = 2 ** (len(self.vae_config["block_out_channels"]) - 1)
        resolution = entry.sampler.resolution
        step = self.vae_scale * (getattr(denoiser.config, "patch_size", None) or 1)
        if resolution % step:
            raise UnsupportedSpecError(f"{entry.model_id}: resolution {resolution} is not a multiple of {step} "
                                       "(VAE factor × patch size); pick a resolution divisible by it")
        side = resolution // self.vae_scale
        self.latent_shape = (denoiser.config.in_channels, side, side)
        self._alphas_cumprod = DDPMScheduler.from_config(self.scheduler_config).alphas_cumprod
        self._text: dict[int, tuple] = {}
        self._vae: nn.Module | None = None

    # -- prompts and text encoders ------------------------------------------------------------------
    def protocol_prompts(self, n: int) -> tuple[list, torch.Tensor | None]:
        """Caption i of COCO-2017 val for image i (no class targets)."""
        return coco_captions(n, self._captions, self.directory), None

    def text_encoder(self, index: int) -> tuple:
        """(tokenizer, encoder) number `index` (0: `text_encoder/`, 1: `text_encoder_2/`), loaded on first use."""
        if index not in self._text:
            import transformers

            suffix = f"_{index + 1}" if index else ""
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                self.directory, subfolder=f"tokenizer{suffix}", local_files_only=True)
            encoder = getattr(transformers, self.layout.text_encoders[index]).from_pretrained(
                self.directory, subfolder=f"text_encoder{suffix}", local_files_only=True, dtype=self.dtype)
            self._text[index] = (tokenizer, encoder.to(self.device).eval().requires_grad_(False))
        return self._text[index]

    @torch.no_grad()
    def encode(self, index: int, prompts: Sequence[str], max_length: int, masked: bool, **kwargs):
        """Tokenize `prompts` padded to `max_length` and run encoder `index`; returns (output, mask)."""
        tokenizer, encoder = self.text_encoder(index)
        tokens = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                           return_tensors="pt").to(self.device)
        mask = tokens["attention_mask"]
        out = encoder(tokens["input_ids"], attention_mask=mask if masked else None, **kwargs)
        return out, mask

    def null_condition(self, n: int) -> Condition:
        """The empty caption, as the pipelines' default negative prompt."""
        return self.condition([""] * n)

    # -- noise prediction ---------------------------------------------------------------------------
    def image_size(self, latents: torch.Tensor) -> tuple[int, int]:
        return latents.shape[-2] * self.vae_scale, latents.shape[-1] * self.vae_scale

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, condition: Condition) -> torch.Tensor:
        """The denoiser's raw output for latents/timesteps already in its dtype, timestep batched [B]."""
        raise NotImplementedError

    def predict_noise(self, latents: torch.Tensor, timestep: torch.Tensor, condition: Condition) -> torch.Tensor:
        t = _batched(timestep, latents.shape[0], latents.device)
        out = self.forward(latents.to(self.dtype), t, condition).to(latents.dtype)
        channels = latents.shape[1]
        if out.shape[1] == 2 * channels:  # learned variance Σ: ε is the first half
            out = out[:, :channels]
        if self.prediction_type == "v_prediction":
            alpha_bar = self._alphas_cumprod[t.round().long().cpu()].to(latents.device)
            out = epsilon_from_v(out, latents, alpha_bar)
        return out

    # -- scheduler and decoding ---------------------------------------------------------------------
    def make_scheduler(self, sampler: bool = True):
        """A fresh copy of the shipped scheduler (DiT: DPM-Solver++ built from it), set to ε-prediction; with
        `sampler=False`, the DDPM noising schedule of training."""
        import diffusers

        name = "DDPMScheduler" if not sampler else SAMPLER_OVERRIDES.get(
            self.entry.model_id, self.scheduler_config["_class_name"])
        return getattr(diffusers, name).from_config(self.scheduler_config, prediction_type="epsilon")

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self._vae is None:
            from diffusers import AutoencoderKL

            # an fp16 VAE that overflows (force_upcast) decodes in fp32, as the pipelines do
            dtype = torch.float32 if self.vae_config.get("force_upcast", False) else self.dtype
            self._vae = AutoencoderKL.from_pretrained(self.directory, subfolder="vae", local_files_only=True,
                                                      dtype=dtype).to(self.device).eval()
        z = latents.to(self._vae.dtype) / self.vae_config["scaling_factor"]
        if self.vae_config.get("shift_factor") is not None:
            z = z + self.vae_config["shift_factor"]
        images = self._vae.decode(z, return_dict=False)[0]
        return ((images.float() + 1) / 2).clamp(0, 1)


class PixArtModel(PaperModel):
    """PixArt-α / PixArt-Σ: T5 token states (fixed length) with their padding mask."""

    def condition(self, prompts: Sequence[str]) -> Condition:
        out, mask = self.encode(0, [p.lower().strip() for p in prompts], self.layout.max_tokens, masked=True)
        return {"encoder_hidden_states": out.last_hidden_state, "encoder_attention_mask": mask}

    def forward(self, latents, timestep, condition):
        added = {"resolution": None, "aspect_ratio": None}
        if self.denoiser.use_additional_conditions:  # the 1024-px α model's size/aspect micro-conditions
            h, w = self.image_size(latents)
            size = torch.tensor([[h, w]], dtype=self.dtype, device=latents.device).expand(latents.shape[0], 2)
            added = {"resolution": size, "aspect_ratio": (size[:, :1] / size[:, 1:])}
        return self.denoiser(latents, timestep=timestep, added_cond_kwargs=added, return_dict=False,
                             **condition)[0]


def _crop_region(grid: tuple[int, int], base: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """HunyuanDiT's RoPE grid: the token grid scaled to fit a `base`×`base` grid (longer side = base),
    centred; returns its (top, left) and (bottom, right) corners."""
    h, w = grid
    scale = base / max(h, w)
    rh, rw = round(h * scale), round(w * scale)
    top, left = round((base - rh) / 2), round((base - rw) / 2)
    return (top, left), (top + rh, left + rw)


class HunyuanDiTModel(PaperModel):
    """HunyuanDiT: bilingual CLIP (a BERT text tower, 77 tokens) + mT5 (256 tokens) states with masks; 2-D
    RoPE over the token grid; style 0 and image meta-size (1024, 1024, H, W, 0, 0) as the pipeline's defaults
    (used only by v1.0/1.1 checkpoints)."""

    def condition(self, prompts: Sequence[str]) -> Condition:
        cfg = self.denoiser.config
        clip, clip_mask = self.encode(0, prompts, cfg.text_len, masked=True)
        t5, t5_mask = self.encode(1, prompts, cfg.text_len_t5, masked=True)
        return {"encoder_hidden_states": clip.last_hidden_state, "text_embedding_mask": clip_mask,
                "encoder_hidden_states_t5": t5.last_hidden_state, "text_embedding_mask_t5": t5_mask}

    def forward(self, latents, timestep, condition):
        from diffusers.models.embeddings import get_2d_rotary_pos_embed

        patch, batch = self.denoiser.config.patch_size, latents.shape[0]
        grid = (latents.shape[-2] // patch, latents.shape[-1] // patch)
        rope = get_2d_rotary_pos_embed(self.denoiser.inner_dim // self.denoiser.num_heads,
                                       _crop_region(grid, 512 // self.vae_scale // patch), grid,
                                       device=latents.device)
        h, w = self.image_size(latents)
        meta = torch.tensor([[1024, 1024, h, w, 0, 0]], dtype=self.dtype, device=latents.device).expand(batch, 6)
        return self.denoiser(latents, timestep.to(self.dtype), image_rotary_emb=rope, image_meta_size=meta,
                             style=torch.zeros(batch, dtype=torch.long, device=latents.device), return_dict=False,
                             **condition)[0]


class StableDiffusionModel(PaperModel):
    """SDv1.5: CLIP-L last-layer states, 77 tokens, no attention mask."""

    def condition(self, prompts: Sequence[str]) -> Condition:
        tokenizer, _ = self.text_encoder(0)
        out, _ = self.encode(0, prompts, tokenizer.model_max_length, masked=False)
        return {"encoder_hidden_states": out.last_hidden_state}

    def forward(self, latents, timestep, condition):
        return self.denoiser(latents, timestep, return_dict=False, **condition)[0]


class StableDiffusionXLModel(PaperModel):
    """SDXL base: penultimate-layer states of CLIP-L and OpenCLIP-bigG concatenated, bigG's pooled projection,
    and the size/crop ids (H, W, 0, 0, H, W). The unconditional input is all zeros when the pipeline's
    `force_zeros_for_empty_prompt` is set (its default), as in diffusers."""

    def condition(self, prompts: Sequence[str]) -> Condition:
        states = []
        for index in range(2):
            tokenizer, _ = self.text_encoder(index)
            out, _ = self.encode(index, prompts, tokenizer.model_max_length, masked=False, output_hidden_states=True)
            states.append(out.hidden_states[-2])
        h, w = self.entry.sampler.resolution, self.entry.sampler.resolution
        ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=self.dtype, device=self.device).expand(len(prompts), 6)
        return {"encoder_hidden_states": torch.cat(states, dim=-1), "text_embeds": out.text_embeds, "time_ids": ids}

    def null_condition(self, n: int) -> Condition:
        cond = self.condition([""] * n)
        index = json.loads((self.directory / "model_index.json").read_text()) \
            if (self.directory / "model_index.json").is_file() else {}
        if not index.get("force_zeros_for_empty_prompt", True):
            return cond
        return {k: v if k == "time_ids" else torch.zeros_like(v) for k, v in cond.items()}

    def forward(self, latents, timestep, condition):
        added = {"text_embeds": condition["text_embeds"], "time_ids": condition["time_ids"]}
        return self.denoiser(latents, timestep, encoder_hidden_states=condition["encoder_hidden_states"],
                             added_cond_kwargs=added, return_dict=False)[0]


class DiTModel(PaperModel):
    """DiT-XL/2: class labels; image i asks for class i mod 1000; the null class is label 1000."""

    @property
    def num_classes(self) -> int:
        return self.denoiser.config.num_embeds_ada_norm

    def protocol_prompts(self, n: int) -> tuple[list, torch.Tensor]:
        targets = torch.arange(n) % self.num_classes
        return targets.tolist(), targets

    def condition(self, prompts: Sequence[int]) -> Condition:
        return {"class_labels": torch.as_tensor(list(prompts), dtype=torch.long, device=self.device)}

    def null_condition(self, n: int) -> Condition:
        return {"class_labels": torch.full((n,), self.num_classes, dtype=torch.long, device=self.device)}

    def forward(self, latents, timestep, condition):
        return self.denoiser(latents, timestep=timestep, return_dict=False, **condition)[0]


LAYOUTS = {
    "pixart_alpha": Layout("transformer", ("T5EncoderModel",), max_tokens=120),
    "pixart_sigma": Layout("transformer", ("T5EncoderModel",), max_tokens=300),
    "hunyuan_dit": Layout("transformer", ("BertModel", "T5EncoderModel")),
    "sdxl": Layout("unet", ("CLIPTextModel", "CLIPTextModelWithProjection")),
    "sdv15": Layout("unet", ("CLIPTextModel",)),
    "dit_xl2": Layout("transformer"),
}
CLASSES = {"pixart": PixArtModel, "hunyuan_dit": HunyuanDiTModel, "dit": DiTModel}
SAMPLER_OVERRIDES = {"dit_xl2": "DPMSolverMultistepScheduler"}
"""Models whose protocol replaced the shipped scheduler class (keeping its noise schedule)."""


def load_paper(entry: ModelEntry, root: str | os.PathLike | None = None, *, captions: str | os.PathLike | None = None,
               sampler: SamplerSettings | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> PaperModel:
    """Load paper model `entry` from its local diffusers directory (`model_dir`). `captions` is the COCO
    captions file (see `coco_captions`); `sampler` overrides the protocol's settings (e.g. a small
    resolution and few steps for tests); `dtype`/`device` apply to every component."""
    import diffusers

    directory = model_dir(entry, root)
    layout = LAYOUTS[entry.model_id]
    if sampler is not None:
        entry = dataclasses.replace(entry, sampler=sampler)
    device = torch.device(device)
    denoiser = getattr(diffusers, entry.denoiser_class).from_pretrained(
        directory, subfolder=layout.denoiser, local_files_only=True, dtype=dtype)
    denoiser = denoiser.to(device).eval().requires_grad_(False)
    if entry.family == "unet":
        cls = StableDiffusionXLModel if len(layout.text_encoders) == 2 else StableDiffusionModel
    else:
        cls = CLASSES[entry.family]
    return cls(entry, directory, denoiser, captions, dtype, device)


def _entry(model_id: str, family: str, denoiser_class: str, conditioning: str, sampler: SamplerSettings,
           description: str) -> ModelEntry:
    reference = "imagenet-val" if conditioning == "class" else "coco2017-val"
    return ModelEntry(model_id, family, denoiser_class, conditioning, sampler, reference, description,
                      loader=load_paper)


ENTRIES = (
    _entry("pixart_alpha", "pixart", "PixArtTransformer2DModel", "text",
           SamplerSettings("dpmsolver++", 20, 4.5, 512), "PixArt-α XL/2 512 (PixArt-alpha/PixArt-XL-2-512x512)"),
    _entry("pixart_sigma", "pixart", "PixArtTransformer2DModel", "text",
           SamplerSettings("dpmsolver++", 20, 4.5, 1024),
           "PixArt-Σ XL/2 1024 (PixArt-alpha/PixArt-Sigma-XL-2-1024-MS with its T5 and SDXL VAE)"),
    _entry("hunyuan_dit", "hunyuan_dit", "HunyuanDiT2DModel", "text",
           SamplerSettings("ddpm", 50, 5.0, 1024), "HunyuanDiT (Tencent-Hunyuan/HunyuanDiT-Diffusers)"),
    _entry("sdxl", "unet", "UNet2DConditionModel", "text",
           SamplerSettings("euler", 40, 5.0, 512), "SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0)"),
    _entry("sdv15", "unet", "UNet2DConditionModel", "text",
           SamplerSettings("plms", 50, 7.5, 512), "Stable Diffusion v1.5 (diffusers layout of v1-5-pruned-emaonly)"),
    _entry("dit_xl2", "dit", "DiTTransformer2DModel", "class",
           SamplerSettings("dpmsolver++", 250, 4.0, 512), "DiT-XL/2 512 (facebook/DiT-XL-2-512)"),
)
