"""ViDiT-Q in the baselines harness (qsd.baselines.viditq, qsd.baselines.channel_balance): channel balancing is exact
in float, W4A6 beats the RTN floor where channels are imbalanced, runs are reproducible, and the metric-decoupled
mixed precision raises layers of both groups and counts them in the average bits. Offline, random-init models."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from margins import below

from qsd.actquant import QuantAttnProcessor, TokenwiseQuantizer, input_quantizer
from qsd.baselines import rtn, viditq
from qsd.baselines.calibration import CalibrationSet, output_error
from qsd.baselines.channel_balance import (
    BalancedInputQuantizer,
    balanced_weight,
    hadamard,
    input_channel_peaks,
    rotation_matrix,
    smoothing_scales,
)
from qsd.baselines.common import average_bits, mixed_average_bits, quantized_copy, quantized_units, rtn_weight
from qsd.errors import InvalidSettingError
from qsd.models.random_init import example_inputs, random_denoiser

TIMESTEPS = (900.0, 600.0, 300.0, 50.0)
NULL_CLASS = 10  # the random DiT's 10 classes; its label table has one more row, the guidance null class


def guided_calibration(arch: str, n: int = 4, timesteps=TIMESTEPS) -> CalibrationSet:
    """A classifier-free-guidance calibration set as qsd.sampling records it: per step the unconditional half (zero
    conditions / the null class) then the conditional half, both on the same latents."""
    steps = []
    for i, t in enumerate(timesteps):
        inputs, batch = example_inputs(arch, n, seed=i), {}
        for key, value in inputs.items():
            if key in ("hidden_states", "sample"):
                batch[key] = torch.cat([value, value])
            elif key == "timestep":
                batch[key] = torch.full((2 * n,), t, dtype=value.dtype)
            elif key == "class_labels":
                batch[key] = torch.cat([torch.full_like(value, NULL_CLASS), value])
            elif isinstance(value, torch.Tensor) and value.shape[:1] == (n,):
                batch[key] = torch.cat([torch.zeros_like(value), value])
            else:
                batch[key] = value
        steps.append(batch)
    return CalibrationSet.from_inputs(steps)


def with_adaln_outliers(model: torch.nn.Module, arch: str, channels=(3, 17, 40), size: float = 40.0):
    """Give a few channels a large static adaLN scale in every block (attention and MLP inputs), the channel
    imbalance ViDiT-Q's balancing targets; random-init models have none."""
    with torch.no_grad():
        for block in model.transformer_blocks:
            for c in channels:
                if arch == "pixart":  # scale_shift_table rows: shift/scale/gate of attention, then of the MLP
                    block.scale_shift_table[1, c] += size
                    block.scale_shift_table[4, c] += size
                else:  # AdaLayerNormZero: linear(emb) chunks in the same order
                    dim = block.norm1.linear.out_features // 6
                    block.norm1.linear.bias[dim + c] += size
                    block.norm1.linear.bias[4 * dim + c] += size
    return model


FAST_MP = viditq.Settings(mp_fraction=0.15, mp_steps=2, mp_rows=2)
PAPER = viditq.Settings(**viditq.PAPER_BALANCING)


@pytest.fixture(scope="module")
def pixart():
    model = random_denoiser("pixart", 0)
    calibration = guided_calibration("pixart")
    return model, calibration, calibration.outputs(model)


def test_rotations_are_orthogonal():
    h = hadamard(8)
    assert torch.equal(h @ h.T, 8 * torch.eye(8, dtype=h.dtype))
    for width, kind in ((64, "hadamard"), (48, "hadamard"), (48, "random"), (5, "random")):
        r = rotation_matrix(width, kind, torch.Generator().manual_seed(0))
        assert torch.allclose(r @ r.T, torch.eye(width), atol=1e-5)
    assert rotation_matrix(64, "none", torch.Generator()) is None
    assert rotation_matrix(1, "hadamard", torch.Generator()) is None
    with pytest.raises(InvalidSettingError):
        rotation_matrix(8, "givens", torch.Generator())


