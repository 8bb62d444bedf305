"""Stage 06's rows on the tiny copies of the paper's models, loaded from a local diffusers directory as the real weights
are: every baseline (calibration from the model's own sampler, W4A6) and a Qua²SeDiMo configuration with token-wise
A6, sampled through the same harness (stage 06 runs these steps unchanged on a paper model)."""

import copy

import pytest
import torch
from tiny_fixtures import load_tiny_paper

from qsd import QuantConfig, QuantSpec, quantizable_units, quantize_
from qsd.baselines import BASELINES, baseline, baseline_settings
from qsd.baselines.calibration import CalibrationSet
from qsd.models import paper
from qsd.sampling import SamplingProtocol, generate

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:.*stays float")]


@pytest.mark.parametrize("model_id", [entry.model_id for entry in paper.ENTRIES])
def test_every_baseline_quantizes_and_samples_a_paper_model(model_id, tmp_path):
    model = load_tiny_paper(model_id, tmp_path)
    protocol = SamplingProtocol.for_model(model.entry, n_images=2)
    calibration = CalibrationSet.from_model(model, protocol, 2, seed=1000)
    assert len(calibration) >= 2 and calibration.batch == 4  # every solver call, both guidance halves
    reference = generate(model, protocol, batch_size=2, progress=False)
    weights = {k: v.clone() for k, v in model.denoiser.state_dict().items()}
    for name in BASELINES:
        module = baseline(name)
        result = module.quantize(model.denoiser, calibration, 4, 6, baseline_settings(name, module.SMOKE), seed=0)
        images = generate(model.with_denoiser(result.denoiser), protocol, batch_size=2, progress=False)
        assert images.shape == reference.shape and torch.isfinite(images).all(), name
        assert not torch.equal(images, reference), f"{name} left {model_id} unchanged"
        assert 4 <= result.avg_bits < 16, name
    quantized = quantize_(copy.deepcopy(model.denoiser), QuantConfig.uniform(
        [u.name for u in quantizable_units(model.denoiser)], QuantSpec("uaq", 4, 6)))
    assert QuantConfig.from_model(quantized).a_bits == 6
    images = generate(model.with_denoiser(quantized), protocol, batch_size=2, progress=False)
    assert torch.isfinite(images).all() and not torch.equal(images, reference)
    after = model.denoiser.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items()), "a baseline changed the float denoiser"
