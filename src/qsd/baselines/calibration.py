"""Time-step-aware calibration data (Q-Diffusion §4.2; baselines.md §1.2): the float model's own inputs at every
solver step of its sampling protocol, recorded as the keyword arguments the denoiser was called with (noisy latents,
timestep and conditions; with guidance the unconditional and conditional halves both, as DMQ keeps them).

The same set drives every baseline's calibration, so they all see the same data, and its sampling uses the
labelling protocol's prompts and common random numbers with a calibration noise seed of its own (never the
evaluation seeds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qsd.errors import QsdError
from qsd.models.base import DiffusionModel, denoiser_arguments
from qsd.sampling import SamplingProtocol, generate


def detached(value: object) -> object:
    """`value` with every tensor detached and copied to the CPU (nested dicts and tuples followed)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, Mapping):
        return {k: detached(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(detached(v) for v in value)
    return value


def select_rows(value: object, rows: torch.Tensor, batch: int) -> object:
    """The `rows` of every tensor in `value` whose first dim is the batch (`batch` long); others unchanged."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.ndim and value.shape[0] == batch else value
    if isinstance(value, Mapping):
        return {k: select_rows(v, rows, batch) for k, v in value.items()}
    return value


def to_device(value: object, device: torch.device | str) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def denoiser_output(denoiser: nn.Module, inputs: Mapping) -> torch.Tensor:
    """The denoiser's output tensor for recorded keyword `inputs` (tuple or output-object returns both handled)."""
    out = denoiser(**inputs)
    if isinstance(out, tuple):
        return out[0]
    return getattr(out, "sample", out)


@dataclass
class CalibrationSet:
    """`steps[k]`: the denoiser's keyword inputs at solver step k (batch-first tensors on the CPU); `timesteps[k]`
    its timestep."""

    steps: list[dict]
    timesteps: list[float]

    def __post_init__(self) -> None:
        if not self.steps or len(self.steps) != len(self.timesteps):
            raise QsdError(f"a calibration set needs one input batch per timestep; got {len(self.steps)} batches for "
                           f"{len(self.timesteps)} timesteps")

    @classmethod
    def from_inputs(cls, steps: Sequence[Mapping]) -> CalibrationSet:
        """From denoiser keyword inputs, one batch per step (each must carry `timestep`)."""
        if any("timestep" not in s for s in steps):
            raise QsdError("every calibration batch needs its 'timestep' keyword input")
        return cls([detached(dict(s)) for s in steps],
                   [float(torch.as_tensor(s["timestep"]).reshape(-1)[0]) for s in steps])

    @classmethod
    def from_model(cls, model: DiffusionModel, protocol: SamplingProtocol, n_samples: int, seed: int) -> CalibrationSet:
        """Record the float model's inputs while it samples `n_samples` images under `protocol` with noise `seed`
        (one batch: every step's inputs hold all samples, both guidance halves)."""
        steps: list[dict] = []

        def record(module, args, kwargs):
            steps.append(detached(denoiser_arguments(module, args, kwargs)))

        handle = model.denoiser.register_forward_pre_hook(record, with_kwargs=True)
        try:
            generate(model, dataclasses.replace(protocol, seed=seed, compile=False), batch_size=n_samples,
                     progress=False, n_images=n_samples)
        finally:
            handle.remove()
        return cls.from_inputs(steps)

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def batch(self) -> int:
        """Rows per step."""
        return _first_batch(self.steps[0])

    def inputs(self, step: int, rows: torch.Tensor | None = None, device: torch.device | str = "cpu") -> dict:
        """Step `step`'s keyword inputs (only `rows` of the batch if given) on `device`."""
        inputs = self.steps[step]
        if rows is not None:
            inputs = select_rows(inputs, rows, _first_batch(inputs))
        return to_device(inputs, device)

    def outputs(self, denoiser: nn.Module, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """The denoiser's output at every step (no gradients), on the CPU."""
        with torch.no_grad():
            return [denoiser_output(denoiser, self.inputs(k, device=device)).float().cpu() for k in range(len(self))]


def _first_batch(inputs: Mapping) -> int:
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.ndim >= 2:
            return int(value.shape[0])
    raise QsdError("calibration inputs hold no batched tensor")


def output_error(denoiser: nn.Module, reference: Sequence[torch.Tensor], calibration: CalibrationSet) -> float:
    """Mean squared error of `denoiser`'s outputs against `reference` (the float outputs) over every step."""
    outputs = calibration.outputs(denoiser, next(denoiser.parameters()).device)
    return float(sum(((o - r) ** 2).mean() for o, r in zip(outputs, reference, strict=True)) / len(outputs))
