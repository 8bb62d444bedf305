"""Batched generation with common random numbers (the labelling protocol's sampler).

Image i always starts from the noise of its own generator, seeded by (seed, i), and always gets prompt i
of the model's protocol, so every quantization configuration sees exactly the same noise and prompts and
two runs of the same configuration give bitwise-identical images. Stochastic solvers (e.g. Hunyuan's DDPM)
draw their step noise from a generator seeded by (seed, first image of the batch), so they are
reproducible for a fixed batch size. Classifier-free guidance runs the
unconditional and conditional halves in one batched forward; conditions are computed once per call
(captions are memoised by the encoder); images stay in memory as tensors. Noise is drawn on the CPU (the
same numbers on every device) and moved to the denoiser's device; images come back on the CPU.

With `SamplingProtocol.compile` the denoiser runs through `torch.compile` (inductor, one graph per batch
shape, compiled in place on first use; weights swapped in by the multiquantizer are graph inputs, so a new
configuration does not recompile). Protocols without it run the same model eagerly.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from qsd.errors import InvalidSettingError
from qsd.models.base import Condition, DiffusionModel, ModelEntry

SEED_STRIDE = 1_000_003
COMPUTE_DTYPES = ("float32", "bfloat16")
AUTO_DTYPE = "auto"
"""A stage setting that resolves to `native_compute_dtype` of the stage's device (a protocol holds the result)."""


def cpu_computes_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX, as oneDNN reports it)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def native_compute_dtype(device: str = "cpu") -> str:
    """'bfloat16' where `device` computes it natively (a bf16-capable GPU; a CPU with AVX512-BF16/AMX), else
    'float32': emulated bfloat16 labelled 8x slower than float32 on a 2-core AVX2 CPU (docs/measurements.md)."""
    if torch.device(device).type == "cuda":
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_computes_bfloat16() else "float32"


def resolve_compute_dtype(name: str, device: str = "cpu") -> str:
    """A stage's `compute_dtype` setting as a protocol's: 'auto' becomes `native_compute_dtype(device)`."""
    return native_compute_dtype(device) if name == AUTO_DTYPE else name


@dataclass(frozen=True)
class SamplingProtocol:
    """What a labelled image depends on: how many, solver steps, guidance scale and the noise seed."""

    n_images: int = 256
    steps: int = 20
    guidance: float = 3.0
    seed: int = 0
    compute_dtype: str = "float32"
    """'float32', or 'bfloat16' to run the denoiser under autocast (faster where the CPU has AVX512-BF16/AMX
    or on GPUs; latents, solver and metrics stay float32)."""
    compile: bool = False
    """Run the denoiser through `torch.compile` (needs a C++ compiler on CPU; the first forward of each batch
    shape compiles: 5-80 s per shape for the embedded models, the low end with a warm inductor cache).
    Changes results at rounding level, hence part of the protocol."""

    @classmethod
    def for_model(cls, entry: ModelEntry, **overrides: object) -> SamplingProtocol:
        """The protocol of a registered model — its solver steps and guidance scale (`entry.sampler`) — with
        `overrides` (n_images, seed, compute_dtype, compile, or steps/guidance themselves); an override of None
        keeps the model's value. Every stage makes its protocol here."""
        values = {"steps": entry.sampler.steps, "guidance": entry.sampler.guidance}
        return cls(**values | {name: value for name, value in overrides.items() if value is not None})

    def __post_init__(self) -> None:
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise InvalidSettingError(f"compute_dtype {self.compute_dtype!r} is not one of {', '.join(COMPUTE_DTYPES)} "
                                      f"(stage settings also take {AUTO_DTYPE!r})")


@dataclass
class Trajectory:
    """Per solver step: the latents fed to the denoiser and the timestep."""

    latents: list[torch.Tensor]
    timesteps: list[torch.Tensor]


