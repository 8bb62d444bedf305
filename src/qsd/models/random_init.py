"""Tiny random-init instances of every supported diffusers denoiser class, built offline: the registry's
`random_<arch>` models (denoiser only).

Each builder returns a real diffusers model (same classes, same module names as the paper's models,
just small), and `example_inputs` gives keyword arguments for one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qsd.errors import UnsupportedSpecError

RANDOM_ARCHITECTURES = ("pixart", "hunyuan_dit", "dit", "sd15_unet", "sdxl_unet", "sd3")


def _pixart() -> nn.Module:
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=64, caption_channels=32, sample_size=8, patch_size=2,
        use_additional_conditions=False, norm_num_groups=4,
    )


def _hunyuan_dit() -> nn.Module:
    from diffusers import HunyuanDiT2DModel

    return HunyuanDiT2DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, patch_size=2, learn_sigma=False,
        sample_size=8, hidden_size=64, num_layers=4, cross_attention_dim=32, cross_attention_dim_t5=48,
        pooled_projection_dim=24, text_len=6, text_len_t5=8, use_style_cond_and_image_meta_size=False,
    )


def _dit() -> nn.Module:
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=4,
    )


def _sd15_unet() -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )


def _sdxl_unet() -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(4, 8), norm_num_groups=8, use_linear_projection=True,
        transformer_layers_per_block=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 24,
    )


def _sd3() -> nn.Module:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=64, pooled_projection_dim=24,
        pos_embed_max_size=8,
    )


_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "pixart": _pixart, "hunyuan_dit": _hunyuan_dit, "dit": _dit,
    "sd15_unet": _sd15_unet, "sdxl_unet": _sdxl_unet, "sd3": _sd3,
}


def _check(arch: str) -> None:
    if arch not in _BUILDERS:
        raise UnsupportedSpecError(f"unknown architecture {arch!r}; available: {', '.join(RANDOM_ARCHITECTURES)}")


def random_denoiser(arch: str, seed: int = 0) -> nn.Module:
    """A small random-init denoiser of architecture `arch` (one of `RANDOM_ARCHITECTURES`), in eval mode."""
    _check(arch)
    torch.manual_seed(seed)
    return _BUILDERS[arch]().eval()


def example_inputs(arch: str, batch: int = 2, seed: int = 0) -> dict:
    """Forward-pass keyword arguments for `random_denoiser(arch)` (latents 4×8×8)."""
    _check(arch)
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, 8, 8, generator=g)
    timestep = torch.full((batch,), 500.0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    if arch == "pixart":
        return {"hidden_states": sample, "encoder_hidden_states": rand(batch, 6, 32), "timestep": timestep,
                "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    if arch == "hunyuan_dit":
        from diffusers.models.embeddings import get_2d_rotary_pos_embed

        return {"hidden_states": sample, "timestep": timestep, "encoder_hidden_states": rand(batch, 6, 32),
                "text_embedding_mask": torch.ones(batch, 6), "encoder_hidden_states_t5": rand(batch, 8, 48),
                "text_embedding_mask_t5": torch.ones(batch, 8),
                "image_rotary_emb": get_2d_rotary_pos_embed(16, ((0, 0), (4, 4)), (4, 4))}
    if arch == "dit":
        return {"hidden_states": sample, "timestep": timestep.long(), "class_labels": torch.arange(batch) % 10}
    if arch == "sd15_unet":
        return {"sample": sample, "timestep": timestep, "encoder_hidden_states": rand(batch, 6, 32)}
    if arch == "sdxl_unet":
        return {"sample": sample, "timestep": timestep, "encoder_hidden_states": rand(batch, 6, 32),
                "added_cond_kwargs": {"text_embeds": rand(batch, 24), "time_ids": rand(batch, 6)}}
    return {"hidden_states": sample, "timestep": timestep, "encoder_hidden_states": rand(batch, 6, 32),
            "pooled_projections": rand(batch, 24)}  # sd3


def example_steps(arch: str, batch: int = 8, timesteps: tuple[float, ...] = (900, 500, 100), seed: int = 0
                  ) -> list[dict]:
    """`example_inputs` for a few solver steps (step k seeded `seed` + k, its rows at `timesteps[k]`): the inputs of a
    small calibration set (`CalibrationSet.from_inputs`)."""
    steps = []
    for k, t in enumerate(timesteps):
        inputs = example_inputs(arch, batch, seed + k)
        inputs["timestep"] = torch.full_like(torch.as_tensor(inputs["timestep"]), t)
        steps.append(inputs)
    return steps
