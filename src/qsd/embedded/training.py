"""Training an embedded denoiser (notebook 00): ε-prediction DDPM loss on the `train` digits, linear β,
the condition dropped for 10 % of samples (classifier-free guidance), AdamW with warm-up and cosine decay,
an EMA of the weights (the EMA is what ships). Resumable: the state is saved every `checkpoint_every`
steps and a restarted run continues from it with the same data order."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from qsd.embedded import captions, digits
from qsd.embedded.models import NULL_CLASS, EmbeddedModel
from qsd.errors import SettingsMismatchError
from qsd.files import atomic_write


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    cond_drop: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 250
    max_minutes: float | None = None
    """Stop (resumably) after this much wall time; None = run all steps."""


def _lr_factor(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))


def _identity(settings: dict) -> dict:
    """The settings a resumed run must share (wall-time limit and checkpoint cadence may change)."""
    return {k: v for k, v in settings.items() if k not in ("max_minutes", "checkpoint_every")}


class _Conditions:
    """Training-time conditions: every caption phrasing (and the empty one) encoded once, or class ids."""

    def __init__(self, model: EmbeddedModel) -> None:
        self.text = model.entry.conditioning == "text"
        if self.text:
            table = captions.all_captions()  # digit-major: index = digit * len(PHRASINGS) + phrasing
            self.cond = model.condition(table + [captions.NULL_CAPTION])
            self.null_index = len(table)

    def __call__(self, labels: torch.Tensor, generator: torch.Generator, drop: float) -> dict[str, torch.Tensor]:
        dropped = torch.rand(len(labels), generator=generator) < drop
        if not self.text:
            return {"class_labels": torch.where(dropped, NULL_CLASS, labels)}
        phrasing = torch.randint(len(captions.PHRASINGS), (len(labels),), generator=generator)
        index = torch.where(dropped, self.null_index, labels * len(captions.PHRASINGS) + phrasing)
        return {k: v[index] for k, v in self.cond.items()}


def train_denoiser(model: EmbeddedModel, settings: TrainSettings, work_dir: Path,
                   progress: bool = True) -> dict:
    """Train `model.denoiser` in place (ending with the EMA weights loaded); returns a training record.
    `work_dir/train_state.pt` holds the resumable state."""
    images, labels = digits.load_digits("train")
    x0_all = images * 2 - 1
    scheduler = model.make_scheduler(sampler=False)
    conditions = _Conditions(model)
    denoiser = model.denoiser.train()
    ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    step, losses, elapsed = 0, [], 0.0
    state_path = work_dir / "train_state.pt"
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        if _identity(state["settings"]) != _identity(asdict(settings)):
            raise SettingsMismatchError(f"{state_path} was made with other settings {state['settings']}; "
                             f"delete it to start over or pass the same settings")
        denoiser.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, losses, elapsed = state["step"], state["losses"], state["elapsed"]

    def save_state() -> None:
        state = {"settings": asdict(settings), "model": denoiser.state_dict(), "ema": ema.state_dict(),
                 "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "step": step,
                 "losses": losses, "elapsed": elapsed}
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))

    start = time.perf_counter() - elapsed
    bar = tqdm(total=settings.steps, initial=step, desc=f"train {model.entry.model_id}", disable=not progress)
    while step < settings.steps:
        if settings.max_minutes is not None and time.perf_counter() - start > 60 * settings.max_minutes:
            break
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * _lr_factor(step, settings)
        index = torch.randint(len(x0_all), (settings.batch_size,), generator=generator)
        x0 = x0_all[index]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(scheduler.config.num_train_timesteps, (len(x0),), generator=generator)
        cond = conditions(labels[index], generator, settings.cond_drop)
        loss = torch.nn.functional.mse_loss(model.predict_noise(scheduler.add_noise(x0, noise, t), t, cond), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), settings.grad_clip)
        optimizer.step()
        with torch.no_grad():
            decay = min(settings.ema_decay, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), denoiser.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        losses.append(loss.item())
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            elapsed = time.perf_counter() - start
            save_state()
    bar.close()
    elapsed = time.perf_counter() - start
    model.denoiser.load_state_dict(ema.state_dict())
    model.denoiser.eval()
    tail = losses[-200:]
    return {"steps_done": step, "complete": step >= settings.steps, "minutes": elapsed / 60,
            "final_loss": sum(tail) / max(1, len(tail)), "settings": asdict(settings)}
