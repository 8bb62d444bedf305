"""Activation quantization (`qsd.actquant`): the token-wise rule against a hand computation, constant rows, split
inputs, quantized attention, the static quantizer, and `QuantSpec.a_bits` applied and read back everywhere."""

import copy

import pytest
import torch
from tiny_fixtures import forward

from qsd import MultiQuantizer, QuantConfig, QuantSpec, quantize_
from qsd.actquant import (
    QuantAttnProcessor,
    SplitInputQuantizer,
    StaticQuantizer,
    StepClock,
    TokenwiseQuantizer,
    fake_quantize_tokens,
    input_quantizer,
)
from qsd.errors import QsdError, UnsupportedSpecError
from qsd.layers import quantizable_units
from qsd.models.random_init import example_inputs, random_denoiser
from qsd.packed import export, load_quantized
from qsd.packed.modules import FUSED_MAX_ROWS


def test_tokenwise_matches_a_hand_computation():
    x = torch.tensor([[[-1.0, 0.0, 0.5, 2.0], [0.1, 0.2, 0.3, 0.4]]])
    # row 0 at 2 bits: Δ = 3/3 = 1, z = round(1/1) = 1 -> codes round(x)+1 = 0, 1, 2 (0.5 rounds to even 0 -> 1), 3
    assert torch.equal(fake_quantize_tokens(x, 2)[0, 0], torch.tensor([-1.0, 0.0, 0.0, 2.0]))
    # row 1: Δ = 0.1, z = round(-1) = -1; every value is on the grid
    assert torch.allclose(fake_quantize_tokens(x, 2)[0, 1], x[0, 1], atol=1e-6)
    # unsigned (softmax rows): min fixed at 0, Δ = max/(2^b - 1)
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0]])
    assert torch.allclose(fake_quantize_tokens(probs, 2, unsigned=True), torch.tensor([[0.7, 0.2333, 0.0, 0.0]]),
                          atol=1e-4)


def test_rows_are_tokens_or_spatial_positions():
    x = torch.randn(2, 5, 7)
    out = fake_quantize_tokens(x, 4)
    for b in range(2):
        for n in range(5):  # each token quantized alone
            assert torch.equal(out[b, n], fake_quantize_tokens(x[b, n][None], 4)[0])
    conv = torch.randn(2, 3, 4, 4)
    out = fake_quantize_tokens(conv, 4)
    assert torch.equal(out[1, :, 2, 3], fake_quantize_tokens(conv[1, :, 2, 3][None], 4)[0]), "a position, all channels"
    # By hand, 2 bits. Position (0, 0) holds channels (-1, 0.5, 2): Δ = (2 + 1)/3 = 1, zero point 1, codes
    # (0, round-half-even(0.5) + 1 = 1, 3), so x̂ = (-1, 0, 2). Position (0, 1) holds (0, 1, 3): Δ = 1, exact.
    # Per (sample, channel) rows would have kept all six values exact (each channel's two values are its range).
    small = torch.zeros(1, 3, 1, 2)
    small[0, :, 0, 0] = torch.tensor([-1.0, 0.5, 2.0])
    small[0, :, 0, 1] = torch.tensor([0.0, 1.0, 3.0])
    out = fake_quantize_tokens(small, 2)
    assert torch.equal(out[0, :, 0, 0], torch.tensor([-1.0, 0.0, 2.0]))
    assert torch.equal(out[0, :, 0, 1], small[0, :, 0, 1])


def test_constant_rows_survive_and_gradients_pass_straight_through():
    x = torch.tensor([[3.0, 3.0, 3.0], [0.0, 0.0, 0.0], [1.0, 2.0, 4.0]], requires_grad=True)
    out = fake_quantize_tokens(x, 6)
    assert torch.isfinite(out).all() and torch.equal(out[:2], x[:2].detach())
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_error_shrinks_with_bits_and_bad_bits_are_refused():
    x = torch.randn(64, 128)
    errors = [float((fake_quantize_tokens(x, b) - x).abs().max()) for b in (4, 6, 8)]
    assert errors[0] > errors[1] > errors[2] > 0
    with pytest.raises(UnsupportedSpecError, match="activation bit width"):
        TokenwiseQuantizer(16)


def test_split_input_quantizes_each_half_alone():
    x = torch.cat([torch.randn(3, 4, 2), 100 * torch.randn(3, 4, 2)], dim=-1)
    split = SplitInputQuantizer([(0, 2), (2, 4)], [TokenwiseQuantizer(4), None], channel_dim=-1)
    out = split(x)
    assert torch.equal(out[..., 2:], x[..., 2:])
    assert torch.equal(out[..., :2], fake_quantize_tokens(x[..., :2], 4))


