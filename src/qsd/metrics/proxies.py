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
from qsd.sampling import SamplingProtocol, Trajectory, guidance_condition, guided_noise


@dataclass
class Probe:
    """The float model's trajectory states on the first `n` protocol images, their conditions, and the float
    model's guided ε there, evaluated the same way as every configuration's (`guided_noise_at`)."""

    latents: torch.Tensor
    """[steps, n, C, H, W]: what the denoiser saw at each solver step."""
    timesteps: torch.Tensor
    """[steps]."""
    condition: Condition
    """Of the `n` probe images, as built by `guidance_condition` (both halves stacked when guided)."""
    protocol: SamplingProtocol
    batch_size: int
    """Most images per denoiser forward when evaluating the states."""
    eps: torch.Tensor | None = None
    """[steps, n, C, H, W]: the float model's guided ε at the states."""

    def repeated_condition(self, times: int) -> Condition:
        """The condition of `times` consecutive steps' states (each half repeated `times` times)."""
        halves = 1 if self.protocol.guidance == 1.0 else 2
        return {k: torch.cat([h.repeat(times, *[1] * (v.ndim - 1)) for h in v.chunk(halves)])
                for k, v in self.condition.items()}


def sample_mse(images: torch.Tensor, float_images: torch.Tensor) -> float:
    return (images - float_images).pow(2).mean().item()


@torch.no_grad()
def guided_noise_at(model: DiffusionModel, probe: Probe) -> torch.Tensor:
    """`model`'s guided ε at all the probe's states [steps, n, ...]. The states are independent inputs, so
    they go through the denoiser in equal chunks of whole steps, at most `probe.batch_size` images each (two
    chunks of 10 steps for the labelling default of 16 images, 20 steps, batch 256)."""
    steps, n = probe.latents.shape[:2]
    chunks = -(-steps * n // max(probe.batch_size, n))
    eps = [guided_noise(model, probe.latents[chunk].flatten(0, 1), probe.timesteps[chunk].repeat_interleave(n),
                        probe.repeated_condition(len(chunk)), probe.protocol)
           for chunk in torch.arange(steps).tensor_split(chunks)]
    return torch.cat(eps).unflatten(0, (steps, n))


def probe_from_trajectory(model: DiffusionModel, protocol: SamplingProtocol, trajectory: Trajectory, n: int,
                          batch_size: int = 256) -> Probe:
    """The probe of the first `n` images of a float-model `trajectory` (recorded by `generate`), with the float
    model's guided ε evaluated at its states."""
    prompts, _ = model.protocol_prompts(n)
    latents = torch.stack(trajectory.latents)[:, :n]
    probe = Probe(latents, torch.stack(trajectory.timesteps).to(latents.device),
                  guidance_condition(model, prompts, protocol.guidance), protocol, batch_size)
    probe.eps = guided_noise_at(model, probe)
    return probe


def eps_error(model: DiffusionModel, probe: Probe) -> float:
    """Mean over timesteps of the relative guided-ε error of `model` at the probe's float states."""
    eps = guided_noise_at(model, probe)
    per_step = (eps - probe.eps).pow(2).flatten(1).sum(1) / probe.eps.pow(2).flatten(1).sum(1)
    return per_step.mean().item()
