"""How stages meet (`qsd.run_folder`) and what a re-run may do to a run folder: one "run notebook NN first" error,
bad settings refused with their accepted range, an infeasible budget refused before anything is written, a re-run
with result-changing settings refused and the files left as they were, and stage 06's rows independent of
`progress` and of budgets added later.

The run-folder tests work on a copy of the smoke run's folder (`tests/test_paper_claims.py::smoke_outputs` makes it
when missing), so they never touch what other tests read."""

import hashlib
import shutil
import uuid
from pathlib import Path

import pytest
from test_paper_claims import RUN_DIR, smoke_model_id, smoke_outputs  # noqa: F401 (a fixture)

from qsd.errors import InfeasibleBudgetError, InvalidSettingError, MissingFileError, SettingsMismatchError
from qsd.models import load_model
from qsd.row_cache import RowCache
from qsd.run_folder import CONFIGS, LABELS, SCORES, STAGES, RunFolder
from qsd.stages import build_configs, final_comparison, label_configs, sensitivity_insights


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def copied_run(smoke_outputs):  # noqa: F811
    """A copy of the smoke run under a fresh run_id (stages 00-07 done, smoke settings)."""
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    target = RUN_DIR.parent / run_id
    shutil.copytree(RUN_DIR, target)
    yield RunFolder(smoke_model_id(), run_id)
    shutil.rmtree(target, ignore_errors=True)


def test_a_missing_upstream_file_names_the_notebook_to_run_first():
    run = RunFolder("tiny_pixart", f"absent-{uuid.uuid4().hex[:8]}")
    for stage, read in ((LABELS, run.labels), (SCORES, run.scores), (CONFIGS, run.frontier)):
        with pytest.raises(MissingFileError, match=f"run notebooks/{stage}.ipynb with model_id='tiny_pixart'"):
            read()
    assert not run.path(STAGES[0]).parent.exists(), "reading creates no folder"


def test_bad_settings_fail_with_the_accepted_range():
    with pytest.raises(InvalidSettingError, match=r"n_configs = -1 .* in 0 … ∞"):
        label_configs.Settings(n_configs=-1)
    with pytest.raises(InvalidSettingError, match=r"budgets = \(\) .* non-empty"):
        build_configs.Settings(budgets=())
    with pytest.raises(InvalidSettingError, match=r"noise_seeds = 0 .* in 1 … ∞"):
        final_comparison.Settings(noise_seeds=0)
    with pytest.raises(InvalidSettingError, match=r"budgets = \(3.5, 17.0\) .* in 1 … 16"):
        build_configs.Settings(budgets=(3.5, 17.0))


def test_stage_05_with_an_infeasible_budget_fails_before_writing_naming_the_lowest(copied_run):
    before = snapshot(copied_run.path(STAGES[0]).parent)
    with pytest.raises(InfeasibleBudgetError, match=r"lowest feasible budget .*: 3\.\d{3} average bits") as error:
        build_configs.run(build_configs.Settings(model_id=copied_run.model_id, run_id=copied_run.run_id,
                                                 budgets=(1.0,), overwrite=True))  # a smoke run takes its own budgets
    lowest = float(str(error.value).split("budget of run")[1].split(": ")[1].split(" ")[0])
    assert 3.0 < lowest < 3.5
    assert snapshot(copied_run.path(STAGES[0]).parent) == before, "nothing in the run folder changed"


def test_stage_06_and_07_refuse_a_budget_below_every_built_one(copied_run):
    lowest = copied_run.frontier()["budget"].min()
    with pytest.raises(InfeasibleBudgetError, match=f"its lowest is {lowest}"):
        copied_run.frontier_config(lowest - 0.05)
    config, row = copied_run.frontier_config(lowest + 0.01)
    assert row["budget"] == lowest and len(config)


def test_a_rerun_with_result_changing_settings_refuses_and_leaves_the_files(copied_run):
    folder = copied_run.path(SCORES)
    before = snapshot(folder)
    settings = sensitivity_insights.Settings(model_id=copied_run.model_id, run_id=copied_run.run_id, smoke=True,
                                             target="fid")
    with pytest.raises(SettingsMismatchError, match=r"target: 'paper' -> 'fid'[\s\S]*run_id='test-.*-2'"):
        sensitivity_insights.run(settings)
    assert snapshot(folder) == before
    same = sensitivity_insights.Settings(model_id=copied_run.model_id, run_id=copied_run.run_id, smoke=True)
    assert same.effective().output_dir(SCORES) == folder, "the same settings pass"
    louder = sensitivity_insights.Settings(model_id=copied_run.model_id, run_id=copied_run.run_id, smoke=True,
                                           progress=True)
    assert louder.output_dir(SCORES) == folder, "progress changes no result"
    assert snapshot(folder) == before


def test_stage_06_rows_depend_on_neither_progress_nor_other_budgets(copied_run):
    """The plan's rows (and what each depends on) under progress on/off and with one more budget: every row of the
    smaller plan keeps its dependencies, so none of them is measured again."""
    model = load_model(copied_run.model_id)
    mq = copied_run.multiquantizer(model.denoiser)

    def plan(**changes) -> dict[str, dict]:
        settings = final_comparison.Settings(model_id=copied_run.model_id, run_id=copied_run.run_id, smoke=True,
                                             **changes).effective()
        context = final_comparison.Context(settings, copied_run.path(STAGES[6]), model, mq, None, None, 8, {},
                                           RowCache(copied_run.path(STAGES[6]) / "rows"))
        configs = final_comparison.stage_configs(settings, copied_run)
        return {name: depends_on for name, _, depends_on in final_comparison.plan(context, configs, lambda: None)}

    built = copied_run.frontier()["budget"].tolist()
    top = {"budgets": (max(built),), "w3x_budget": max(built)}
    quiet, loud = plan(progress=False, **top), plan(progress=True, **top)
    assert quiet == loud
    more = plan(budgets=tuple(built), w3x_budget=max(built))
    distinct = copied_run.frontier()["name"].nunique()  # budgets with one best configuration share rows
    assert set(quiet) <= set(more) and (distinct == 1 or set(quiet) < set(more))
    assert all(more[name] == deps for name, deps in quiet.items())
