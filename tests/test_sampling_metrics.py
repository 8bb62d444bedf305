"""Sampling under common random numbers, FID with cached references, prompt accuracy, proxies, labelling."""

import dataclasses

import pytest
import torch
from margins import above, below

from qsd.config import QuantSpec
from qsd.embedded import digits
from qsd.errors import InvalidSettingError
from qsd.labelling import Labeller
from qsd.metrics.fid import FidScorer, fid_scorer, reference_statistics
from qsd.metrics.prompt_accuracy import prompt_accuracy
from qsd.metrics.proxies import eps_error, guided_noise_at, probe_from_trajectory
from qsd.models import feature_backend, load_model
from qsd.multiquant import MultiQuantizer
from qsd.sampling import SamplingProtocol, Trajectory, generate, initial_noise

QUALITY_BARS = {"tiny_pixart": 0.85, "tiny_sd": 0.85, "tiny_dit": 0.88}
"""Prompt accuracy at the entries' FID-optimal guidance (1,000 images: 91.7 / 92.1 / 94.1 %), less a margin for
sampling noise at 120 images: a lower guidance trades prompt accuracy for FID."""


@pytest.fixture(scope="module")
def pixart():
    return load_model("tiny_pixart")


@pytest.fixture(scope="module")
def backend():
    return feature_backend("mnist16-train")


@pytest.fixture(scope="module")
def fid(backend, tmp_path_factory):
    return fid_scorer(backend, "mnist16-train", tmp_path_factory.mktemp("fid"))


def test_noise_depends_only_on_seed_and_index():
    assert torch.equal(initial_noise((1, 4, 4), 5, seed=3)[2:], initial_noise((1, 4, 4), 3, seed=3, start=2))
    assert not torch.equal(initial_noise((1, 4, 4), 2, seed=3), initial_noise((1, 4, 4), 2, seed=4))


def test_same_seed_gives_bitwise_identical_images(pixart):
    protocol = SamplingProtocol(n_images=6, steps=5, guidance=3.0, seed=7)
    first = generate(pixart, protocol, progress=False)
    assert torch.equal(first, generate(pixart, protocol, progress=False))
    assert not torch.equal(first, generate(pixart, SamplingProtocol(6, 5, 3.0, seed=8), progress=False))
    assert torch.allclose(first, generate(pixart, protocol, batch_size=4, progress=False), atol=1e-4)
    assert first.shape == (6, 1, 16, 16) and 0 <= float(first.min()) and float(first.max()) <= 1


def test_bfloat16_compute_is_close_to_float32_and_reproducible(pixart):
    protocol = SamplingProtocol(n_images=10, steps=6, guidance=3.0, seed=1)
    bf16 = SamplingProtocol(n_images=10, steps=6, guidance=3.0, seed=1, compute_dtype="bfloat16")
    exact, fast = generate(pixart, protocol, progress=False), generate(pixart, bf16, progress=False)
    assert fast.dtype == torch.float32 and torch.equal(fast, generate(pixart, bf16, progress=False))
    assert not torch.equal(exact, fast), "autocast must actually change the arithmetic"
    assert (exact - fast).pow(2).mean() < 1e-3
    with pytest.raises(InvalidSettingError, match="compute_dtype"):
        SamplingProtocol(compute_dtype="float16")


def test_compiled_protocol_matches_eager_and_follows_swapped_weights():
    model = load_model("tiny_pixart")  # its own copy: compilation is in place
    eager = SamplingProtocol(n_images=8, steps=4, guidance=3.0)
    compiled = dataclasses.replace(eager, compile=True)
    reference = generate(model, eager, progress=False)
    assert torch.allclose(generate(model, compiled, progress=False), reference, atol=1e-5) and model.compiled
    assert torch.equal(generate(model, eager, progress=False), reference), "an eager protocol must stay eager"
    mq = MultiQuantizer.build(model.denoiser, progress=False)
    mq.apply(mq.uniform(QuantSpec("uaq", 3)))
    quantized = generate(model, eager, progress=False)
    with torch.compiler.set_stance("fail_on_recompile"):  # new weights are graph inputs, not a new graph
        compiled_quantized = generate(model, compiled, progress=False)
    mq.restore()
    assert (quantized - reference).abs().max() > 1e-2
    assert torch.allclose(compiled_quantized, quantized, atol=1e-4)  # measured 3e-5: rounding, not old weights


def test_probe_eps_does_not_depend_on_how_the_steps_are_batched(pixart):
    protocol = SamplingProtocol(n_images=4, steps=6, guidance=3.0)
    trajectory = Trajectory([], [])
    generate(pixart, protocol, progress=False, trajectory=trajectory)
    probe = probe_from_trajectory(pixart, protocol, trajectory, 4, batch_size=4)  # one step per forward
    assert probe.latents.shape == (6, 4, 1, 16, 16) and eps_error(pixart, probe) == 0
    whole = dataclasses.replace(probe, batch_size=24)  # all six steps in one forward
    torch.testing.assert_close(guided_noise_at(pixart, whole), probe.eps, atol=1e-5, rtol=1e-4)


