"""Training one fold's predictor, predicting with it, saving and loading it (paper §3.3; code.md §5 "Training").

AdamW with a cosine learning-rate schedule stepped per epoch, gradient-norm clipping, as in the released code,
but with one backward per step (the original called it twice, stepping on clipped + unclipped gradients) and the
LambdaRank gradients kept (`qsd.predictor.lambdarank`). Targets are standardised with the training set's mean and
std (the original mapped them to a 0–50 "relevance" clamped at the 20th percentile, tying the bottom fifth).
Batches are balanced (sizes differ by at most one), so no step ranks a leftover of one or two graphs.
Training and prediction run on one intra-op thread (restored afterwards): the graphs' tensors are too small to
gain from more, and on a shared 2-core machine a second thread spins against the first (measured under load: 5
epochs at the default dataset's size took 3.7 s on one thread, 56 s on two). It also makes results independent
of the caller's thread count.

The paper trains 10,000 epochs at lr 1e-3 on a GPU; `TrainSettings` defaults to 50 epochs at lr 3e-3, what
converges on the default dataset's size within half a minute on a CPU (measurements in its docstring).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from qsd.errors import CorruptFileError, InvalidSettingError, MissingFileError
from qsd.files import atomic_write
from qsd.predictor.losses import check_loss_kind, predictor_loss
from qsd.predictor.model import GraphPredictor, PredictorSettings, l1_norms, settings_from_json

FILE_FORMAT = "qsd.predictor/1"
"""Marks a saved predictor: safetensors weights, everything else JSON in the file's metadata under "qsd"."""
PREDICT_BATCH = 256


