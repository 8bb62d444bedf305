import pytest
import torch

from qsd.testing import ARCHITECTURES, forward, tiny_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_models_build_offline_and_run(arch, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_model(arch)
    out = forward(model, arch)
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_tiny_models_are_seeded():
    a, b = tiny_model("dit", seed=3), tiny_model("dit", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_expected_diffusers_classes():
    names = {arch: type(tiny_model(arch)).__name__ for arch in ARCHITECTURES}
    assert names == {
        "pixart": "PixArtTransformer2DModel", "hunyuan_dit": "HunyuanDiT2DModel", "dit": "DiTTransformer2DModel",
        "sd15_unet": "UNet2DConditionModel", "sdxl_unet": "UNet2DConditionModel", "sd3": "SD3Transformer2DModel",
    }