def test_reference_statistics_are_cached_not_recomputed(backend, tmp_path):
    calls = []

    def images():
        calls.append(1)
        return digits.load_digits("train")[0][:200]

    first, path = reference_statistics(backend.feature, backend.image_shape, "mnist16-train", images, tmp_path)
    mtime = path.stat().st_mtime_ns
    second, again = reference_statistics(backend.feature, backend.image_shape, "mnist16-train", images, tmp_path)
    assert calls == [1] and again == path and path.stat().st_mtime_ns == mtime
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert int(first["real_features_num_samples"]) == 200


@pytest.mark.parametrize("n_generated", [12, 40])
def test_fid_with_fewer_images_than_features_equals_torchmetrics(n_generated, tmp_path):
    """n < d takes the n x n trace path, n >= d torchmetrics' own; both equal torchmetrics' d x d computation."""
    torch.manual_seed(0)
    feature = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.Tanh())
    real, generated = torch.rand(300, 1, 4, 4), torch.rand(n_generated, 1, 4, 4) ** 2
    reference, _ = reference_statistics(feature, (1, 4, 4), "toy", lambda: real, tmp_path)
    scorer = FidScorer(feature, (1, 4, 4), reference, batch_size=7)
    expected = FidScorer(feature, (1, 4, 4), reference).metric
    expected.update(generated, real=False)
    assert scorer(generated) == pytest.approx(float(expected.compute()), rel=1e-6)
    assert scorer(generated) > 0.01  # a real distance, not two zeros agreeing
    with pytest.raises(InvalidSettingError, match="at least 2"):
        scorer(generated[:1])


@pytest.mark.comparison
def test_fid_orders_real_samples_noise(pixart, fid):
    samples = generate(pixart, SamplingProtocol(n_images=200, steps=20, guidance=3.0), progress=False)
    real = digits.load_digits("heldout")[0][:200]
    noise = torch.rand(200, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    fid_real, fid_samples, fid_noise = fid(real), fid(samples), fid(noise)
    below(fid_real, fid_samples, 0.3, "FID of real held-out digits vs the samples'")
    below(fid_samples, fid_noise, 0.3, "FID of the samples vs uniform noise's")


@pytest.mark.comparison
@pytest.mark.parametrize("model_id", list(QUALITY_BARS))
def test_prompt_accuracy_of_shipped_models_meets_the_bar(model_id, backend):
    model = load_model(model_id)
    images = generate(model, SamplingProtocol(n_images=120, steps=20, guidance=model.entry.sampler.guidance),
                      progress=False)
    _, targets = model.protocol_prompts(120)
    above(prompt_accuracy(backend.classifier, images, targets), QUALITY_BARS[model_id], 0.02,
          "prompt accuracy vs the model's bar")


def test_labeller_float_is_its_own_reference_and_quantized_is_worse(pixart, backend, tmp_path):
    protocol = SamplingProtocol(n_images=40, steps=8, guidance=3.0)
    labeller = Labeller(pixart, protocol, n_probe=4, progress=False, backend=backend, cache_dir=tmp_path)
    float_labels = labeller.label()
    assert float_labels["sample_mse"] == 0 and float_labels["eps_error"] == 0
    mq = MultiQuantizer.build(pixart.denoiser, progress=False)
    w3 = mq.uniform(QuantSpec("uaq", 3))
    labels = labeller.label_config(mq, w3)
    assert labels["sample_mse"] > 0 and labels["eps_error"] > 0 and 3 < labels["avg_bits"] < 4
    assert labeller.label_config(mq, w3)["fid"] == labels["fid"]
    assert labeller.label()["sample_mse"] == 0  # the float weights are back after labelling


def test_seed_scores_reuse_the_float_images_and_step_the_noise_seed(pixart, backend, tmp_path):
    protocol = SamplingProtocol(n_images=24, steps=6, guidance=3.0)
    labeller = Labeller(pixart, protocol, n_probe=4, progress=False, backend=backend, cache_dir=tmp_path)
    reused, kept = labeller.seed_scores(2, keep_images=3)
    sampled, _ = labeller.seed_scores(2, pixart)  # the same float model, every seed sampled afresh
    assert reused["fid_seeds"] == sampled["fid_seeds"]
    assert reused["sample_mse"] == sampled["sample_mse"] == 0.0
    assert torch.equal(kept, labeller.float_images[:3])
    assert reused["fid_seeds"][0] != reused["fid_seeds"][1]  # another seed is other noise
    assert reused["fid_std"] > 0 and 0 <= reused["prompt_accuracy"] <= 1
    assert labeller.seed_scores(1)[0]["fid_std"] == 0.0
    mq = MultiQuantizer.build(pixart.denoiser, progress=False)
    mq.apply(mq.uniform(QuantSpec("uaq", 3)))
    try:
        assert labeller.seed_scores(1, pixart)[0]["sample_mse"] > 0
    finally:
        mq.restore()
