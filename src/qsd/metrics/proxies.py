"""Cheap proxies of a configuration's quality, measured against the float model under common random numbers:

- `sample_mse`: mean squared pixel distance between the configuration's final images and the float
  model's images from the same noise and prompts;
- `eps_error`: the denoiser's guided ε error, ‖ε_q − ε_fp‖² / ‖ε_fp‖², at the float model's own
  trajectory states, averaged over the solver's timesteps (a probe set of a few images).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qsd.models.base import Condition, DiffusionModel
from qsd.sampling import SamplingProtocol, Trajectory, generate, guidance_condition, guided_noise


@dataclass
class Probe:
    """The float model's trajectory on the first `n` protocol images, with their conditions."""

    trajectory: Trajectory
    condition: Condition
    """As built by `guidance_condition` (both halves stacked when guided)."""
    guidance: float
    compute_dtype: str = "float32"


def sample_mse(images: torch.Tensor, float_images: torch.Tensor) -> float:
    return (images - float_images).pow(2).mean().item()


@torch.no_grad()
def record_probe(model: DiffusionModel, protocol: SamplingProtocol, n: int) -> Probe:
    """Run the (float) model on the first `n` protocol images and keep every step's inputs and ε."""
    trajectory = Trajectory([], [], [])
    generate(model, protocol, batch_size=n, progress=False, trajectory=trajectory, n_images=n)
    prompts, _ = model.protocol_prompts(n)
    return Probe(trajectory, guidance_condition(model, prompts, protocol.guidance), protocol.guidance,
                 protocol.compute_dtype)


@torch.no_grad()
def eps_error(model: DiffusionModel, probe: Probe) -> float:
    """Mean over timesteps of the relative guided-ε error of `model` at the probe's float states."""
    errors = []
    steps = zip(probe.trajectory.latents, probe.trajectory.timesteps, probe.trajectory.eps, strict=True)
    for latents, t, eps_float in steps:
        eps = guided_noise(model, latents, t, probe.condition, probe.guidance, probe.compute_dtype)
        errors.append(((eps - eps_float).pow(2).sum() / eps_float.pow(2).sum()).item())
    return sum(errors) / len(errors)
