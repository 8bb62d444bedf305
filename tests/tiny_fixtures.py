"""Test-only fixtures: tiny random-init diffusers pipeline directories for the paper's models and a tiny CLIP,
built offline, plus one forward pass of a random-init denoiser."""

from __future__ import annotations

import torch
from torch import nn

from qsd.models.random_init import example_inputs, random_denoiser


def forward(model: nn.Module, arch: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """One forward pass on `example_inputs`; returns the output tensor."""
    with torch.no_grad():
        out = model(**example_inputs(arch, batch, seed), return_dict=False)
    return out[0]


# Tiny diffusers pipeline directories for the paper's models (`qsd.models.paper`): the same layout as a
# local copy of the real checkpoint, every component random-init and tiny, text side built offline.

PAPER_ARCHITECTURES = {
    "pixart_alpha": "pixart", "pixart_sigma": "pixart", "hunyuan_dit": "hunyuan_dit",
    "sdxl": "sdxl_unet", "sdv15": "sd15_unet", "dit_xl2": "dit",
}
"""Paper model id -> the `RANDOM_ARCHITECTURES` entry its tiny denoiser uses."""

WORDS = ("a", "an", "the", "of", "on", "in", "with", "and", "man", "woman", "cat", "dog", "table", "street",
         "red", "two", "sitting", "standing", "next", "to", "bus", "plate", "food", "kitchen", "photo")
"""Vocabulary of the tiny word-level tokenizers (anything else maps to the unknown token)."""

_SCHEDULERS = {  # scheduler class + β schedule like each real checkpoint's (hub configs, not verifiable offline)
    "pixart": ("DPMSolverMultistepScheduler", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}),
    "hunyuan_dit": ("DDPMScheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.03,
                                      "prediction_type": "v_prediction", "steps_offset": 1}),
    "sdxl_unet": ("EulerDiscreteScheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                             "beta_end": 0.012, "steps_offset": 1, "timestep_spacing": "leading"}),
    "sd15_unet": ("PNDMScheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                                    "skip_prk_steps": True, "steps_offset": 1}),
    "dit": ("DDIMScheduler", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}),
}


def word_tokenizer(kind: str, max_length: int = 77):
    """A word-level `transformers` fast tokenizer over `WORDS`, built without downloads. `kind` sets the
    special tokens and template: `clip` (<|startoftext|> … <|endoftext|>, padded with the end token),
    `t5` (… </s>, padded with <pad>) or `bert` ([CLS] … [SEP], padded with [PAD])."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = {"clip": ("<|startoftext|>", "<|endoftext|>", "<|endoftext|>", "<|unk|>"),
                "t5": (None, "</s>", "<pad>", "<unk>"),
                "bert": ("[CLS]", "[SEP]", "[PAD]", "[UNK]")}[kind]
    bos, eos, pad, unk = specials
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(t for t in (pad, eos, unk, bos, *WORDS) if t))}
    tok = Tokenizer(WordLevel(vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    template = f"{bos} $A {eos}" if bos else f"$A {eos}"
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in (bos, eos) if t])
    names = {"clip": ("bos_token", "eos_token", "pad_token", "unk_token"),
             "t5": (None, "eos_token", "pad_token", "unk_token"),
             "bert": ("cls_token", "sep_token", "pad_token", "unk_token")}[kind]
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length,
                                   **{name: t for name, t in zip(names, specials, strict=True) if name})


def _token_ids(tokenizer) -> dict:
    return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id}


def _t5(tokenizer, d_model: int) -> nn.Module:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0, **_token_ids(tokenizer)))


def _clip_text(tokenizer, hidden: int, projection_dim: int | None = None) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                            projection_dim=projection_dim or hidden, **_token_ids(tokenizer))
    return CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)


def _bert(tokenizer, hidden: int) -> nn.Module:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=2 * hidden, max_position_embeddings=80, **_token_ids(tokenizer)))


def _text_side(arch: str, denoiser: nn.Module) -> dict[str, tuple]:
    """Subfolder -> (tokenizer, encoder) pairs matching the tiny denoiser's conditioning widths."""
    if arch == "pixart":
        tok = word_tokenizer("t5", 512)
        return {"": (tok, _t5(tok, denoiser.config.caption_channels))}
    if arch == "hunyuan_dit":
        tok, tok_2 = word_tokenizer("bert", 77), word_tokenizer("t5", 256)
        return {"": (tok, _bert(tok, denoiser.config.cross_attention_dim)),
                "_2": (tok_2, _t5(tok_2, denoiser.config.cross_attention_dim_t5))}
    if arch == "sd15_unet":
        tok = word_tokenizer("clip")
        return {"": (tok, _clip_text(tok, denoiser.config.cross_attention_dim))}
    if arch == "sdxl_unet":
        tok, tok_2 = word_tokenizer("clip"), word_tokenizer("clip")
        width = denoiser.config.cross_attention_dim // 2
        pooled = denoiser.config.projection_class_embeddings_input_dim - 6 * denoiser.config.addition_time_embed_dim
        return {"": (tok, _clip_text(tok, width)), "_2": (tok_2, _clip_text(tok_2, width, projection_dim=pooled))}
    return {}


