"""Stage 06's saved rows (`qsd.row_cache`): read back only when measured under what that row alone depends on, so a
re-run with other `progress` or one more budget re-measures nothing that did not change."""

import json

import torch

from qsd.row_cache import RowCache
from qsd.stages import final_comparison as stage


class CountingLabeller:
    """Scores every model alike and counts how often it was asked (what a re-measurement costs)."""

    def __init__(self) -> None:
        self.calls = 0

    def seed_scores(self, noise_seeds, model=None, keep_images=0):
        self.calls += 1
        return {"fid_mean": 1.0, "fid_std": 0.0, "fid_seeds": [1.0] * noise_seeds, "sample_mse": 0.0}, \
            torch.zeros(keep_images, 1, 2, 2)


def context(tmp_path, labeller, **settings) -> stage.Context:
    settings = stage.Settings(**{"model_id": "tiny_pixart", "noise_seeds": 1, "grid_images": 2, **settings})
    common = {"protocol": {"steps": 8}, "noise_seeds": settings.noise_seeds, "grid_images": settings.grid_images}
    return stage.Context(settings, tmp_path, None, None, None, labeller, 8, common, RowCache(tmp_path / "rows"))


def test_a_row_is_measured_again_when_what_it_depends_on_changes(tmp_path):
    labeller = CountingLabeller()
    run = context(tmp_path, labeller)
    build = lambda: (None, {"family": "baseline"})  # noqa: E731
    first = stage.measure(run, "RTN W4A6", build, {"rtn": {"keep_first_last": True}})
    again = stage.measure(run, "RTN W4A6", build, {"rtn": {"keep_first_last": True}})
    assert labeller.calls == 1 and again == first
    assert json.loads(run.rows.path("RTN W4A6").read_text())["depends_on"]["rtn"] == {"keep_first_last": True}
    stage.measure(run, "RTN W4A6", build, {"rtn": {"keep_first_last": False}})  # the method's settings changed
    assert labeller.calls == 2
    stage.measure(run, "RTN W4A6", build, {"rtn": {"keep_first_last": False}})
    assert labeller.calls == 2
    more_seeds = context(tmp_path, labeller, noise_seeds=3)  # what every row depends on changed
    stage.measure(more_seeds, "RTN W4A6", build, {"rtn": {"keep_first_last": False}})
    assert labeller.calls == 3


def test_progress_and_an_added_budget_re_measure_no_row_that_did_not_change(tmp_path):
    """The rows of a whole plan: a re-run with `progress` switched and one more Qua²SeDiMo configuration measures
    only that configuration's rows."""
    labeller = CountingLabeller()

    def plan(run: stage.Context, configs: list[str]) -> list[tuple[str, object, dict]]:
        build = lambda: (None, {"family": "row"})  # noqa: E731
        rows = [("float", build, {})] + [(f"RTN W4A{a}", build, {"rtn": {}, "a_bits": a}) for a in (8, 6)]
        return rows + [(f"Qua²SeDiMo {c}A{a}", build, {"config": c, "a_bits": a}) for c in configs for a in (16, 6)]

    first = context(tmp_path, labeller, progress=True, budgets=(4.0, 3.7))
    for name, build, depends_on in plan(first, ["W4.00", "W3.70"]):
        stage.measure(first, name, build, depends_on)
    assert labeller.calls == 3 + 4
    quiet = context(tmp_path, labeller, progress=False, budgets=(4.0, 3.7, 3.4))
    for name, build, depends_on in plan(quiet, ["W4.00", "W3.70", "W3.40"]):
        stage.measure(quiet, name, build, depends_on)
    assert labeller.calls == 3 + 4 + 2, "only the added configuration's two rows are new"
