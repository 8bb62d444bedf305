import subprocess
import sys

import pytest
import tiny_fixtures
import torch
from tiny_fixtures import CAPTIONS, load_tiny_paper

from qsd.errors import CorruptFileError, ModelNotAvailableError, UnsupportedSpecError
from qsd.models import paper
from qsd.models.base import SamplerSettings

ENTRIES = {entry.model_id: entry for entry in paper.ENTRIES}
SCHEDULERS = {"pixart_alpha": "DPMSolverMultistepScheduler", "pixart_sigma": "DPMSolverMultistepScheduler",
              "hunyuan_dit": "DDPMScheduler", "sdxl": "EulerDiscreteScheduler", "sdv15": "PNDMScheduler",
              "dit_xl2": "DPMSolverMultistepScheduler"}  # the tiny DiT ships DDIM: the protocol replaces it


@pytest.fixture(autouse=True)
def _no_qsd_env(monkeypatch):
    for name in (paper.MODELS_DIR_ENV, paper.CAPTIONS_ENV, *(paper.model_dir_env(m) for m in ENTRIES)):
        monkeypatch.delenv(name, raising=False)


def test_protocol_settings_follow_the_paper_scripts():
    got = {m: (e.sampler.resolution, e.sampler.steps, e.sampler.guidance, e.conditioning, e.fid_reference)
           for m, e in ENTRIES.items()}
    assert got == {
        "pixart_alpha": (512, 20, 4.5, "text", "coco2017-val"),
        "pixart_sigma": (1024, 20, 4.5, "text", "coco2017-val"),
        "hunyuan_dit": (1024, 50, 5.0, "text", "coco2017-val"),
        "sdxl": (512, 40, 5.0, "text", "coco2017-val"),
        "sdv15": (512, 50, 7.5, "text", "coco2017-val"),
        "dit_xl2": (512, 250, 4.0, "class", "imagenet-val"),
    }
    assert all(e.loader is paper.load_paper for e in ENTRIES.values())


@pytest.mark.parametrize("model_id", list(ENTRIES))
def test_tiny_copy_loads_conditions_predicts_and_decodes(model_id, tmp_path):
    model = load_tiny_paper(model_id, tmp_path)
    assert model.latent_shape == (4, 8, 8) and model.entry.sampler.resolution == 16
    prompts, targets = model.protocol_prompts(2)
    if model.entry.conditioning == "class":
        assert prompts == [0, 1] and targets.tolist() == [0, 1]
    else:
        assert prompts == CAPTIONS[:2] and targets is None
    cond, null = model.condition(prompts[:1]), model.null_condition(1)
    assert cond.keys() == null.keys() and all(cond[k].shape == null[k].shape for k in cond)
    scheduler = model.make_scheduler()
    assert type(scheduler).__name__ == SCHEDULERS[model_id] and scheduler.config.prediction_type == "epsilon"
    scheduler.set_timesteps(2)
    t, x = scheduler.timesteps[0], torch.randn(1, *model.latent_shape)
    # one classifier-free-guidance call as the sampler makes it: [unconditional, conditional]
    eps = model.predict_noise(torch.cat([x, x]), torch.stack([t, t]),
                              {k: torch.cat([null[k], cond[k]]) for k in cond})
    assert eps.shape == (2, 4, 8, 8) and torch.isfinite(eps).all()
    assert not torch.allclose(eps[0], eps[1]), "the condition does not reach the denoiser"
    images = model.decode(x)
    assert images.shape == (1, 3, 16, 16) and images.min() >= 0 and images.max() <= 1 and images.std() > 0


def test_pixart_caption_length_and_lowercasing(tmp_path):
    alpha, sigma = load_tiny_paper("pixart_alpha", tmp_path), load_tiny_paper("pixart_sigma", tmp_path)
    assert alpha.condition(["a cat"])["encoder_hidden_states"].shape[1] == 120
    assert sigma.condition(["a cat"])["encoder_hidden_states"].shape[1] == 300
    upper, lower = alpha.condition(["  A CAT on the Table "]), alpha.condition(["a cat on the table"])
    assert torch.equal(upper["encoder_attention_mask"], lower["encoder_attention_mask"])
    assert torch.allclose(upper["encoder_hidden_states"], lower["encoder_hidden_states"])
    assert lower["encoder_attention_mask"].sum() == 6  # five words and </s>


