import json
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from qsd import AlreadyQuantizedError, CorruptFileError, ModelMismatchError, QuantConfig, QuantSpec, quantize_
from qsd.layers import quantizable_units
from qsd.models.random_init import example_inputs, random_denoiser
from qsd.multiquant import MultiQuantizer
from qsd.packed import packed_row_bytes
from qsd.packed.export import export, load_quantized, memory_report, read_export
from qsd.packed.modules import FUSED_MAX_ROWS, QConv, QLinear, affine_from_table, affine_table
from qsd.quantizers import QuantizerSettings


@pytest.fixture(scope="module")
def unet():
    return random_denoiser("sd15_unet", seed=0).eval()


def mixed_config(units, seed=0):
    gen = torch.Generator().manual_seed(seed)
    options = [None, QuantSpec("uaq", 3), QuantSpec("uaq", 4), QuantSpec("kmeans_c", 3), QuantSpec("kmeans_a", 4)]
    return QuantConfig({u: options[int(torch.randint(len(options), (1,), generator=gen))] for u in units})


def test_exported_unet_reproduces_fake_quantization(unet, tmp_path):
    units = [u.name for u in quantizable_units(unet)]
    assert any(u.endswith(":skip") for u in units), "the test model must have concat-split layers"
    config = mixed_config(units)
    path = export(unet, config, tmp_path / "unet.safetensors", model_id="tiny_unet")
    packed = load_quantized(path, "tiny_unet")
    kinds = {type(m) for m in packed.modules()}
    assert QLinear in kinds and QConv in kinds
    assert not any(isinstance(m, nn.Linear | nn.Conv2d) and any(s is not None for s in
                   [config[u.name] for u in quantizable_units(unet) if u.module == name])
                   for name, m in packed.named_modules())
    fake = quantize_(random_denoiser("sd15_unet", seed=0).eval(), config)
    with torch.no_grad():
        # a batch above FUSED_MAX_ROWS: every layer decodes its weight and runs the dense op, bit for bit
        inputs = example_inputs("sd15_unet", batch=FUSED_MAX_ROWS + 1)
        assert torch.equal(packed(**inputs)[0], fake(**inputs)[0])
        # a small batch: the time-embedding linears run the fused LUT kernel (other summation order)
        inputs = example_inputs("sd15_unet", batch=2)
        torch.testing.assert_close(packed(**inputs)[0], fake(**inputs)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("split", [True, False])
def test_readback_is_the_exported_config(unet, tmp_path, split):
    units = [u.name for u in quantizable_units(unet, split)]
    assert any(u.endswith(":skip") for u in units) == split
    config = mixed_config(units, seed=2)
    path = export(unet, config, tmp_path / "u.safetensors", settings=QuantizerSettings(split_concat_inputs=split))
    packed = load_quantized(path)
    assert QuantConfig.from_model(packed) == config
    float_layers = [m for m in packed.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert float_layers and all(s is None for m in float_layers for s in m.qsd_specs.values())
    assert any(s is not None for s in config.values())


def test_multiquantizer_export_and_fused_gemv_path(tmp_path):
    model = random_denoiser("pixart", seed=1).eval()
    mq = MultiQuantizer.build(model, progress=False)
    config = mq.sample(0)
    mq.apply(config)  # export must use the float weights even while a configuration is applied
    path = export(model, config, tmp_path / "p.safetensors", multiquantizer=mq)
    packed = load_quantized(path)
    for name, module in packed.named_modules():
        if isinstance(module, QLinear):
            reference = dict(model.named_modules())[name]
            x = torch.randn(FUSED_MAX_ROWS, module.in_features)  # few rows: the fused LUT op
            torch.testing.assert_close(module(x), reference(x), rtol=1e-5, atol=1e-5)
            x = torch.randn(FUSED_MAX_ROWS + 5, module.in_features)  # many rows: decode + dense GEMM, exact
            assert torch.equal(module(x), reference(x))
    tables = [b for name, b in packed.named_buffers() if name.split(".")[-1].startswith(("table_", "affine_"))]
    assert tables and all(t.dtype == torch.float16 for t in tables), "tables at FP16, what avg_bits counts"


def test_packed_memory_is_below_fp16(unet, tmp_path):
    units = [u.name for u in quantizable_units(unet)]
    config = QuantConfig.uniform(units, QuantSpec("uaq", 3))
    packed = load_quantized(export(unet, config, tmp_path / "u.safetensors"))
    report = memory_report(packed)
    layers = [m for m in packed.modules() if isinstance(m, QLinear | QConv)]
    # 3 bits per weight of rows padded to whole 64-code blocks, plus (Δ, z) in float16 per row for UAQ
    expected = sum(m.out_channels * (packed_row_bytes(s.k, 3) + 4) for m in layers for s in m.segments)
    assert report["packed_layers_bytes"] == expected
    assert report["packed_layers_ratio_vs_fp16"] < 0.5
    assert report["denoiser_bytes"] < report["denoiser_fp16_bytes"]
    assert not any(isinstance(m, nn.Linear | nn.Conv2d) for m in packed.modules())


def test_affine_tables_round_trip_exactly():
    gen = torch.Generator().manual_seed(0)
    delta = torch.rand(6, generator=gen) * 0.01 + 1e-4
    zero = torch.tensor([0.0, 3.0, 7.0, 15.0, -1.0, 16.0])  # incl. zero points outside the grid
    table = affine_table(torch.stack([delta, zero], 1), 4)
    assert torch.equal(affine_table(affine_from_table(table, 4), 4), table)
    assert affine_from_table(torch.randn(3, 16, generator=gen), 4) is None


def test_corrupted_and_mismatched_files_are_refused(unet, tmp_path):
    config = mixed_config([u.name for u in quantizable_units(unet)], seed=1)
    path = export(unet, config, tmp_path / "u.safetensors", model_id="tiny_unet")
    with pytest.raises(ModelMismatchError, match="not 'tiny_pixart'"):
        load_quantized(path, "tiny_pixart")
    meta, tensors = read_export(path)
    unit = next(name for name, spec in config.items() if spec is not None)
    meta["quant_config"]["layers"][unit] = None  # metadata (not checksummed) that no longer describes the layers
    tampered = tmp_path / "tampered.safetensors"
    save_file(tensors, str(tampered), metadata={"qsd": json.dumps(meta)})
    with pytest.raises(CorruptFileError, match=rf"disagree with its recorded QuantConfig on 1 units.*\['{unit}'\]"):
        load_quantized(tampered)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x40  # flip one bit inside the tensor data
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="checksum"):
        load_quantized(broken)
    broken.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CorruptFileError, match="not a readable"):
        load_quantized(broken)


def test_fake_quantized_denoiser_is_not_exported(tmp_path):
    model = random_denoiser("dit", seed=0).eval()
    config = QuantConfig.uniform([u.name for u in quantizable_units(model)], QuantSpec("uaq", 4))
    quantize_(model, config)
    with pytest.raises(AlreadyQuantizedError):
        export(model, config, tmp_path / "x.safetensors")


def test_denoiser_loaded_from_a_local_directory_exports(tmp_path):
    # diffusers records the directory a model was loaded from as a Path in its config (`_name_or_path`)
    from diffusers import PixArtTransformer2DModel

    random_denoiser("pixart", seed=0).save_pretrained(tmp_path / "transformer")
    loaded = PixArtTransformer2DModel.from_pretrained(tmp_path / "transformer").eval()
    assert any(isinstance(v, os.PathLike) for v in loaded.config.values())
    config = mixed_config([u.name for u in quantizable_units(loaded)], seed=1)
    packed = load_quantized(export(loaded, config, tmp_path / "p.safetensors", model_id="pixart_alpha"))
    meta, _ = read_export(tmp_path / "p.safetensors")
    assert meta["denoiser_config"]["_name_or_path"] == str(tmp_path / "transformer")
    assert QuantConfig.from_model(packed) == config
