import copy

import numpy as np
import pytest
import torch
from tiny_fixtures import forward

from qsd import (
    AlreadyQuantizedError,
    CorruptFileError,
    ModelMismatchError,
    MultiQuantizer,
    QsdError,
    QuantConfig,
    QuantSpec,
    UnknownLayerError,
    UnsupportedSpecError,
    quantize_,
)
from qsd.models.random_init import random_denoiser
from qsd.quantizers import QuantizerSettings, relative_error


@pytest.fixture(scope="module", params=["pixart", "sd15_unet"])
def built(request):
    model = random_denoiser(request.param)
    return request.param, model, MultiQuantizer.build(model, progress=False)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_apply_equals_direct_quantization_of_a_fresh_copy(built):
    arch, model, mq = built
    config = mq.sample(np.random.default_rng(7))
    fresh = random_denoiser(arch)
    quantize_(fresh, config)
    mq.apply(config)
    try:
        for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
        assert QuantConfig.from_model(model) == config == QuantConfig.from_model(fresh)
        assert torch.equal(forward(model, arch), forward(fresh, arch))
    finally:
        mq.restore()


def test_apply_then_restore_is_bitwise_identity(built):
    arch, model, mq = built
    before, out_before = weights(model), forward(model, arch)
    for seed in range(3):
        mq.apply(mq.sample(seed))
    assert not torch.equal(forward(model, arch), out_before)
    mq.restore()
    after = weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(forward(model, arch), out_before)
    assert all(spec is None for spec in QuantConfig.from_model(model).values())


def test_float_units_keep_their_weights(built):
    arch, model, mq = built
    name = mq.unit_names[1]
    config = mq.uniform(QuantSpec("uaq", 3)).with_layers({name: None})
    module = dict(model.named_modules())[mq.units[1].module]
    original = module.weight.detach().clone()
    mq.apply(config)
    unit = mq.units[1]
    assert torch.equal(unit.weight_slice(module.weight.detach()), unit.weight_slice(original))
    mq.restore()


def test_search_space_and_costs(built):
    _, _, mq = built
    space = mq.search_space()
    assert len(space) == len(mq.unit_names) * 6
    assert set(space["option"]) == {s.key for s in mq.options}
    assert (space["error"] >= 0).all() and space["error"].dtype == np.float64
    for spec in mq.options:
        cost = mq.cost(mq.uniform(spec))
        rows = space[space.option == spec.key]
        assert cost["avg_bits"] == pytest.approx(rows.size_bits.sum() / rows.n_weights.sum())
        assert cost["avg_bits"] > spec.w_bits
    assert mq.cost(mq.uniform(None))["avg_bits"] == 16  # float layers count at the parameter precision, FP16
    assert mq.summed_error(mq.uniform(None)) == 0
    assert mq.summed_error(mq.uniform(QuantSpec("uaq", 3))) > mq.summed_error(mq.uniform(QuantSpec("uaq", 4)))


def test_errors_are_the_relative_errors_of_the_stored_options(built):
    """build records the quantizers' own errors instead of dequantizing; they must agree."""
    _, model, mq = built
    modules = dict(model.named_modules())
    for unit in mq.units:
        weight = unit.weight_slice(modules[unit.module].weight.detach()).float()
        for spec, qw in mq.quantized[unit.name].items():
            expected = relative_error(weight, qw.dequantize())
            assert mq.errors[unit.name][spec] == pytest.approx(expected, rel=1e-5, abs=1e-12), (unit.name, spec)


def test_sample_follows_the_paper_scheme(built):
    _, _, mq = built
    rng = np.random.default_rng(0)
    configs = [mq.sample(rng) for _ in range(200)]
    shares = np.array([np.mean([s.w_bits == 3 for s in c.values()]) for c in configs])
    assert shares.min() < 0.15 and shares.max() > 0.85  # p ~ U(0,1) spreads the bit mix
    assert abs(np.mean(shares) - 0.5) < 0.08
    methods = [s.method for c in configs for s in c.values()]
    for m in ("uaq", "kmeans_c", "kmeans_a"):
        assert abs(methods.count(m) / len(methods) - 1 / 3) < 0.03
    assert mq.sample(5) == mq.sample(5) and mq.sample(5) != mq.sample(6)