@dataclass(frozen=True)
class TrainSettings:
    """How one fold's predictor is trained (released code: AdamW 1e-3 / 1e-6, batch 128, clip 5, 10,000 epochs).

    `epochs` and `lr` are set for CPU budgets, from measurements on synthetic graphs of the default dataset's size
    (130 training graphs of 147 nodes, 47 of them weight layers; batch 64; one thread on a shared 2-core machine):
    an epoch takes ~0.45 s, so 50 epochs train a fold in ~23 s. At lr 1e-3 the loss is still falling after 100
    epochs (test SRCC 0.57 at 30 epochs, 0.69 at 100); at 3e-3 it has flattened over the last ~15 epochs of 50 for
    every loss kind, with test SRCC as good as 1e-3 at 150 epochs and as 1e-2 (hybrid 0.66-0.75 over 3 seeds).
    """

    loss: str = "hybrid"
    """One of `qsd.predictor.losses.RANK_LOSSES`."""
    epochs: int = 50
    lr: float = 3e-3
    weight_decay: float = 1e-6
    batch_size: int = 64
    grad_clip: float = 5.0
    """Maximum gradient norm of a step."""
    rank_weight: float = 1.0
    """w in L = MSE + w · mean over hops of L_rank."""
    seed: int = 0

    def __post_init__(self) -> None:
        check_loss_kind(self.loss)
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InvalidSettingError(f"TrainSettings.{name} must be an integer >= {minimum}, got {value!r}")
        for name, positive in (("lr", True), ("grad_clip", True), ("weight_decay", False), ("rank_weight", False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value < 0 or (positive and value == 0):
                raise InvalidSettingError(f"TrainSettings.{name} must be a finite number "
                                          f"{'> 0' if positive else '>= 0'}, got {value!r}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainSettings:
        return settings_from_json(cls, data)


class BalancedBatches:
    """Shuffled index batches of near-equal sizes (ceil(n / batch_size) of them), reshuffled every epoch."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.generator = n, generator
        self.count = math.ceil(n / batch_size)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=self.generator)
        return iter(chunk.tolist() for chunk in torch.tensor_split(order, self.count))


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _eval_batches(graphs: Sequence[Data]) -> DataLoader:
    # Iterating a DataLoader draws a seed from its generator: a private one keeps the caller's RNG untouched.
    return DataLoader(list(graphs), batch_size=PREDICT_BATCH, shuffle=False, generator=torch.Generator())


@dataclass
class TrainedPredictor:
    """A fold's trained GNN with what it needs to be used: target scaling and per-hop node-norm moments."""

    model: GraphPredictor
    model_settings: PredictorSettings
    train_settings: TrainSettings
    y_mean: float
    y_std: float
    history: list[dict] = field(default_factory=list)
    """Per epoch: "epoch", "lr" and the graph-weighted means of the loss parts ("mse", ..., "total")."""
    hop_moments: list[tuple[float, float]] = field(default_factory=list)
    """Per hop m: (mean, std) of ‖h^m_v‖₁ over every node of every training graph, eval mode (code.md §6 standardises
    node and subgraph scores with these)."""

    @_one_thread()
    @torch.no_grad()
    def _outputs(self, graphs: Sequence[Data]) -> tuple[np.ndarray, np.ndarray]:
        self.model.eval()
        predictions, norms = [], []
        for batch in _eval_batches(graphs):
            prediction, pooled = self.model(batch)
            predictions.append(prediction)
            norms.append(l1_norms(pooled))
        return torch.cat(predictions).double().numpy(), torch.cat(norms).double().numpy()

    def predict(self, graphs: Sequence[Data]) -> np.ndarray:
        """Predicted targets [n], in the targets' units."""
        return self._outputs(graphs)[0] * self.y_std + self.y_mean

    def hop_norms(self, graphs: Sequence[Data]) -> np.ndarray:
        """‖h_G^m‖₁ [n, M+1] of each graph and hop."""
        return self._outputs(graphs)[1]

    def state(self) -> dict:
        """Everything but the weights, JSON-ready (the metadata of the saved file)."""
        return {"format": FILE_FORMAT, "model_settings": self.model_settings.to_json(),
                "train_settings": self.train_settings.to_json(), "y_mean": self.y_mean, "y_std": self.y_std,
                "history": self.history, "hop_moments": [list(m) for m in self.hop_moments]}

    def save(self, path: str | Path) -> Path:
        """One safetensors file: the state dict, with `state()` as JSON in its metadata; written atomically."""
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.model.state_dict().items()}
        metadata = {"qsd": json.dumps(self.state(), sort_keys=True)}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    @classmethod
    def load(cls, path: str | Path) -> TrainedPredictor:
        """A predictor written by `save`, in eval mode; CorruptFileError if the file is anything else."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"no saved predictor at {path}; train one with train_predictor(...) and .save() it")
        try:
            return cls._read(path)
        except CorruptFileError:
            raise
        except Exception as exc:  # safetensors, JSON, settings or state-dict errors: not a predictor of ours
            raise CorruptFileError(f"{path} is not a saved qsd predictor ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def _read(cls, path: Path) -> TrainedPredictor:
        with safe_open(path, "pt") as f:
            state = json.loads((f.metadata() or {}).get("qsd", "{}"))
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        if state.get("format") != FILE_FORMAT:
            raise CorruptFileError(f"{path} is not a saved qsd predictor (format {state.get('format')!r}, "
                                   f"expected {FILE_FORMAT!r})")
        model_settings = PredictorSettings.from_json(state["model_settings"])
        model = GraphPredictor(model_settings)
        model.load_state_dict(tensors)
        return cls(model=model.eval(), model_settings=model_settings,
                   train_settings=TrainSettings.from_json(state["train_settings"]),
                   y_mean=float(state["y_mean"]), y_std=float(state["y_std"]), history=list(state["history"]),
                   hop_moments=[(float(m), float(s)) for m, s in state["hop_moments"]])


def _targets(graphs: Sequence[Data]) -> torch.Tensor:
    if not graphs:
        raise InvalidSettingError("train_predictor needs at least one graph")
    missing = [i for i, g in enumerate(graphs) if getattr(g, "y", None) is None or g.y.numel() != 1]
    if missing:
        raise InvalidSettingError(f"every training graph needs a target y of one value; graphs {missing[:5]} "
                                  f"(of {len(missing)}) have none")
    return torch.cat([g.y.reshape(1).double() for g in graphs])


@torch.no_grad()
def _hop_moments(model: GraphPredictor, graphs: Sequence[Data]) -> list[tuple[float, float]]:
    model.eval()
    norms = torch.cat([l1_norms(model.node_embeddings(batch)) for batch in _eval_batches(graphs)]).double()
    return [(float(norms[:, m].mean()), float(norms[:, m].std(correction=0))) for m in range(norms.shape[1])]


@_one_thread()
def train_predictor(graphs: Sequence[Data], model_settings: PredictorSettings = PredictorSettings(),
                    train_settings: TrainSettings = TrainSettings(), progress: bool = False,
                    init: TrainedPredictor | None = None) -> TrainedPredictor:
    """Train a GraphPredictor on `graphs` (each with its target `y`); deterministic for `train_settings.seed` on CPU.
    `init`: fine-tune from this predictor's weights (same model settings; e.g. pretrained on another denoiser)
    instead of a fresh initialisation; targets are standardised with `graphs`' own statistics either way.

    The caller's global torch RNG state is left as it was.
    """
    if init is not None and init.model_settings != model_settings:
        raise InvalidSettingError(f"cannot fine-tune a predictor built with {init.model_settings} as one with "
                                  f"{model_settings}; pass the same PredictorSettings")
    targets = _targets(graphs)
    y_mean, y_std = float(targets.mean()), float(targets.std(correction=0))
    y_std = y_std if y_std > 0 else 1.0
    ts = train_settings
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ts.seed)
        model = GraphPredictor(model_settings)
        if init is not None:
            model.load_state_dict(init.model.state_dict())
        generator = torch.Generator().manual_seed(ts.seed)
        loader = DataLoader(list(graphs), batch_sampler=BalancedBatches(len(graphs), ts.batch_size, generator),
                            generator=generator)
        optimizer = torch.optim.AdamW(model.parameters(), lr=ts.lr, weight_decay=ts.weight_decay, foreach=True)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=ts.epochs)
        history = []
        bar = tqdm(range(ts.epochs), desc=f"predictor ({ts.loss})", disable=not progress)
        for epoch in bar:
            model.train()
            sums: dict[str, float] = {}
            for batch in loader:
                optimizer.zero_grad()
                prediction, pooled = model(batch)
                y = (batch.y.reshape(-1).double() - y_mean) / y_std
                loss, parts = predictor_loss(prediction, y.float(), l1_norms(pooled), ts.loss, ts.rank_weight)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), ts.grad_clip)
                optimizer.step()
                for name, value in parts.items():
                    sums[name] = sums.get(name, 0.0) + value * batch.num_graphs
            history.append({"epoch": epoch, "lr": schedule.get_last_lr()[0],
                            **{name: value / len(graphs) for name, value in sums.items()}})
            schedule.step()
            bar.set_postfix(loss=f"{history[-1]['total']:.4f}")
    return TrainedPredictor(model=model.eval(), model_settings=model_settings, train_settings=ts, y_mean=y_mean,
                            y_std=y_std, history=history, hop_moments=_hop_moments(model, graphs))
