"""The Inception-v3 feature network of FID (Heusel et al., 2017) in plain torch, with clean-fid's preprocessing.

The paper scores every configuration with `cleanfid.fid.compute_fid` in its default "clean" mode
(research/code.md §3): images are resized to 299×299 by an antialiased bicubic filter in floating point
(Parmar et al., 2022, "On Aliased Resizing and Surprising Subtleties in GAN Evaluation"), then the 2,048
pool features of the 2015-12-05 TensorFlow Inception graph are compared. That graph's weights exist as a
torch state dict, `pt_inception-2015-12-05-6726825d.pth` (pytorch-fid's release); `FIDInceptionV3`
has exactly its module names and shapes, so the file loads with `strict=True`.

Architecture (torchvision's Inception-v3 layout, no auxiliary head), with the TF graph's deviations:
  * every conv has no bias and is followed by BatchNorm (ε = 1e-3) and ReLU;
  * the average-pool branches of Mixed_5b–5d, 6b–6e and 7b leave padding out of the average;
  * Mixed_7c's pool branch max-pools instead of averaging;
  * `fc` has 1,008 outputs (the TF graph's classes); it is part of the file, FID never uses it.

Steps of `FIDInceptionV3.forward`:
  1. uint8 images are taken as [0, 255]; floating images as [0, 1] and scaled by 255 (torchmetrics passes
     floats in [0, 1] to a custom feature network when `normalize=True`, uint8 otherwise);
  2. resize to 299×299 with `F.interpolate(mode="bicubic", antialias=True)` and clamp to [0, 255]. clean-fid
     resizes each channel with PIL's bicubic filter in float mode; torch's antialiased bicubic uses the same
     kernel (a = -0.5, support widened by the downscale factor), so the two agree up to float rounding
     (measured on uniform noise, 37×50 to 1024×1024 → 299: at most 0.003 grey levels; tested < 0.01);
  3. normalise as the TF graph does, (x - 128) / 128;
  4. Inception trunk, global average pool → [B, 2048].
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qsd.errors import CorruptFileError, ModelNotAvailableError, UnsupportedSpecError

WEIGHTS_ENV = "QSD_INCEPTION_WEIGHTS"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299
NUM_FEATURES = 2048


class ConvBN(nn.Module):
    """conv (no bias) → BatchNorm(ε=1e-3) → ReLU; state-dict keys `conv.*`, `bn.*`."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3×3 stride-1 average that ignores the zero padding (the TF graph's pooling)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):
    """35×35 block (Mixed_5b/5c/5d): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], dim=1)


class ReductionB(nn.Module):
    """35→17 grid reduction (Mixed_6a): stride-2 3×3 | 1×1→3×3→stride-2 3×3 | stride-2 max-pool."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], dim=1)


class MixedC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (Mixed_6b–6e); `c7` is the inner width."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
        dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(dbl)))
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool(x)),
        ], dim=1)


class ReductionD(nn.Module):
    """17→8 grid reduction (Mixed_7a): 1×1→stride-2 3×3 | 1×1→1×7→7×1→stride-2 3×3 | stride-2 max-pool."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], dim=1)


class MixedE(nn.Module):
    """8×8 block with split 1×3 / 3×1 outputs (Mixed_7b with average pooling, Mixed_7c with max pooling)."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], dim=1)


def clean_resize(images: torch.Tensor) -> torch.Tensor:
    """Steps 1–2: images (uint8 in [0, 255] or floating in [0, 1], 1 or 3 channels) → float32 RGB in
    [0, 255] at 299×299."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise UnsupportedSpecError(f"expected images [B, 3, H, W] (or 1 channel), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.float()
    elif images.is_floating_point():
        lo, hi = float(images.min()), float(images.max())
        if lo < 0 or hi > 1:
            raise UnsupportedSpecError(f"floating images must lie in [0, 1] (got [{lo:.3g}, {hi:.3g}]); "
                                       "pass uint8 for [0, 255] data")
        x = images.float() * 255
    else:
        raise UnsupportedSpecError(f"images must be uint8 or floating, got {images.dtype}")
    x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0, 255)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3: images → 2,048 pool features (module docstring, steps 1–4). Random-init unless
    loaded (`load_fid_inception`). Usable as `FrechetInceptionDistance(feature=...)`: `num_features` spares
    torchmetrics its dummy forward pass."""

    num_features = NUM_FEATURES

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = MixedA(192, 32)
        self.Mixed_5c = MixedA(256, 64)
        self.Mixed_5d = MixedA(288, 64)
        self.Mixed_6a = ReductionB(288)
        self.Mixed_6b = MixedC(768, 128)
        self.Mixed_6c = MixedC(768, 160)
        self.Mixed_6d = MixedC(768, 160)
        self.Mixed_6e = MixedC(768, 192)
        self.Mixed_7a = ReductionD(768)
        self.Mixed_7b = MixedE(1280, max_pool=False)
        self.Mixed_7c = MixedE(2048, max_pool=True)
        self.fc = nn.Linear(NUM_FEATURES, 1008)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Step 4 on normalised 299×299 input: pool features [B, 2048]."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = clean_resize(images.to(self.fc.weight.device))
        return self.trunk((x - 128) / 128)


def weights_path(path: str | os.PathLike | None = None) -> Path:
    """The FID Inception weight file: `path`, else `$QSD_INCEPTION_WEIGHTS`; it must exist."""
    chosen = path or os.environ.get(WEIGHTS_ENV)
    if not chosen or not Path(chosen).is_file():
        where = f"{chosen} does not exist" if chosen else f"no path given and ${WEIGHTS_ENV} is not set"
        raise ModelNotAvailableError(
            f"FID Inception weights not found ({where}). Obtain {WEIGHTS_FILE} (pytorch-fid's 'fid_weights' "
            f"GitHub release; nothing is downloaded here) and pass its path or set {WEIGHTS_ENV}=<file>."
        )
    return Path(chosen)


def load_fid_inception(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """`FIDInceptionV3` with the standard FID weights (see `weights_path`), in eval mode without gradients.
    A file written before BatchNorm counted its batches may lack `*.num_batches_tracked`; nothing else may
    be missing or extra."""
    file = weights_path(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a plain tensor state dict (e.g. clean-fid's TorchScript model)
        raise CorruptFileError(f"{file} is not a torch state dict of the FID Inception ({WEIGHTS_FILE}): {exc}") \
            from exc
    net = FIDInceptionV3()
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CorruptFileError(f"{file} does not match the FID Inception: {exc}") from exc
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CorruptFileError(f"{file} does not match the FID Inception: missing {missing[:5]} "
                               f"({len(missing)} in all), unexpected {unexpected[:5]} ({len(unexpected)} in all)")
    return net.to(device).eval().requires_grad_(False)
