"""Real-image FID reference sets of the paper's models (COCO-2017 val, ImageNet val), read from a local
folder: `$QSD_FID_REF_DIR_<NAME>` (e.g. `QSD_FID_REF_DIR_COCO2017_VAL`), else
`$QSD_MODELS_DIR/fid_reference/<name>/`. Nothing is downloaded. Images are resized to 299×299 (the FID
Inception's input) as uint8 once, when the reference statistics are first computed and cached."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from qsd.errors import ModelNotAvailableError
from qsd.metrics.inception import clean_resize

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def reference_dir(name: str) -> Path:
    env = f"QSD_FID_REF_DIR_{name.upper().replace('-', '_')}"
    candidates = [Path(os.environ[env])] if os.environ.get(env) else []
    if os.environ.get("QSD_MODELS_DIR"):
        candidates.append(Path(os.environ["QSD_MODELS_DIR"]) / "fid_reference" / name)
    for path in candidates:
        if path.is_dir() and any(p.suffix.lower() in EXTENSIONS for p in path.iterdir()):
            return path
    looked = ", ".join(str(p) for p in candidates) or "nowhere (neither variable is set)"
    raise ModelNotAvailableError(
        f"FID reference images {name!r} not found; looked in {looked}. Put the images ({', '.join(EXTENSIONS)}) "
        f"in a folder and set {env}=<folder> or QSD_MODELS_DIR (then <QSD_MODELS_DIR>/fid_reference/{name}/)."
    )


def load_reference_images(name: str) -> torch.Tensor:
    """Every image of reference set `name` as uint8 [N, 3, 299, 299]."""
    from PIL import Image

    files = sorted(p for p in reference_dir(name).iterdir() if p.suffix.lower() in EXTENSIONS)
    out = torch.empty(len(files), 3, 299, 299, dtype=torch.uint8)
    for i, file in enumerate(files):
        with Image.open(file) as image:
            pixels = torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1)[None]
        out[i] = (clean_resize(pixels) + 0.5).clamp(0, 255).to(torch.uint8)[0]
    return out
