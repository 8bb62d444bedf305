"""TFMQ-DM (Huang et al., CVPR 2024; baselines.md §3): Q-Diffusion's pipeline (`qsd.baselines.qdiffusion`) with the
temporal information block reconstructed on its own and finite-set calibration of the activations.

Temporal information block (TIB, `temporal_block`): every quantizable layer whose input depends on the timestep but
not on the noisy latent x_t, found by running the float denoiser once with the latent perturbed and once with the
timestep changed and comparing every layer's input. On the supported architectures this gives
  * U-Net: `time_embedding.linear_1/2` and every ResNet's `time_emb_proj` (the paper's time embedding + emb_layers);
  * PixArt: `adaln_single.*` (timestep MLP and adaLN-single projection); the caption projection does not depend on t;
  * DiT: each block's `norm1.emb.timestep_embedder.*` and `norm1.linear`, and `proj_out_1` (the last two also read
    the class label, which, like t, does not change with x_t).
The temporal features emb(t) are the outputs of the TIB layers that reach the rest of the network other than through
TIB layers (found by back-propagating from the denoiser's output with every TIB layer's input cut): U-Net's
`time_emb_proj`s; PixArt's `adaln_single.linear` and its timestep embedding, which also modulates the final layer;
DiT's `norm1.linear`s and `proj_out_1`.

Temporal information-aware reconstruction: the TIB's AdaRound rounding is learned first, on ‖emb_FP(t) − emb_Q(t)‖²
(summed over the features) over calibration rows drawn from all steps, with BRECQ's settings, regulariser and
schedule. In these forward passes every x_t-dependent layer is replaced by zeros of its output's shape: it cannot
reach emb(t), and most of the network's work is skipped. The TIB layers are then frozen while the rest is
reconstructed block by block (`reconstruct_weights`).

Finite-set calibration: activation ranges per sampling step (one `StaticQuantizer` set per calibration step, chosen
by a `StepClock` on the quantized denoiser) for the TIB's inputs (`per_step_activations="temporal"`, the paper) or
for every activation, attention operands included ("all", the default, as the public code does). Ranges are an EMA
(momentum 0.95) of per-batch min/max over 16-row batches of each step; step sizes are not learned (the code's init is
an MSE search on 16 rows followed by running statistics; min–max is what the paper reports as as good). The first and
last layer called stay float (on a U-Net the first is `time_embedding.linear_1`, inside the TIB). Iterations are
scaled down as in `qsd.baselines.reconstruction`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from qsd.actquant import StepClock
from qsd.baselines.calibration import CalibrationSet, denoiser_output
from qsd.baselines.common import (
    BaselineResult,
    attach_static,
    average_bits,
    calibrate_ranges,
    prepared_copy,
)
from qsd.baselines.qdiffusion import RELEASED_GRID, RELEASED_SOFTMAX_BITS, attach_attention, attention_rule
from qsd.baselines.reconstruction import (
    CHUNK_ROWS,
    ReconstructionSettings,
    activations_off,
    attach_roundings,
    draw_rows,
    eval_index,
    gather_inputs,
    harden,
    reconstruct_weights,
    reconstruction_error,
    rounding_penalty,
    take,
)
from qsd.errors import QsdError
from qsd.layers import QUANTIZABLE_TYPES, Unit

METHOD = "tfmqdm"
SMOKE = {"reconstruction": {"iters": 2, "batch": 4}}
"""Overrides of `Settings` in a CI smoke run (nested settings as dicts)."""
FIRST_LAST_FLOAT = {"keep_first_last": True}
"""Overrides of `Settings` that keep exactly the first and last layer a forward pass calls float (stage 06's common
convention)."""
PER_STEP = ("all", "temporal")
LATENT_KEYS = ("sample", "hidden_states")
"""The denoiser keyword that carries x_t (U-Nets: sample; transformers: hidden_states)."""


@dataclass(frozen=True)
class Settings:
    reconstruction: ReconstructionSettings = ReconstructionSettings(grid=RELEASED_GRID)
    """As Q-Diffusion's, whose code TFMQ-DM's builds on (min–max weight grids)."""
    per_step_activations: str = "all"
    """Which activations get one range per sampling step: "all" (the public code) or "temporal" (the TIB's inputs, the
    paper; the others then share one range)."""
    act_momentum: float | None = 0.95
    """EMA momentum of the per-batch ranges; None: min/max over all rows of the step."""
    act_batch_rows: int | None = None
    """Rows per observed batch; None: every row of a step in one batch, so each step's range sees the whole
    calibration set at that step (with 16-row batches and momentum 0.95 it mostly saw the first batch)."""
    quantize_attention: bool = True
    softmax_bits: int | None = RELEASED_SOFTMAX_BITS
    """Bits of the softmax probabilities, as Q-Diffusion's code (None: the activation bits)."""
    keep_first_last: bool = True

    def __post_init__(self) -> None:
        if self.per_step_activations not in PER_STEP:
            raise QsdError(f"per_step_activations {self.per_step_activations!r} is not one of {', '.join(PER_STEP)}")


