"""DMQ (qsd.baselines.dmq) and its parts: learned equivalent scaling with adaptive timestep weighting
(qsd.baselines.les) and power-of-two channel scaling with voting (qsd.baselines.pts)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from margins import below

from qsd.actquant import StaticQuantizer
from qsd.baselines import baseline_settings, dmq, qdiffusion, rtn
from qsd.baselines.calibration import CalibrationSet, output_error
from qsd.baselines.common import quantized_copy, quantized_units
from qsd.baselines.les import (
    adaptive_weights,
    fold_scales_,
    learn_scales,
    update_buffer,
)
from qsd.baselines.pts import vote_shifts
from qsd.baselines.reconstruction import ReconstructionSettings, activations_off
from qsd.models.random_init import example_inputs, random_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dmq.Settings(les_iters=8, les_rows_per_step=4, reconstruction=ReconstructionSettings(iters=6, batch=4),
                    act_batch=4)


def calibration_set(arch: str, rows: int = 4, timesteps=(900.0, 500.0, 100.0)) -> CalibrationSet:
    steps = []
    for k, t in enumerate(timesteps):
        inputs = example_inputs(arch, batch=rows, seed=k)
        inputs["timestep"] = torch.full_like(inputs["timestep"], t)
        steps.append(inputs)
    return CalibrationSet.from_inputs(steps)


@pytest.fixture(scope="module")
def unet():
    model = random_denoiser("sd15_unet", 0)
    calibration = calibration_set("sd15_unet")
    return model, calibration, calibration.outputs(model)


@pytest.fixture(scope="module")
def pixart():
    model = random_denoiser("pixart", 0)
    calibration = calibration_set("pixart")
    return model, calibration, calibration.outputs(model)


def rtn_error(model, calibration, reference) -> float:
    threads = torch.get_num_threads()
    result = rtn.quantize(model, calibration)
    torch.set_num_threads(threads)  # numba's parallel kernels reset the OpenMP thread count torch shares
    return output_error(result.denoiser, reference, calibration)


def test_adaptive_weights_match_hand_computation():
    buffer = torch.tensor([1.0, 3.0, 0.0, 4.0], dtype=torch.float64)
    # λ_k = (1 − Λ_k/ΣΛ)^r with ΣΛ = 8
    assert torch.allclose(adaptive_weights(buffer, 2.0), torch.tensor([(7 / 8) ** 2, (5 / 8) ** 2, 1.0, 0.25],
                                                                      dtype=torch.float64))
    assert adaptive_weights(buffer, 20.0)[3].item() == pytest.approx(0.5 ** 20)
    assert torch.equal(adaptive_weights(torch.zeros(3), 20.0), torch.ones(3))
    # Λ ← m·Λ + (1 − m)·(errors summed per step); step 1 and 3 are absent and only decay
    new = update_buffer(buffer, torch.tensor([2.0, 1.0, 5.0]), torch.tensor([0, 0, 2]), momentum=0.5)
    assert torch.allclose(new, torch.tensor([2.0, 1.5, 2.5, 2.0], dtype=torch.float64))


def test_pts_vote_keeps_the_mode_only_above_kappa():
    # 4-bit, Δ = 1, z = 8: the grid covers [−8, 7]; candidates Δ, Δ/2, Δ/4, Δ/8
    small = torch.tensor([0.125, -0.375, 0.625])  # on the Δ/8 grid only: votes 3
    large = torch.tensor([5.0, -6.0, 3.0])  # on the Δ grid, clipped by the finer ones: votes 0
    n = 20
    u = torch.empty(n, 4, 3)
    u[:, 0] = small
    u[:, 1] = large
    u[:, 2] = small
    u[:2, 2] = large  # 18 of 20 samples vote 3: share 0.9 ≥ 0.85
    u[:, 3] = small
    u[:4, 3] = large  # 16 of 20 vote 3: share 0.8 < 0.85 → no scaling
    shifts, mode, share = vote_shifts(u, 1.0, 8.0, bits=4, channel_dim=1, max_shift=3, kappa=0.85)
    assert mode.tolist() == [3, 0, 3, 3]
    assert share.tolist() == pytest.approx([1.0, 1.0, 0.9, 0.8])
    assert shifts.tolist() == [3, 0, 3, 0]
    # channels last (linear-layer inputs) give the same votes
    assert vote_shifts(u.transpose(1, 2), 1.0, 8.0, 4, -1)[0].tolist() == [3, 0, 3, 0]


def test_les_fold_keeps_the_float_function(unet):
    model, calibration, reference = unet
    copy = quantized_copy(model)
    units = quantized_units(copy, dmq.float_layers(copy, calibration)["all"])
    bounds = {}
    for u in units:
        bounds.setdefault(u.module, []).append((u.in_start, u.in_stop))
    gammas, stats = learn_scales(copy, bounds, calibration, w_bits=4, a_bits=6, iters=3, rows_per_step=2)
    assert set(gammas) == set(bounds) and all(s["gamma_min"] > 0 for s in stats.values())
    g = torch.Generator().manual_seed(0)
    gammas = {name: torch.rand(len(gamma), generator=g) * 1.5 + 0.5 for name, gamma in gammas.items()}  # far from 1
    fold_scales_(copy, gammas)
    quantizers = dmq.attach_scaled(copy, units, 6, 1, None, 0.95, gammas)
    assert any(u.name.endswith(":skip") for u in units)  # split layers carry their half of γ
    for q in quantizers.values():
        q.set_mode("float")
    outputs = calibration.outputs(copy)
    for out, ref in zip(outputs, reference, strict=True):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for q in quantizers.values():  # observing passes x/γ on as well
        q.set_mode("observe")
    torch.testing.assert_close(calibration.outputs(copy)[0], reference[0], rtol=1e-4, atol=1e-5)
    with activations_off(copy):  # the weight reconstruction's switch keeps the division
        torch.testing.assert_close(calibration.outputs(copy)[1], reference[1], rtol=1e-4, atol=1e-5)


def test_smoothed_quantizer_observe_and_float_modes():
    q = StaticQuantizer(6, channel_dim=1)
    q.smooth = torch.tensor([2.0, 4.0])
    x = torch.ones(3, 2, 5)
    assert torch.equal(q(x), x / torch.tensor([2.0, 4.0])[None, :, None])
    q.finalize()
    assert q.mode == "quantize" and q.high[0] == pytest.approx(0.5)
    q.set_mode("float")
    assert torch.equal(q(x)[:, 1], torch.full((3, 5), 0.25))


@pytest.mark.comparison
@pytest.mark.parametrize("arch", ["unet", "pixart"])
def test_dmq_w4a6_beats_rtn(arch, request):
    model, calibration, reference = request.getfixturevalue(arch)
    result = dmq.quantize(model, calibration, 4, 6, FAST, seed=0)
    error = output_error(result.denoiser, reference, calibration)
    below(error, rtn_error(model, calibration, reference), 0.05, "DMQ W4A6 output error vs RTN")
    quantizers = [m for m in result.denoiser.modules() if isinstance(m, StaticQuantizer)]
    assert quantizers and all(q.mode == "quantize" and q.n_sets == len(calibration) for q in quantizers)
    record = result.record()
    assert record["method"] == "dmq" and record["calibration_seconds"] > 0
    settings = record["settings"]
    assert settings["les_iters"] == FAST.les_iters and settings["reconstruction"]["iters"] == FAST.reconstruction.iters
    assert settings["attention_matmuls"] == "float" and settings["reconstruction_stats"]
    if arch == "unet":
        assert "time_embedding.linear_1" in settings["float_layers"]
        assert any("time_emb_proj" in n for n in settings["float_layers"])
        assert settings["first_last"] == ["conv_in", "conv_out"]
        assert settings["pts_units"] and all("conv_shortcut" in u for u in settings["pts_units"])
        assert any(u.endswith(":skip") for u in settings["pts_units"])
        pts = [q for m, q in result.denoiser.named_modules() if "conv_shortcut" in m and isinstance(q, StaticQuantizer)]
        assert pts and all(q.shifts is not None and q.shifts.shape[0] == len(calibration) for q in pts)
    else:
        assert any(n.startswith("adaln_single.") for n in settings["float_layers"])
        assert settings["pts_units"] == [] and settings["pts_note"]
    assert model.training is False and all(not isinstance(m, StaticQuantizer) for m in model.modules())


def test_dmq_is_deterministic_for_a_seed(pixart):
    model, calibration, _ = pixart
    settings = dmq.Settings(les_iters=4, les_rows_per_step=4, reconstruction=ReconstructionSettings(iters=4, batch=4),
                            act_batch=4)
    first = dmq.quantize(model, calibration, settings=settings, seed=3)
    second = dmq.quantize(model, calibration, settings=settings, seed=3)
    outputs = calibration.outputs(first.denoiser)
    for a, b in zip(outputs, calibration.outputs(second.denoiser), strict=True):
        assert torch.equal(a, b)
    assert first.settings["les"]["stats"] == second.settings["les"]["stats"]
    # a deep copy drives its own step clock: its quantizers still pick the set of the step they run at
    for a, b in zip(outputs, calibration.outputs(copy.deepcopy(first.denoiser)), strict=True):
        assert torch.equal(a, b)


@pytest.mark.comparison
def test_activation_treatment_on_other_weights(unet):
    model, calibration, reference = unet
    weights_only = rtn.quantize(model, calibration, a_bits=None).denoiser
    torch.set_num_threads(1)
    record = dmq.activation_treatment(weights_only, calibration, 6, FAST)
    assert record["a_bits"] == 6 and record["pts_units"] and "conv_in" in record["float_layers"]
    quantizers = [m for m in weights_only.modules() if isinstance(m, StaticQuantizer)]
    assert quantizers and all(q.n_sets == len(calibration) and q.smooth is None for q in quantizers)
    below(output_error(weights_only, reference, calibration), 10 * rtn_error(model, calibration, reference), 0.5,
          "RTN weights with DMQ's activations vs 10 × RTN W4A6")


def test_reconstruction_settings_nest_as_in_q_diffusion():
    """DMQ's weight reconstruction is a nested `ReconstructionSettings` as Q-Diffusion's and TFMQ-DM's, starting from
    its released MSE-searched grid where theirs start from min–max as released, and takes its overrides as a dict (as
    stage 06's `baseline_settings` do)."""
    assert dmq.Settings().reconstruction == ReconstructionSettings()
    assert qdiffusion.Settings().reconstruction == dataclasses.replace(ReconstructionSettings(), grid="minmax")
    settings = baseline_settings("dmq", {"les_iters": 2, "reconstruction": {"iters": 100}})
    assert settings.reconstruction == ReconstructionSettings(iters=100) and settings.les_iters == 2
