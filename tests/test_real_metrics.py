import numpy as np
import pytest
import tiny_fixtures
import torch
from PIL import Image
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from qsd.errors import CorruptFileError, ModelNotAvailableError, UnsupportedSpecError
from qsd.metrics.clip_score import CLIP_DIR_ENV, clip_score, clip_score_metric
from qsd.metrics.inception import WEIGHTS_ENV, FIDInceptionV3, clean_resize, load_fid_inception

# The conv units of pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID Inception), block by block.
A = ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool"]
B = ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]
C = ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", *(f"branch7x7dbl_{i}" for i in range(1, 6)),
     "branch_pool"]
D = ["branch3x3_1", "branch3x3_2", *(f"branch7x7x3_{i}" for i in range(1, 5))]
E = ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
     "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]
BLOCKS = {"Mixed_5b": A, "Mixed_5c": A, "Mixed_5d": A, "Mixed_6a": B, "Mixed_6b": C, "Mixed_6c": C,
          "Mixed_6d": C, "Mixed_6e": C, "Mixed_7a": D, "Mixed_7b": E, "Mixed_7c": E}
UNITS = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
         *(f"{block}.{unit}" for block, units in BLOCKS.items() for unit in units)]
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
STANDARD_KEYS = {f"{u}.conv.weight" for u in UNITS} | {f"{u}.bn.{p}" for u in UNITS for p in BN}
STANDARD_KEYS |= {"fc.weight", "fc.bias"}


@pytest.fixture(autouse=True)
def _no_qsd_env(monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(CLIP_DIR_ENV, raising=False)


def random_inception(seed: int = 0) -> FIDInceptionV3:
    """Random weights that keep activations O(1) through the 94 conv units (default init shrinks them)."""
    torch.manual_seed(seed)
    net = FIDInceptionV3()
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net.eval().requires_grad_(False)


def test_architecture_has_the_standard_keys_and_shapes():
    state = FIDInceptionV3().state_dict()
    assert set(state) == STANDARD_KEYS and len(state) == 566
    shapes = {"Conv2d_1a_3x3": (32, 3, 3, 3), "Conv2d_4a_3x3": (192, 80, 3, 3), "Mixed_5b.branch_pool": (32, 192, 1, 1),
              "Mixed_6a.branch3x3": (384, 288, 3, 3), "Mixed_6b.branch7x7_2": (128, 128, 1, 7),
              "Mixed_6e.branch7x7dbl_5": (192, 192, 1, 7), "Mixed_7a.branch3x3_2": (320, 192, 3, 3),
              "Mixed_7b.branch3x3dbl_1": (448, 1280, 1, 1), "Mixed_7c.branch_pool": (192, 2048, 1, 1)}
    shapes = {f"{unit}.conv.weight": shape for unit, shape in shapes.items()} | {"fc.weight": (1008, 2048)}
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    # torchvision's Inception-v3 has 27,161,264 parameters; minus its auxiliary head (3,326,696) and with
    # 1,008 instead of 1,000 classes (+8 × 2,049) that leaves 23,850,960
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 23_850_960


def test_weights_round_trip_and_loading_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelNotAvailableError) as info:
        load_fid_inception()
    assert WEIGHTS_ENV in str(info.value) and "pt_inception-2015-12-05-6726825d.pth" in str(info.value)
    saved = random_inception(seed=1).state_dict()
    path = tmp_path / "pt_inception.pth"
    torch.save(saved, path)
    FIDInceptionV3().load_state_dict(torch.load(path, weights_only=True), strict=True)
    # files written before BatchNorm counted its batches lack num_batches_tracked; they load too
    old_format = tmp_path / "old.pth"
    torch.save({k: v for k, v in saved.items() if not k.endswith("num_batches_tracked")}, old_format)
    monkeypatch.setenv(WEIGHTS_ENV, str(old_format))
    loaded = load_fid_inception()
    state = loaded.state_dict()
    assert not loaded.training and all(torch.equal(state[k], saved[k]) for k in STANDARD_KEYS)
    wrong = tmp_path / "wrong.pth"  # e.g. torchvision's ImageNet Inception, which has an auxiliary head
    torch.save({"AuxLogits.fc.weight": torch.zeros(1)}, wrong)
    with pytest.raises(CorruptFileError, match="AuxLogits"):
        load_fid_inception(wrong)
    with pytest.raises(ModelNotAvailableError, match="missing.pth does not exist"):
        load_fid_inception(tmp_path / "missing.pth")


def test_clean_resize_matches_pil_bicubic_in_float():
    rng = np.random.default_rng(0)
    for h, w in ((64, 64), (37, 50), (400, 400)):
        img = rng.integers(0, 256, (1, 3, h, w), dtype=np.uint8)
        ours = clean_resize(torch.from_numpy(img))[0].numpy()
        pil = np.stack([np.asarray(Image.fromarray(img[0, c].astype(np.float32), mode="F")
                                   .resize((299, 299), Image.BICUBIC)).clip(0, 255) for c in range(3)])
        assert np.abs(ours - pil).max() < 0.01
    with pytest.raises(UnsupportedSpecError, match=r"\[0, 1\]"):
        clean_resize(torch.rand(1, 3, 8, 8) * 2 - 1)


def test_uint8_and_unit_float_inputs_agree():
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert torch.allclose(clean_resize(images), clean_resize(images.float() / 255), atol=1e-3)
    assert torch.equal(clean_resize(images[:, :1]), clean_resize(images[:, :1].expand(-1, 3, -1, -1)))


def test_works_as_torchmetrics_fid_feature():
    net, seen = random_inception(), []
    net.register_forward_hook(lambda module, args, out: seen.append(out))
    fid = FrechetInceptionDistance(feature=net, normalize=True)  # passes floats in [0, 1] to a custom network
    assert not seen, "num_features should spare torchmetrics its dummy forward pass"
    fid.update(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8).float() / 255, real=True)
    (features,) = seen
    assert features.shape == (2, 2048) and torch.isfinite(features).all() and features.std() > 1e-3
    assert int(fid.real_features_num_samples) == 2
    assert torch.allclose(fid.real_features_sum, features.sum(0).double())


def test_clip_score_matches_cosine_of_local_clip(tmp_path, monkeypatch):
    with pytest.raises(ModelNotAvailableError, match=CLIP_DIR_ENV):
        clip_score_metric()
    with pytest.raises(ModelNotAvailableError, match="not a CLIP model directory"):
        clip_score_metric(tmp_path)
    directory = tiny_fixtures.tiny_clip_dir(tmp_path / "clip")
    monkeypatch.setenv(CLIP_DIR_ENV, str(directory))
    metric = clip_score_metric()
    images, captions = torch.rand(2, 3, 20, 24), ["a cat on the table", "two dogs"]
    score = clip_score(images, captions, metric)

    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(directory), CLIPProcessor.from_pretrained(directory)
    pixels = processor(images=list((images * 255).round().to(torch.uint8)), return_tensors="pt")["pixel_values"]
    text = processor(text=captions, return_tensors="pt", padding=True)
    with torch.no_grad():
        image_emb = model.get_image_features(pixels).pooler_output
        text_emb = model.get_text_features(text["input_ids"], text["attention_mask"]).pooler_output
    expected = max(0.0, 100 * torch.cosine_similarity(image_emb, text_emb).mean().item())
    assert score == pytest.approx(expected, abs=1e-4)
    with pytest.raises(UnsupportedSpecError, match="captions"):
        clip_score(images, captions[:1], metric)
