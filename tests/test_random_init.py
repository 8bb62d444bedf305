import pytest
import torch
from tiny_fixtures import forward

from qsd.errors import UnsupportedSpecError
from qsd.models.random_init import RANDOM_ARCHITECTURES, example_inputs, random_denoiser


@pytest.mark.parametrize("arch", RANDOM_ARCHITECTURES)
def test_random_denoisers_build_offline_and_run(arch, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = random_denoiser(arch)
    out = forward(model, arch)
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_random_denoisers_are_seeded():
    a, b = random_denoiser("dit", seed=3), random_denoiser("dit", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_expected_diffusers_classes():
    names = {arch: type(random_denoiser(arch)).__name__ for arch in RANDOM_ARCHITECTURES}
    assert names == {
        "pixart": "PixArtTransformer2DModel", "hunyuan_dit": "HunyuanDiT2DModel", "dit": "DiTTransformer2DModel",
        "sd15_unet": "UNet2DConditionModel", "sdxl_unet": "UNet2DConditionModel", "sd3": "SD3Transformer2DModel",
    }


def test_unknown_architecture_names_the_known_ones():
    for call in (random_denoiser, example_inputs):
        with pytest.raises(UnsupportedSpecError, match="available: pixart"):
            call("unet3d")
