"""The one stage skeleton: StageSettings.effective (resolve, then the one smoke rule) and the one way to make a
model's SamplingProtocol."""

import dataclasses
import json

import pytest

from qsd import sampling
from qsd.errors import InvalidSettingError, SettingsMismatchError
from qsd.models import get_entry
from qsd.sampling import SamplingProtocol
from qsd.stages import (
    kernels_and_export,
    label_configs,
    multiquantizer,
    smoke_value,
    train_denoisers,
    train_predictor,
)

STAGES = (train_denoisers, multiquantizer, label_configs, train_predictor, kernels_and_export)


def test_the_smoke_rule_caps_numbers_and_replaces_the_rest():
    assert smoke_value(256, 32) == 32 and smoke_value(16, 32) == 16, "numbers are capped, never raised"
    assert smoke_value(None, 8) == 8, "'None = the model's value' becomes the cap"
    assert smoke_value(True, False) is False and smoke_value(False, True) is True, "flags are replaced"
    assert smoke_value((1.0, 1.5, 2.0), (1.0,)) == (1.0,)


@pytest.mark.parametrize("stage", STAGES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_stage_settings_shrink_only_in_smoke_runs(stage):
    full, smoke = stage.Settings().effective(), stage.Settings(smoke=True).effective()
    assert stage.Settings.SMOKE, "each stage says what a smoke run shrinks"
    for name, value in stage.Settings.SMOKE.items():
        assert getattr(smoke, name) == smoke_value(getattr(full, name), value)
    untouched = {f.name for f in dataclasses.fields(full)} - set(stage.Settings.SMOKE) - {"smoke"}
    assert all(getattr(full, n) == getattr(smoke, n) for n in untouched)
    assert full.effective() == full, "effective settings are a fixed point (what settings.json records)"


def test_none_means_the_models_protocol():
    steps = get_entry("tiny_pixart").sampler.steps
    assert label_configs.Settings(steps=None).effective().steps == steps
    assert label_configs.Settings(steps=5).effective().steps == 5
    assert multiquantizer.Settings().effective().damage_steps == steps
    trained = train_denoisers.Settings(model_id="tiny_dit").effective()
    assert trained.train_steps == train_denoisers.TRAIN_STEPS["tiny_dit"]


@pytest.mark.parametrize("bf16_units, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_compute_dtype_is_the_cpus_native_one_and_settings_record_it(monkeypatch, bf16_units, expected):
    monkeypatch.setattr(sampling, "cpu_computes_bfloat16", lambda: bf16_units)
    for stage in (train_denoisers, multiquantizer, label_configs):
        assert stage.Settings().compute_dtype == "auto"
        assert stage.Settings().effective().compute_dtype == expected, "settings.json records the resolved dtype"
        assert stage.Settings(compute_dtype="bfloat16").effective().compute_dtype == "bfloat16", "a named one stays"
    with pytest.raises(InvalidSettingError, match="'auto'"):
        SamplingProtocol(compute_dtype="auto")


def test_sampling_protocol_for_model_takes_the_entry_and_overrides():
    entry = get_entry("tiny_sd")
    protocol = SamplingProtocol.for_model(entry, n_images=12, seed=3, steps=None)
    assert (protocol.steps, protocol.guidance) == (entry.sampler.steps, entry.sampler.guidance)
    assert (protocol.n_images, protocol.seed) == (12, 3)
    assert SamplingProtocol.for_model(entry, guidance=2.0, steps=4).guidance == 2.0
    with pytest.raises(InvalidSettingError, match="compute_dtype"):
        SamplingProtocol.for_model(entry, compute_dtype="float8")


def test_predictor_stage_settings_are_checked_and_name_their_runs():
    with pytest.raises(InvalidSettingError, match="loss"):
        train_predictor.Settings(loss="ndcg")
    with pytest.raises(InvalidSettingError, match="readout"):
        train_predictor.Settings(readout="max")
    with pytest.raises(InvalidSettingError, match="kinds"):
        train_predictor.Settings(kinds=("randoms",))
    settings = train_predictor.Settings(lambda_bits=10.0)
    assert settings.targets()["paper"].evaluate({"fid": [30.0], "avg_bits": [3.5]}).tolist() == [-65.0]
    assert settings.variants()[:2] == [("paper", "hybrid", "anchors"), ("fid", "hybrid", "anchors")]
    assert len(settings.variants()) == 2 + 3 + 1
    assert len(train_predictor.Settings(compare_losses=False, compare_readout=False).variants()) == 2


def test_a_setting_added_after_a_run_was_saved_differs_only_away_from_its_default(tmp_path, monkeypatch):
    """A run folder saved before `space` existed re-runs at the default space, and refuses another one."""
    monkeypatch.setenv("QSD_ROOT", str(tmp_path))
    settings = multiquantizer.Settings(model_id="tiny_pixart", run_id="old")
    folder = settings.output_dir(multiquantizer.STAGE)
    saved = dataclasses.asdict(settings)
    del saved["space"]
    (folder / "settings.json").write_text(json.dumps(saved))
    assert settings.output_dir(multiquantizer.STAGE) == folder
    with pytest.raises(SettingsMismatchError, match="space"):
        dataclasses.replace(settings, space="extended").output_dir(multiquantizer.STAGE)
    labelled = label_configs.Settings(model_id="tiny_pixart", run_id="old").effective()
    folder = labelled.output_dir(label_configs.STAGE)
    saved = dataclasses.asdict(labelled)
    del saved["design"], saved["test_configs"]
    (folder / "settings.json").write_text(json.dumps(saved))
    assert labelled.design == "paper", "None resolves to the paper space's own design"
    assert labelled.output_dir(label_configs.STAGE) == folder
    with pytest.raises(SettingsMismatchError, match="design"):
        dataclasses.replace(labelled, design="stratified").output_dir(label_configs.STAGE)
    with pytest.raises(InvalidSettingError, match="extended"):
        multiquantizer.Settings(space="wide")
    with pytest.raises(InvalidSettingError, match="stratified"):
        label_configs.Settings(design="latin")