def test_static_quantizer_per_step_ranges_power_of_two_and_smoothing():
    clock = StepClock([900, 500, 100])
    q = StaticQuantizer(4, n_sets=3, clock=clock)
    for t, scale in ((900, 1.0), (100, 10.0)):
        clock.set_timestep(t)
        q(scale * torch.linspace(-1, 1, 17))
    with pytest.raises(QsdError, match="before any activation|StepClock"):
        StaticQuantizer(4, n_sets=2)
    q.finalize()
    assert q.mode == "quantize" and q.delta[0] < q.delta[2] and q.delta[1] == q.delta[2]  # unseen step: the union
    clock.set_timestep(880)
    x = torch.linspace(-1, 1, 33)
    assert torch.allclose(q(x), x, atol=float(q.delta[0]) / 2 + 1e-6)
    shifted = StaticQuantizer(4, channel_dim=-1)
    shifted(torch.tensor([[-8.0, 8.0], [-1.0, 1.0]]).t())
    shifted.finalize()
    shifted.shifts = torch.tensor([[0, 3]])
    out = shifted(torch.tensor([[0.3, 0.3]]))
    assert out[0, 1] != out[0, 0] and abs(float(out[0, 1]) - 0.3) <= float(shifted.delta[0]) / 16 + 1e-6


@pytest.mark.parametrize("arch", ["pixart", "sd15_unet", "dit"])
def test_a_bits_change_the_computation_and_read_back(arch):
    model = random_denoiser(arch)
    units = [u.name for u in quantizable_units(model)]
    weights_only = QuantConfig.uniform(units, QuantSpec("uaq", 8))
    plain, activated = copy.deepcopy(model), copy.deepcopy(model)
    quantize_(plain, weights_only)
    quantize_(activated, weights_only.with_a_bits(4))
    assert QuantConfig.from_model(activated) == weights_only.with_a_bits(4)
    reference = forward(plain, arch)
    changed = forward(activated, arch)
    assert not torch.allclose(reference, changed, atol=1e-4)
    processors = [m.processor for m in activated.modules() if hasattr(m, "set_processor")]
    assert processors and all(isinstance(p, QuantAttnProcessor) for p in processors)


def test_quantized_attention_at_high_bits_equals_float_attention():
    model = random_denoiser("pixart")
    units = [u.name for u in quantizable_units(model)]
    activated = copy.deepcopy(model)
    quantize_(activated, QuantConfig.uniform(units, None).with_layers(
        {u: QuantSpec("uaq", 8, 8) for u in units if ".attn" in u}))
    for module in activated.modules():  # the processor alone, with its quantizers switched off
        if isinstance(getattr(module, "processor", None), QuantAttnProcessor):
            module.processor.query = module.processor.key = module.processor.value = torch.nn.Identity()
            module.processor.probs = torch.nn.Identity()
        if input_quantizer(module) is not None:
            module.act_quantizer = torch.nn.Identity()
    fp = copy.deepcopy(model)
    quantize_(fp, QuantConfig.uniform(units, None).with_layers({u: QuantSpec("uaq", 8) for u in units if ".attn" in u}))
    assert torch.allclose(forward(activated, "pixart"), forward(fp, "pixart"), atol=1e-5)


def test_multiquantizer_applies_and_restores_activation_bits():
    model = random_denoiser("sd15_unet")
    mq = MultiQuantizer.build(model, progress=False)
    config = mq.uniform(QuantSpec("uaq", 4)).with_a_bits(6)
    before = forward(model, "sd15_unet")
    mq.apply(mq.uniform(QuantSpec("uaq", 4)))
    weight_only = forward(model, "sd15_unet")
    mq.apply(config)
    assert QuantConfig.from_model(model) == config
    split = [m for m in model.modules() if isinstance(input_quantizer(m), SplitInputQuantizer)]
    assert split  # concatenation-fed layers quantize their halves separately
    assert not torch.allclose(forward(model, "sd15_unet"), weight_only, atol=1e-5)
    assert mq.cost(config) == mq.cost(mq.uniform(QuantSpec("uaq", 4)))  # average bits count weights
    mq.restore()
    assert all(input_quantizer(m) is None for m in model.modules())
    assert torch.equal(forward(model, "sd15_unet"), before)


def test_packed_model_carries_activation_bits(tmp_path):
    model = random_denoiser("pixart")
    units = [u.name for u in quantizable_units(model)]
    config = QuantConfig.uniform(units, QuantSpec("kmeans_a", 3)).with_layers({units[0]: None}).with_a_bits(6)
    path = export(model, config, tmp_path / "w3a6.safetensors")
    packed = load_quantized(path)
    assert QuantConfig.from_model(packed) == config
    fake = copy.deepcopy(model)
    quantize_(fake, config)
    inputs = example_inputs("pixart", batch=FUSED_MAX_ROWS + 1)  # dense path: bit for bit
    with torch.no_grad():
        assert torch.equal(packed(**inputs, return_dict=False)[0], fake(**inputs, return_dict=False)[0])


def test_a_deep_copy_drives_its_own_step_clock():
    model = random_denoiser("pixart")
    clock = StepClock([900, 100])
    clock.attach(model)
    copied = copy.deepcopy((model, clock))
    inputs = example_inputs("pixart")
    inputs["timestep"] = torch.full((2,), 120.0)
    with torch.no_grad():
        copied[0](**inputs)
    assert copied[1].index == 1 and clock.index == 0
