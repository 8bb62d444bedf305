"""Stage 06's saved rows: read back only when measured under the same run record and the same row dependencies."""

import torch

from qsd.stages import final_comparison as stage


class CountingLabeller:
    """Scores every model alike and counts how often it was asked (what a re-measurement costs)."""

    def __init__(self) -> None:
        self.calls = 0

    def seed_scores(self, noise_seeds, model=None, keep_images=0):
        self.calls += 1
        return {"fid_mean": 1.0, "fid_std": 0.0, "fid_seeds": [1.0] * noise_seeds, "sample_mse": 0.0}, \
            torch.zeros(keep_images, 1, 2, 2)


def context(tmp_path, labeller) -> stage.Context:
    settings = stage.Settings(model_id="tiny_pixart", noise_seeds=1, grid_images=2)
    return stage.Context(settings, tmp_path, None, None, None, labeller, 8, {"settings": {}, "protocol": {}})


def test_a_row_is_measured_again_when_what_it_depends_on_changes(tmp_path):
    labeller = CountingLabeller()
    run = context(tmp_path, labeller)
    build = lambda: (None, {"family": "baseline"})  # noqa: E731
    first = stage.measure(run, "RTN W4A6", build, {"rtn": {"keep_first_last": True}})
    again = stage.measure(run, "RTN W4A6", build, {"rtn": {"keep_first_last": True}})
    assert labeller.calls == 1 and again == first
    stage.measure(run, "RTN W4A6", build, {"rtn": {"keep_first_last": False}})  # the method's settings changed
    assert labeller.calls == 2
    stage.measure(run, "RTN W4A6", build, {"rtn": {"keep_first_last": False}})
    assert labeller.calls == 2
    other_run = context(tmp_path, labeller)
    other_run.record = {"settings": {"noise_seeds": 3}, "protocol": {}}
    stage.measure(other_run, "RTN W4A6", build, {"rtn": {"keep_first_last": False}})
    assert labeller.calls == 3
