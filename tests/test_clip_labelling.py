"""The Labeller fills `clip_score` for text-conditioned models given a local (here tiny random) CLIP."""

import math

import pytest
import tiny_fixtures
import torch

from qsd.errors import UnsupportedSpecError
from qsd.labelling import Labeller, clip_metric
from qsd.metrics.clip_score import clip_score, clip_score_metric
from qsd.models import feature_backend, load_model
from qsd.sampling import SamplingProtocol

PROTOCOL = SamplingProtocol(n_images=8, steps=2, guidance=1.5)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    # seed 3: a random CLIP whose cosines here are positive (CLIP score clamps negative ones to 0, hiding differences)
    return tiny_fixtures.tiny_clip_dir(tmp_path_factory.mktemp("clip"), seed=3)


def test_labeller_scores_clip_of_each_call_against_the_protocol_captions(clip_dir, tmp_path):
    pixart, backend = load_model("tiny_pixart"), feature_backend("mnist16-train")
    labeller = Labeller(pixart, PROTOCOL, n_probe=2, progress=False, backend=backend, cache_dir=tmp_path,
                        clip_dir=str(clip_dir))
    labels = labeller.label()
    assert {"fid", "prompt_accuracy"} <= labels.keys() and labels["sample_mse"] == 0
    assert math.isfinite(labels["clip_score"]) and labels["clip_score"] > 0
    captions, _ = pixart.protocol_prompts(PROTOCOL.n_images)
    expected = clip_score(labeller.float_images, captions, clip_score_metric(clip_dir))
    assert labels["clip_score"] == pytest.approx(expected, abs=1e-4)
    noise = torch.rand(labeller.float_images.shape, generator=torch.Generator().manual_seed(0))
    assert labeller.score(noise)["clip_score"] != pytest.approx(expected, abs=1e-3)
    assert labeller.score(labeller.float_images)["clip_score"] == pytest.approx(expected, abs=1e-4)  # not accumulated

    without = Labeller(pixart, PROTOCOL, n_probe=2, progress=False, backend=backend, cache_dir=tmp_path).label()
    assert "clip_score" not in without and {"fid", "prompt_accuracy"} <= without.keys()


def test_greyscale_is_scored_as_its_three_channel_repeat_and_class_models_refuse_clip(clip_dir):
    metric, captions = clip_score_metric(clip_dir), ["a cat on the table", "two dogs"]
    grey = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    score = clip_score(grey, captions, metric)
    metric.reset()
    assert score > 0 and score == pytest.approx(clip_score(grey.repeat(1, 3, 1, 1), captions, metric), abs=1e-5)
    with pytest.raises(UnsupportedSpecError, match=r"got shape \(2, 2, 16, 16\)"):
        clip_score(torch.rand(2, 2, 16, 16), captions, metric)
    with pytest.raises(UnsupportedSpecError, match="conditioning is 'class'.*clip_dir=None"):
        clip_metric(load_model("tiny_dit"), str(clip_dir))
