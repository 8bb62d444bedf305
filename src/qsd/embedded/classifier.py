"""The in-domain feature network of the embedded defaults: a small CNN digit classifier. Its 128-d
penultimate features replace Inception-v3 in FID (`qsd.metrics.fid`) and its predictions give prompt
accuracy (`qsd.metrics.prompt_accuracy`), the defaults' analogue of CLIP score.

Trained on the `heldout` digits only (random ±1 px shifts as augmentation) and evaluated on the 4,000
`train` digits it never saw, so it is independent of the denoisers' training data.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from qsd.embedded import digits
from qsd.errors import CorruptFileError, ModelNotAvailableError
from qsd.files import atomic_write
from qsd.metrics.features import FeatureBackend
from qsd.paths import project_root

FEATURE_DIM = 128


class DigitClassifier(nn.Module):
    """Conv32-Conv32-Pool-Conv64-Pool-FC128-FC10 on 1×16×16 images in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * 4 * 4, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, digits.N_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class ClassifierFeatures(nn.Module):
    """The `feature=` module for torchmetrics' FrechetInceptionDistance (with `normalize=True` a custom
    extractor receives the float images [B, 1, 16, 16] in [0, 1] unchanged)."""

    def __init__(self, classifier: DigitClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images.float())


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    dx, dy = torch.randint(-1, 2, (2,), generator=generator).tolist()
    return torch.roll(F.pad(images, (1, 1, 1, 1)), shifts=(dy, dx), dims=(2, 3))[..., 1:-1, 1:-1]


def train_classifier(epochs: int = 40, batch_size: int = 64, seed: int = 0) -> tuple[DigitClassifier, dict]:
    """Train on `heldout`, measure on `train`; returns the model (eval mode) and its record."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = digits.load_digits("heldout")
    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(images) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(model(_shift(images[batch], generator)), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    test_images, test_labels = digits.load_digits("train")
    with torch.no_grad():
        accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
    return model, {"epochs": epochs, "batch_size": batch_size, "seed": seed, "train_split": "heldout",
                   "test_split": "train", "test_accuracy": accuracy}


def classifier_path(directory: Path | None = None) -> Path:
    return (directory or project_root() / "data" / "checkpoints") / "digit_classifier.safetensors"


def save_classifier(model: DigitClassifier, path: Path, record: dict) -> None:
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"qsd": json.dumps(record, sort_keys=True)}))


def load_classifier(directory: Path | None = None) -> DigitClassifier:
    path = classifier_path(directory)
    if not path.is_file():
        raise ModelNotAvailableError(f"no digit classifier at {path}; it ships in data/checkpoints/, or run "
                                     f"notebooks/00_train_denoisers.ipynb to train it")
    model = DigitClassifier()
    try:
        model.load_state_dict(load_file(path))
    except Exception as exc:
        raise CorruptFileError(f"{path} is not a digit-classifier checkpoint: {exc}") from exc
    return model.eval()


def feature_backend(directory: Path | None = None) -> FeatureBackend:
    """FID on the classifier's features against the `train` digits, and prompt accuracy by its predictions."""
    classifier = load_classifier(directory)
    return FeatureBackend(ClassifierFeatures(classifier), (1, digits.RESOLUTION, digits.RESOLUTION),
                          lambda: digits.load_digits("train")[0], classifier)


def classifier_record(directory: Path | None = None) -> dict:
    with safe_open(classifier_path(directory), "pt") as f:
        return json.loads((f.metadata() or {}).get("qsd", "{}"))