@dataclass(frozen=True)
class TemporalBlock:
    layers: tuple[str, ...]
    """The TIB: layers whose input depends on the timestep and not on x_t."""
    features: tuple[str, ...]
    """TIB layers whose outputs, emb(t), reach the rest of the network directly."""
    latent_layers: tuple[str, ...]
    """Layers whose input depends on x_t."""


def _layer_inputs(denoiser: nn.Module, inputs: Mapping) -> dict[str, list[torch.Tensor]]:
    """Every quantizable layer's input on each of its calls for one forward pass."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [module.register_forward_pre_hook(
        lambda m, args, name=name: seen.setdefault(name, []).append(args[0].detach().clone()))
        for name, module in denoiser.named_modules() if isinstance(module, QUANTIZABLE_TYPES)]
    try:
        with torch.no_grad():
            denoiser_output(denoiser, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _direct_outputs(denoiser: nn.Module, inputs: Mapping, layers: Sequence[str]) -> tuple[str, ...]:
    """Those of `layers` whose output reaches the denoiser's output with every input of `layers` cut off the graph."""
    modules = dict(denoiser.named_modules())
    outputs: list[tuple[str, torch.Tensor]] = []

    def leaf(name: str):
        def hook(module, args, out):
            out = out.detach().requires_grad_()
            outputs.append((name, out))
            return out
        return hook

    handles = [modules[n].register_forward_pre_hook(lambda m, args: (args[0].detach(), *args[1:])) for n in layers]
    handles += [modules[n].register_forward_hook(leaf(n)) for n in layers]
    try:
        with torch.enable_grad():
            result = denoiser_output(denoiser, inputs)
    finally:
        for handle in handles:
            handle.remove()
    if not outputs or not result.requires_grad:
        return ()
    grads = torch.autograd.grad(result.float().sum(), [o for _, o in outputs], allow_unused=True)
    return tuple(dict.fromkeys(name for (name, _), grad in zip(outputs, grads, strict=True) if grad is not None))


def temporal_block(denoiser: nn.Module, calibration: CalibrationSet) -> TemporalBlock:
    """The temporal information block of `denoiser` (module docstring), from two calibration rows of the first step."""
    device = next(denoiser.parameters()).device
    inputs = calibration.inputs(0, torch.arange(min(2, calibration.batch)), device)
    key = next((k for k in LATENT_KEYS if k in inputs), None)
    if key is None:
        raise QsdError(f"no latent input among the denoiser's keywords {sorted(inputs)}; expected one of {LATENT_KEYS}")
    latent = inputs[key]
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0)).to(latent)
    moved = inputs | {key: latent + noise * (latent.float().std() + 1)}
    first = calibration.timesteps[0]
    other = max(calibration.timesteps, key=lambda t: abs(t - first))
    later = inputs | {"timestep": torch.full_like(torch.as_tensor(inputs["timestep"]),
                                                  other if other != first else first + 1)}
    base, by_latent, by_time = (_layer_inputs(denoiser, x) for x in (inputs, moved, later))
    names = [n for n in base if n in by_latent and n in by_time]
    latent_layers = tuple(n for n in names if not _same(base[n], by_latent[n]))
    layers = tuple(n for n in names if n not in latent_layers and not _same(base[n], by_time[n]))
    return TemporalBlock(layers, _direct_outputs(denoiser, inputs, layers), latent_layers)