def test_sdxl_null_condition_is_zero_and_time_ids_are_the_image_size(tmp_path):
    model = load_tiny_paper("sdxl", tmp_path)
    null, cond = model.null_condition(2), model.condition(CAPTIONS[:2])
    assert not null["encoder_hidden_states"].any() and not null["text_embeds"].any()
    assert cond["encoder_hidden_states"].shape == (2, 77, 32) and cond["text_embeds"].abs().sum() > 0
    assert null["time_ids"].tolist() == cond["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2


def test_v_prediction_is_returned_as_epsilon(tmp_path):
    x0, noise, alpha_bar = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0.9, 0.5, 0.01])
    a = alpha_bar.reshape(-1, 1, 1, 1)
    x_t, v = a.sqrt() * x0 + (1 - a).sqrt() * noise, a.sqrt() * noise - (1 - a).sqrt() * x0
    assert torch.allclose(paper.epsilon_from_v(v, x_t, alpha_bar), noise, atol=1e-5)

    model = load_tiny_paper("hunyuan_dit", tmp_path)  # its tiny scheduler is v-prediction, like the real one
    assert model.prediction_type == "v_prediction"
    cond, t = model.condition(CAPTIONS[:1]), torch.tensor([500])
    raw = model.forward(x_t[:1], t.float(), cond)
    expected = paper.epsilon_from_v(raw, x_t[:1], model.make_scheduler(sampler=False).alphas_cumprod[t])
    assert torch.allclose(model.predict_noise(x_t[:1], t, cond), expected, atol=1e-6)


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    entry = ENTRIES["pixart_alpha"]
    with pytest.raises(ModelNotAvailableError) as info:
        paper.load_paper(entry)
    message = str(info.value)
    for needle in ("pixart_alpha", "QSD_MODEL_DIR_PIXART_ALPHA", "QSD_MODELS_DIR", "root", "transformer/config.json",
                   "vae/config.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                   "tokenizer/tokenizer_config.json", "PixArt-alpha/PixArt-XL-2-512x512"):
        assert needle in message
    monkeypatch.setenv("QSD_MODEL_DIR_PIXART_ALPHA", str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotAvailableError, match="nowhere.*QSD_MODEL_DIR_PIXART_ALPHA"):
        paper.load_paper(entry)


def test_missing_component_is_named(tmp_path):
    root = tiny_fixtures.tiny_paper_dir("sdv15", tmp_path / "sdv15")
    (root / "vae" / "config.json").unlink()
    with pytest.raises(ModelNotAvailableError, match=r"lacks vae/config\.json"):
        paper.load_paper(ENTRIES["sdv15"], root)


def _fake_layout(directory, model_id):
    for folder, config in paper.LAYOUTS[model_id].subfolders().items():
        (directory / folder).mkdir(parents=True)
        (directory / folder / config).write_text("{}")
    return directory


def test_directory_resolution_order(tmp_path, monkeypatch):
    entry = ENTRIES["sdxl"]
    parent_copy = _fake_layout(tmp_path / "models" / "sdxl", "sdxl")
    own_copy = _fake_layout(tmp_path / "own", "sdxl")
    root_copy = _fake_layout(tmp_path / "root", "sdxl")
    monkeypatch.setenv("QSD_MODELS_DIR", str(tmp_path / "models"))
    assert paper.model_dir(entry) == parent_copy
    monkeypatch.setenv("QSD_MODEL_DIR_SDXL", str(own_copy))
    assert paper.model_dir(entry) == own_copy
    assert paper.model_dir(entry, root_copy) == root_copy
    monkeypatch.setenv("QSD_MODEL_DIR_SDXL", str(tmp_path / "typo"))  # set but wrong: no silent fall-through
    with pytest.raises(ModelNotAvailableError, match="typo"):
        paper.model_dir(entry)


def test_loads_through_environment_variable(tmp_path, monkeypatch):
    tiny_fixtures.tiny_paper_dir("dit_xl2", tmp_path / "weights" / "dit_xl2")
    monkeypatch.setenv("QSD_MODELS_DIR", str(tmp_path / "weights"))
    model = paper.load_paper(ENTRIES["dit_xl2"], sampler=SamplerSettings("dpmsolver++", 2, 4.0, 16))
    assert model.directory == tmp_path / "weights" / "dit_xl2"
    assert model.null_condition(2)["class_labels"].tolist() == [10, 10]  # tiny DiT: 10 classes + null
    assert model.protocol_prompts(12)[0][10:] == [0, 1]
    with pytest.raises(UnsupportedSpecError, match="multiple of 4"):
        paper.load_paper(ENTRIES["dit_xl2"], sampler=SamplerSettings("dpmsolver++", 2, 4.0, 18))


def test_coco_captions_lookup(tmp_path, monkeypatch):
    with pytest.raises(ModelNotAvailableError, match="QSD_COCO_CAPTIONS"):
        paper.coco_captions(2, model_directory=tmp_path)
    (tmp_path / "coco_captions.txt").write_text("first\nsecond\n")
    assert paper.coco_captions(2, model_directory=tmp_path) == ["first", "second"]
    with pytest.raises(CorruptFileError, match="holds 2 captions but 3"):
        paper.coco_captions(3, model_directory=tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("elsewhere\n\n")
    monkeypatch.setenv("QSD_COCO_CAPTIONS", str(other))
    assert paper.coco_captions(1, model_directory=tmp_path) == ["elsewhere"]
    with pytest.raises(CorruptFileError, match="blank"):
        paper.coco_captions(2)


def test_importing_models_and_metrics_does_not_import_transformers():
    code = ("import sys, qsd.models.paper, qsd.metrics.inception, qsd.metrics.clip_score; "
            "sys.exit('transformers' in sys.modules or 'diffusers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