def initial_noise(shape: tuple[int, ...], n: int, seed: int, start: int = 0) -> torch.Tensor:
    """Noise of images start..start+n-1, each from its own generator (independent of batch size and n)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed * SEED_STRIDE + i))
                        for i in range(start, start + n)])


def model_device(model: DiffusionModel) -> torch.device:
    """Where the denoiser's weights live (noise and conditions are moved there)."""
    return next(model.denoiser.parameters()).device


def guidance_condition(model: DiffusionModel, prompts: list, guidance: float) -> Condition:
    """The denoiser inputs for `prompts` under `guidance`, built once per batch: the unconditional and
    conditional halves stacked along dim 0, or the conditional inputs alone when guidance is 1."""
    device = model_device(model)
    cond = {k: v.to(device) for k, v in model.condition(prompts).items()}
    if guidance == 1.0:
        return cond
    null = model.null_condition(len(prompts))
    return {k: torch.cat([null[k].to(device), cond[k]]) for k in cond}


@contextmanager
def denoiser_mode(model: DiffusionModel, protocol: SamplingProtocol) -> Iterator[None]:
    """Forwards inside run compiled (compiling the denoiser in place the first time) when `protocol.compile`,
    eagerly otherwise, under autocast to `protocol.compute_dtype` (none for float32)."""
    if protocol.compile and not model.compiled:
        model.denoiser.compile(dynamic=False)
        model.compiled = True
    dtype = getattr(torch, protocol.compute_dtype)
    device = model_device(model).type
    stance = nullcontext() if protocol.compile else torch.compiler.set_stance("force_eager")
    with stance, torch.autocast(device, dtype=dtype, enabled=protocol.compute_dtype != "float32"):
        yield


def guided_noise(model: DiffusionModel, latents: torch.Tensor, t: torch.Tensor, condition: Condition,
                 protocol: SamplingProtocol) -> torch.Tensor:
    """ε with classifier-free guidance at `protocol.guidance`, both halves in one forward; `condition` from
    `guidance_condition`; `t` is one timestep or one per row. The denoiser runs in `denoiser_mode`; ε comes
    back in the latents' dtype."""
    timestep = t.expand(len(latents))
    with denoiser_mode(model, protocol):
        if protocol.guidance == 1.0:
            return model.predict_noise(latents, timestep, condition).to(latents.dtype)
        eps = model.predict_noise(torch.cat([latents, latents]), torch.cat([timestep, timestep]), condition)
    eps_null, eps_cond = eps.to(latents.dtype).chunk(2)
    return eps_null + protocol.guidance * (eps_cond - eps_null)


@torch.no_grad()
def generate(model: DiffusionModel, protocol: SamplingProtocol, batch_size: int = 256, progress: bool = True,
             trajectory: Trajectory | None = None, n_images: int | None = None) -> torch.Tensor:
    """Images [N, C, H, W] in [0, 1] of the first `n_images` (default `protocol.n_images`) protocol prompts.
    If `trajectory` is given, the first batch's denoiser inputs at every step are appended to it."""
    n = protocol.n_images if n_images is None else n_images
    prompts, _ = model.protocol_prompts(n)
    images = []
    batches = range(0, n, batch_size)
    bar = tqdm(total=len(batches), desc="sampling", unit="batch", disable=not progress, leave=False)
    for start in batches:
        stop = min(n, start + batch_size)
        condition = guidance_condition(model, prompts[start:stop], protocol.guidance)
        scheduler = model.make_scheduler()
        scheduler.set_timesteps(protocol.steps)
        step_kwargs = {}
        if "generator" in inspect.signature(scheduler.step).parameters:
            step_kwargs["generator"] = torch.Generator().manual_seed(protocol.seed * SEED_STRIDE + start)
        latents = initial_noise(model.latent_shape, stop - start, protocol.seed, start).to(model_device(model))
        latents = latents * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            eps = guided_noise(model, model_input, t, condition, protocol)
            if trajectory is not None and start == 0:
                trajectory.latents.append(model_input)
                trajectory.timesteps.append(t)
            latents = scheduler.step(eps, t, latents, return_dict=False, **step_kwargs)[0]
        images.append(model.decode(latents).float().cpu())
        bar.update(1)
    bar.close()
    return torch.cat(images)