def tiny_vae(seed: int = 0) -> nn.Module:
    """A random-init AutoencoderKL with 4 latent channels and a 2× spatial factor."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4, sample_size=16).eval()


def tiny_paper_dir(model_id: str, directory, seed: int = 0):
    """Write a tiny random-init diffusers directory for paper model `model_id` (one of
    `PAPER_ARCHITECTURES`) into `directory`: denoiser (`transformer/` or `unet/`), `vae/`, `scheduler/`
    (the real checkpoint's scheduler class and β schedule), `text_encoder[_2]/` + `tokenizer[_2]/` and
    `model_index.json`. Returns the directory as a Path. Latents are 4×8×8 for 16×16 images."""
    import json
    from pathlib import Path

    import diffusers

    directory = Path(directory)
    arch = PAPER_ARCHITECTURES[model_id]
    denoiser = random_denoiser(arch, seed)
    denoiser_folder = "unet" if arch.endswith("unet") else "transformer"
    denoiser.save_pretrained(directory / denoiser_folder)
    tiny_vae(seed).save_pretrained(directory / "vae")
    scheduler_class, schedule = _SCHEDULERS[arch]
    getattr(diffusers, scheduler_class)(num_train_timesteps=1000, **schedule).save_pretrained(directory / "scheduler")
    index = {"_class_name": "Pipeline", denoiser_folder: ["diffusers", type(denoiser).__name__],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", scheduler_class]}
    torch.manual_seed(seed)
    for suffix, (tokenizer, encoder) in _text_side(arch, denoiser).items():
        tokenizer.save_pretrained(directory / f"tokenizer{suffix}")
        encoder.save_pretrained(directory / f"text_encoder{suffix}")
        index[f"text_encoder{suffix}"] = ["transformers", type(encoder).__name__]
    if arch == "sdxl_unet":
        index["force_zeros_for_empty_prompt"] = True
    (directory / "model_index.json").write_text(json.dumps(index, indent=2))
    return directory


CAPTIONS = ["A cat sitting on the table", "Two dogs in the street", "a red bus"]


def load_tiny_paper(model_id: str, tmp_path, **kwargs):
    """The tiny copy of paper model `model_id` loaded through its registry entry (written under `tmp_path`, with a
    three-line captions file): 16×16 images (4×8×8 latents), 2 solver steps."""
    from qsd.models import paper
    from qsd.models.base import SamplerSettings

    root = tiny_paper_dir(model_id, tmp_path / model_id)
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS) + "\n")
    entry = {e.model_id: e for e in paper.ENTRIES}[model_id]
    tiny = SamplerSettings(entry.sampler.scheduler, 2, entry.sampler.guidance, 16)
    return entry.loader(entry, root, captions=captions, sampler=tiny, **kwargs)


def tiny_clip_dir(directory, seed: int = 0):
    """Write a tiny random-init `transformers` CLIPModel + CLIPProcessor (32×32 images, word-level
    tokenizer, PIL image processor: no torchvision) into `directory`; returns it as a Path."""
    from pathlib import Path

    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    directory = Path(directory)
    tokenizer = word_tokenizer("clip")
    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id, **_token_ids(tokenizer)}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(directory)
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(directory)
    return directory