class _Zeros:
    """Stands in for a layer's forward: zeros shaped like its output (the shape computed once per input shape)."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.shapes = module, {}

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if x.shape not in self.shapes:
            with torch.no_grad():
                self.shapes[x.shape] = type(self.module).forward(self.module, x, *args, **kwargs).shape
        return x.new_zeros(self.shapes[x.shape])


@contextlib.contextmanager
def zeroed(model: nn.Module, names: Iterable[str]) -> Iterator[None]:
    """The layers `names` of `model` output zeros (of the right shape) while inside."""
    modules = dict(model.named_modules())
    chosen = [modules[n] for n in names]
    for module in chosen:
        module.forward = _Zeros(module)
    try:
        yield
    finally:
        for module in chosen:
            del module.forward


def _features(model: nn.Module, names: Sequence[str], inputs: Mapping) -> list[torch.Tensor]:
    """The outputs of the layers `names` on every call of one forward pass on `inputs`, in call order."""
    modules = dict(model.named_modules())
    found: list[torch.Tensor] = []
    handles = [modules[n].register_forward_hook(lambda m, args, out: found.append(out)) for n in names]
    try:
        denoiser_output(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return found


def reconstruct_temporal(float_model: nn.Module, quant_model: nn.Module, block: TemporalBlock, units: Sequence[Unit],
                         w_bits: int, calibration: CalibrationSet,
                         settings: ReconstructionSettings = ReconstructionSettings(), seed: int = 0) -> dict:
    """Learn the AdaRound rounding of the TIB's units among `units` on ‖emb_FP(t) − emb_Q(t)‖² (module docstring) and
    write the hard-rounded weights into `quant_model`. Returns the loss before/after and seconds."""
    learned: dict[str, list[Unit]] = {}
    for unit in units:
        if unit.module in block.layers:
            learned.setdefault(unit.module, []).append(unit)
    if not learned or not block.features:
        return {}
    start = time.perf_counter()
    device = next(quant_model.parameters()).device
    rows, index = torch.unique(draw_rows(calibration, settings.iters, settings.batch,
                                         torch.Generator().manual_seed(seed)), return_inverse=True)
    inputs = gather_inputs(calibration, rows)
    positions = torch.arange(len(rows))
    check = eval_index(len(rows))
    with activations_off(quant_model), zeroed(float_model, block.latent_layers), \
            zeroed(quant_model, block.latent_layers), torch.no_grad():
        pieces = [[t.detach() for t in _features(float_model, block.features, take(inputs, positions[i:i + CHUNK_ROWS],
                                                                                      device))]
                  for i in range(0, len(rows), CHUNK_ROWS)]
    targets = [torch.cat(parts) for parts in zip(*pieces, strict=True)]
    quant_modules = dict(quant_model.named_modules())
    roundings = attach_roundings(quant_modules, learned, w_bits, settings.grid)
    penalty = rounding_penalty(roundings.values(), settings)

    def error(at: torch.Tensor) -> torch.Tensor:
        return reconstruction_error(_features(quant_model, block.features, take(inputs, at, device)),
                                    [t[at].to(device) for t in targets])

    with activations_off(quant_model), zeroed(quant_model, block.latent_layers):
        try:
            for rounding in roundings.values():
                rounding.set_hard(True)
            with torch.no_grad():
                before = float(error(check))
            for rounding in roundings.values():
                rounding.set_hard(False)
            optimizer = torch.optim.Adam([r.alpha for x in roundings.values() for r in x.roundings], lr=settings.lr,
                                         foreach=True)
            for it, at in enumerate(index):
                loss = error(at) + penalty(it)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        finally:
            harden(quant_modules, roundings)
        with torch.no_grad():
            after = float(error(check))
    return {"layers": list(learned), "loss_before": before, "loss_after": after,
            "seconds": time.perf_counter() - start}


def quantize(denoiser: nn.Module, calibration: CalibrationSet, w_bits: int = 4, a_bits: int | None = 6,
             settings: Settings = Settings(), seed: int = 0) -> BaselineResult:
    """TFMQ-DM W`w_bits`A`a_bits` (module docstring) on a copy of `denoiser`; deterministic for a `seed`."""
    start = time.perf_counter()
    model, units, keep = prepared_copy(denoiser, calibration, settings.keep_first_last)
    block = temporal_block(denoiser, calibration)
    reconstruct_temporal(denoiser, model, block, units, w_bits, calibration, settings.reconstruction, seed)
    reconstruct_weights(denoiser, model, units, w_bits, calibration, settings.reconstruction, seed, frozen=block.layers)
    if a_bits is not None:
        clock, sets = StepClock(calibration.timesteps), len(calibration)
        clock.attach(model)
        every = settings.per_step_activations == "all"
        per_step = [u for u in units if every or u.module in block.layers]
        shared = [u for u in units if u not in per_step]
        quantizers = [*attach_static(model, per_step, a_bits, sets, clock, settings.act_momentum).values(),
                      *attach_static(model, shared, a_bits, momentum=settings.act_momentum).values()]
        if settings.quantize_attention:
            quantizers += attach_attention(model, units, a_bits, sets if every else 1, clock if every else None,
                                           settings.act_momentum, settings.softmax_bits)
        calibrate_ranges(model, quantizers, calibration, settings.act_batch_rows or calibration.batch, seed)
    return BaselineResult(METHOD, model, w_bits, a_bits, average_bits(denoiser, units, w_bits),
                          time.perf_counter() - start,
                          asdict(settings) | {"float_layers": keep, "temporal_layers": list(block.layers),
                                              "temporal_features": list(block.features)})


RELEASED_RULES = {"float layers": "first and last", "weights": "per-channel 'max' grid, TIB + AdaRound 20k it/block",
                  "activations": "static per-tensor, a range per step (EMA over 16-row batches)",
                  "attention Q, K, V / softmax": "static / 8 bits, a range per step",
                  "calibration": "as Q-Diffusion: 256 samples × 20 steps"}
"""The released values (research notes, baselines.md §3), beside `rules`."""


def rules(record: dict, a_bits: int | None) -> dict[str, str]:
    """The rule table's entries for a run's settings `record` (`BaselineResult.settings`)."""
    rec, per_step = record["reconstruction"], record["per_step_activations"]
    rows = record["act_batch_rows"] or "all"
    return {"weights": f"per-channel {rec['grid']} grid, TIB + AdaRound {rec['iters']} it/block",
            "activations": "float" if a_bits is None else
            f"static per-tensor, a range per step ({per_step}; {rows} rows a batch), A{a_bits}",
            "attention Q, K, V / softmax": attention_rule(record, a_bits)}