def test_smoothing_scales():
    act, weight = torch.tensor([4.0, 1.0, 0.0, 9.0]), torch.tensor([1.0, 4.0, 2.0, 0.0])
    assert torch.allclose(smoothing_scales(act, weight, 0.5), torch.tensor([2.0, 0.5, 1.0, 1.0]))
    assert torch.allclose(smoothing_scales(act, weight, 1.0), torch.tensor([4.0, 1.0, 1.0, 1.0]))
    with pytest.raises(InvalidSettingError):
        smoothing_scales(act, weight, 1.5)


def test_balanced_linear_computes_quantized_balanced_operands():
    """The layer computes Q(x̃R)·Q(W̃R)ᵀ: stored weight dequant(Q(W̃R))Rᵀ, input quantizer Q(x̃R)Rᵀ."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(3, 5, 16, generator=g), torch.randn(8, 16, generator=g)
    s = torch.rand(16, generator=g) + 0.5
    r = rotation_matrix(16, "hadamard", g)
    quantizer = BalancedInputQuantizer(s, [(0, 16)], [r], [TokenwiseQuantizer(4)], -1)
    stored = balanced_weight(w, s, r, 4)
    x_rot, w_rot = (x / s) @ r, (w * s) @ r
    q_x = TokenwiseQuantizer(4)(x_rot)
    q_w = rtn_weight(w_rot, 4).dequantize()
    assert torch.allclose(quantizer(x) @ stored.T, q_x @ q_w.T, atol=1e-4)


@pytest.mark.parametrize(("arch", "settings"), [
    ("pixart", PAPER),
    # convolutions, split concat inputs
    ("sd15_unet", dataclasses.replace(PAPER, balance_convs=True, rotation="random")),
])
def test_balancing_alone_leaves_the_float_function(arch, settings):
    model = random_denoiser(arch, 0)
    calibration = guided_calibration(arch, n=2)
    reference = calibration.outputs(model)
    balanced = quantized_copy(model)
    plans = viditq.plan_balancing(balanced, quantized_units(balanced), calibration, settings, seed=0)
    assert any(p.smooth is not None for p in plans.values())
    assert any(r is not None for p in plans.values() for r in p.rotations)
    if arch == "sd15_unet":
        assert any(len(p.units) == 2 and p.rotations[0] is not None for p in plans.values())
    modules = dict(balanced.named_modules())
    for name, plan in plans.items():
        viditq.apply_layer_(modules[name], plan, modules[name].weight.detach().clone(), None, None)
    for out, ref in zip(calibration.outputs(balanced), reference, strict=True):
        assert torch.allclose(out, ref, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.comparison
@pytest.mark.parametrize("arch", ["pixart", "dit"])
def test_w4a6_beats_rtn_on_imbalanced_channels(arch):
    model = with_adaln_outliers(random_denoiser(arch, 0), arch)
    calibration = guided_calibration(arch)
    reference = calibration.outputs(model)
    ours = viditq.quantize(model, calibration)
    floor = rtn.quantize(model, calibration)
    assert (ours.w_bits, ours.a_bits) == (4, 6)
    below(output_error(ours.denoiser, reference, calibration), output_error(floor.denoiser, reference, calibration),
          0.2, "ViDiT-Q W4A6 output error vs RTN")


def test_keeps_its_released_float_layers(pixart):
    """ViDiT-Q's released PTS script keeps PixArt's patch embedder, timestep embedder and adaLN block, and caption
    embedder float; on a DiT the same roles (its per-block adaLN-Zero projections included)."""
    model, calibration, _ = pixart
    released = viditq.released_float_layers(model)
    assert {n.split(".")[0] for n in released} == {"pos_embed", "adaln_single", "caption_projection"}
    assert "pos_embed.proj" in released and "adaln_single.linear" in released
    assert not any(n.startswith(("transformer_blocks", "proj_out")) for n in released)
    result = viditq.quantize(model, calibration)
    assert result.settings["float_layers"] == released and result.settings["keep_released"]
    modules, floats = dict(result.denoiser.named_modules()), dict(model.named_modules())
    for name in released:
        assert input_quantizer(modules[name]) is None and torch.equal(modules[name].weight, floats[name].weight)
    dit = viditq.released_float_layers(random_denoiser("dit", 0))
    assert "pos_embed.proj" in dit and "proj_out_1" in dit and "proj_out_2" not in dit
    assert any(n.endswith("norm1.linear") for n in dit) and any("timestep_embedder" in n for n in dit)


def test_quantizes_every_layer_and_attention(pixart):
    model, calibration, _ = pixart
    result = viditq.quantize(model, calibration, settings=viditq.Settings(keep_released=False))
    assert result.method == "viditq" and result.settings["float_layers"] == []
    assert result.avg_bits == pytest.approx(average_bits(model, quantized_units(model), 4))
    modules = dict(result.denoiser.named_modules())
    for unit in quantized_units(model):
        quantizer = input_quantizer(modules[unit.module])
        assert isinstance(quantizer, BalancedInputQuantizer)
        assert all(q.bits == 6 for q in quantizer.quantizers)
    processors = [m.processor for name, m in modules.items() if name.endswith(("attn1", "attn2"))]
    assert processors and all(isinstance(p, QuantAttnProcessor) and p.probs.unsigned for p in processors)
    assert result.settings["guided_calibration"] and result.settings["float_attention"] == []
    assert result.settings["smoothing_steps"] == [0]  # the highest-noise quarter of 4 steps
    kept = viditq.quantize(model, calibration, settings=viditq.Settings(keep_released=False, keep_first_last=True))
    assert len(kept.settings["float_layers"]) == 2 and kept.avg_bits > result.avg_bits
    assert all(input_quantizer(dict(kept.denoiser.named_modules())[n]) is None for n in kept.settings["float_layers"])


def test_deterministic_for_a_seed(pixart):
    model, calibration, _ = pixart
    first, second = (viditq.quantize(model, calibration, settings=PAPER, seed=3).denoiser for _ in range(2))
    for a, b in zip(calibration.outputs(first), calibration.outputs(second), strict=True):
        assert torch.equal(a, b)
    other = viditq.quantize(model, calibration, settings=PAPER, seed=4).denoiser
    assert not all(torch.equal(a, b) for a, b in zip(calibration.outputs(first), calibration.outputs(other),
                                                      strict=True))


@pytest.mark.comparison
def test_mixed_precision_raises_layers_of_both_groups(pixart):
    model, calibration, reference = pixart
    plain = viditq.quantize(model, calibration)
    mixed = viditq.quantize(model, calibration, settings=FAST_MP)
    raised = mixed.settings["w8a8_layers"]
    alignment = set(viditq.condition_fed_layers(model))
    assert raised["alignment"] and set(raised["alignment"]) <= alignment
    assert raised["quality"] and not set(raised["quality"]) & alignment
    for group, size in mixed.settings["group_sizes"].items():  # round(15 %), at least one
        assert len(raised[group]) == max(1, math.floor(0.15 * size + 0.5))
    assert mixed.settings["mp_metrics"] == {"alignment": "guidance_error", "quality": "eps_error"}
    quantized = quantized_units(model, viditq.released_float_layers(model))
    assert set(mixed.settings["mp_sensitivity"]) == {u.module for u in quantized}
    assert mixed.avg_bits > plain.avg_bits
    unit_bits = {u.name: 8 if u.module in {*raised["alignment"], *raised["quality"]} else 4 for u in quantized}
    assert mixed.avg_bits == pytest.approx(mixed_average_bits(model, unit_bits))
    modules = dict(mixed.denoiser.named_modules())
    for name in raised["alignment"] + raised["quality"]:
        assert all(q.bits == 8 for q in input_quantizer(modules[name]).quantizers)
    below(output_error(mixed.denoiser, reference, calibration), output_error(plain.denoiser, reference, calibration),
          0.5, "ViDiT-Q mixed precision vs W4A6 everywhere")


def test_guidance_detection_and_fallback_metric():
    guided = guided_calibration("dit", n=2)
    assert viditq.is_guided(guided)
    unguided = CalibrationSet.from_inputs([example_inputs("pixart", 4, seed=i) for i in range(2)])
    assert not viditq.is_guided(unguided)
    result = viditq.quantize(random_denoiser("pixart", 0), unguided, settings=FAST_MP)
    assert result.settings["mp_metrics"]["alignment"] == "eps_error"
    assert result.settings["w8a8_layers"]["alignment"]


def test_settings_are_checked():
    for bad in ({"alpha": 1.5}, {"rotation": "givens"}, {"mp_fraction": 2.0}, {"balance_fraction": 0.0},
                {"smoothed_layers": "some"}, {"scale_statistic": "mean"}, {"momentum": 1.0},
                {"smoothing_batch_rows": 0}):
        with pytest.raises(InvalidSettingError):
            dataclasses.replace(viditq.Settings(), **bad)


def test_momentum_peak_is_the_released_moving_average():
    """ViDiT-Q's `momentum_act_max`: per batch the mean over samples of each sample's channel maxima over its
    tokens, then m ← 0.95·m + 0.05·batch from the first batch; "absmax" is the maximum over everything."""
    class OneLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 1)

        def forward(self, hidden_states, timestep):
            return self.proj(hidden_states)

    x = torch.tensor([[[1.0, -4.0], [3.0, 0.0]],    # sample 0: channel maxima (3, 4)
                      [[-5.0, 2.0], [0.0, 1.0]],    # sample 1: (5, 2)
                      [[2.0, 2.0], [-1.0, 8.0]]])   # sample 2: (2, 8)
    calibration = CalibrationSet.from_inputs([{"hidden_states": x, "timestep": torch.tensor(900.0)}])
    peaks = {statistic: input_channel_peaks(OneLayer(), ["proj"], calibration, [0], batch_rows=2,
                                            statistic=statistic)["proj"]
             for statistic in ("momentum", "absmax")}
    first, second = torch.tensor([4.0, 3.0]), torch.tensor([2.0, 8.0])  # batch means: samples (0, 1), then (2)
    assert torch.allclose(peaks["momentum"], 0.95 * first + 0.05 * second)
    assert torch.equal(peaks["absmax"], torch.tensor([5.0, 8.0]))
    with pytest.raises(InvalidSettingError):
        input_channel_peaks(OneLayer(), ["proj"], calibration, [0], statistic="mean")


def test_smooths_the_layer_its_release_smooths(pixart):
    """Released for PixArt: smoothing only on the last block's FF output projection (`blocks.27.mlp.fc2` in
    PixArt-XL), no rotation; the paper's balancing smooths and rotates every quantized linear layer."""
    model, calibration, _ = pixart
    last = max(int(n.split(".")[1]) for n, _ in model.named_modules() if n.startswith("transformer_blocks."))
    released = viditq.quantize(model, calibration)
    assert released.settings["smoothed"] == [f"transformer_blocks.{last}.ff.net.2"]
    assert released.settings["rotation"] == "none" and released.settings["scale_statistic"] == "momentum"
    modules = dict(released.denoiser.named_modules())
    quantizers = {u.module: input_quantizer(modules[u.module])
                  for u in quantized_units(model, released.settings["float_layers"])}
    assert {n for n, q in quantizers.items() if q.smooth is not None} == set(released.settings["smoothed"])
    assert not any(any(q.rotated) for q in quantizers.values())
    paper = viditq.quantize(model, calibration, settings=PAPER)
    linear = {n for n in quantizers if isinstance(modules[n], torch.nn.Linear)}
    assert set(paper.settings["smoothed"]) == linear
    rules = viditq.rules(released.settings, 6)
    assert f"transformer_blocks.{last}.ff.net.2" in rules["activations"] and "no rotation" in rules["weights"]
    assert "hadamard rotation" in viditq.rules(paper.settings, 6)["weights"]
