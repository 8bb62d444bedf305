"""What every registered model provides to sampling and labelling: `ModelEntry` (static facts: family,
conditioning, the paper's sampler protocol, FID reference) and `DiffusionModel` (a loaded denoiser with
its conditioning, noise prediction, scheduler and decoder)."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from qsd.quantizers import QuantizerSettings

Condition = dict[str, torch.Tensor]
"""Denoiser keyword arguments batched along dim 0 (so guidance concatenates them)."""


def denoiser_arguments(denoiser: nn.Module, args: tuple, kwargs: dict) -> dict:
    """The arguments of one `denoiser(*args, **kwargs)` call by parameter name (the paper models' wrappers pass the
    latents, some the timestep too, by position), as a forward pre-hook with kwargs sees them."""
    signature = inspect.signature(denoiser.forward)
    named = {}
    for name, value in signature.bind_partial(*args, **kwargs).arguments.items():
        rest = signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD
        named.update(value if rest else {name: value})
    return named


@dataclass(frozen=True)
class SamplerSettings:
    """The sampling protocol of a model (code.md §3): solver, steps, guidance scale, image resolution."""

    scheduler: str = "dpmsolver++"
    steps: int = 20
    guidance: float = 4.5
    resolution: int = 512
    guidance_basis: str = "the paper's published protocol"
    """Where `guidance` comes from: the paper, or the measurement that chose it (embedded models: stage 00's
    guidance sweep, the FID-optimal scale)."""


@dataclass(frozen=True)
class ModelEntry:
    """One registered model id."""

    model_id: str
    family: str
    """Denoiser family: `pixart`, `hunyuan_dit`, `dit`, `unet` (SD/SDXL), or a `qsd.models.random_init` arch."""
    denoiser_class: str
    conditioning: str
    """`text`, `class` or `none` (random-init test models)."""
    sampler: SamplerSettings
    fid_reference: str
    """Name of the real-image set FID compares against (e.g. `mnist16-train`, `coco2017-val`)."""
    description: str
    loader: Callable[..., DiffusionModel] | None = field(default=None, compare=False, repr=False)
    quantizer: QuantizerSettings = field(default_factory=QuantizerSettings)
    """The weight quantizers' heuristics for this model (stage 01's default): the paper's for the paper's models;
    the embedded models' UAQ range rule was chosen by measurement (docs/label_regime.md, "UAQ's range rule")."""
    quantizer_basis: str = "the paper's quantizer settings"
    """Where `quantizer` comes from (the measurement, where it differs from the paper)."""


class DiffusionModel:
    """A loaded model: `denoiser` (the module that gets quantized) plus what sampling needs around it."""

    entry: ModelEntry
    denoiser: nn.Module
    latent_shape: tuple[int, ...]
    """Shape of one initial-noise sample, [C, H, W]."""
    compiled: bool = False
    """Whether `denoiser` has been compiled in place (`qsd.sampling.denoiser_mode`)."""

    def with_denoiser(self, denoiser: nn.Module) -> DiffusionModel:
        """This model (conditioning, scheduler and decoder shared) around another denoiser, e.g. a packed
        one from `qsd.load_quantized`; not compiled."""
        model = copy.copy(self)
        model.denoiser, model.compiled = self.prepare_denoiser(denoiser), False
        return model

    def prepare_denoiser(self, denoiser: nn.Module) -> nn.Module:
        """What the model does to a denoiser it is given (none here; the embedded models set their attention)."""
        return denoiser

    def protocol_prompts(self, n: int) -> tuple[list, torch.Tensor | None]:
        """The first `n` prompts of the evaluation protocol (image i always gets prompt i) and, where
        defined, the class each prompt asks for (for prompt accuracy)."""
        raise NotImplementedError

    def condition(self, prompts: Sequence) -> Condition:
        """Batched conditional inputs for `prompts`."""
        raise NotImplementedError

    def null_condition(self, n: int) -> Condition:
        """The unconditional inputs (empty caption / null class) for guidance, batch `n`."""
        raise NotImplementedError

    def predict_noise(self, latents: torch.Tensor, timestep: torch.Tensor, condition: Condition) -> torch.Tensor:
        """ε prediction of the denoiser (learned-variance channels dropped)."""
        raise NotImplementedError

    def make_scheduler(self, sampler: bool = True):
        """A fresh diffusers scheduler: the protocol's sampler, or (`sampler=False`) the training-time
        noising schedule (DDPM) with the same betas."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents → images [B, C, H, W] in [0, 1]."""
        raise NotImplementedError