def test_save_load_roundtrip(built, tmp_path):
    arch, model, mq = built
    path = mq.save(tmp_path / "mq.safetensors")
    loaded = MultiQuantizer.load(path, random_denoiser(arch))
    assert loaded.unit_names == mq.unit_names and loaded.options == mq.options
    assert loaded.errors == mq.errors
    config = mq.sample(3)
    loaded.apply(config)
    mq.apply(config)
    assert torch.equal(forward(loaded.model, arch), forward(model, arch))
    mq.restore()


def test_load_refuses_other_weights_and_other_models(built, tmp_path):
    arch, _, mq = built
    path = mq.save(tmp_path / "mq.safetensors")
    with pytest.raises(ModelMismatchError, match="different float weights"):
        MultiQuantizer.load(path, random_denoiser(arch, seed=1))
    with pytest.raises(ModelMismatchError, match="built for another model"):
        MultiQuantizer.load(path, random_denoiser("dit"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFileError):
        MultiQuantizer.load(tmp_path / "junk.safetensors", random_denoiser(arch))
    with pytest.raises(QsdError, match="no multiquantizer file"):
        MultiQuantizer.load(tmp_path / "missing.safetensors", random_denoiser(arch))


def test_bad_configs_are_refused_and_change_nothing(built):
    arch, model, mq = built
    before = weights(model)
    with pytest.raises(UnknownLayerError, match="closest"):
        mq.apply(QuantConfig({**mq.uniform(None), mq.unit_names[-1] + "x": None}))
    with pytest.raises(UnsupportedSpecError, match="did not precompute"):
        mq.apply(mq.uniform(QuantSpec("uaq", 2)))
    with pytest.raises(ModelMismatchError):
        mq.apply(MultiQuantizer.build(random_denoiser("dit"), progress=False).uniform(None))
    after = weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_quantize_twice_is_refused():
    model = random_denoiser("dit")
    mq_units = MultiQuantizer.build(copy.deepcopy(model), [QuantSpec("uaq", 4)], progress=False).unit_names
    config = QuantConfig.uniform(mq_units, QuantSpec("uaq", 4))
    quantize_(model, config)
    with pytest.raises(AlreadyQuantizedError, match="fresh copy"):
        quantize_(model, config)


def test_half_precision_model_accounting():
    model = random_denoiser("pixart").half()
    mq = MultiQuantizer.build(model, [QuantSpec("kmeans_a", 4)], progress=False)
    assert mq.cost(mq.uniform(None))["avg_bits"] == 16
    mq.apply(mq.uniform(QuantSpec("kmeans_a", 4)))
    assert all(p.dtype == torch.float16 for p in model.parameters())


@pytest.mark.parametrize("param_dtype, p", [("float16", 16), ("bfloat16", 16), ("float32", 32)])
def test_avg_bits_count_overhead_at_the_parameter_precision(param_dtype, p):
    """Paper §3: scales, zero points and codebooks (and float layers) count at the model's FP16 by default."""
    model = random_denoiser("pixart")
    options = [QuantSpec("uaq", 4), QuantSpec("kmeans_c", 4), QuantSpec("kmeans_a", 3)]
    mq = MultiQuantizer.build(model, options, QuantizerSettings(param_dtype=param_dtype), progress=False)
    modules = dict(model.named_modules())
    slices = [u.weight_slice(modules[u.module].weight) for u in mq.units]
    n = sum(w.numel() for w in slices)
    rows = sum(w.shape[0] for w in slices)
    by_hand = {"uaq-4": (4 * n + 2 * p * rows) / n, "kmeans_c-4": (4 * n + 16 * p * rows) / n,
               "kmeans_a-3": (3 * n + 8 * p * len(slices)) / n}
    for spec in options:
        assert mq.cost(mq.uniform(spec))["avg_bits"] == pytest.approx(by_hand[spec.key], rel=1e-12)
    assert mq.cost(mq.uniform(None))["avg_bits"] == p
