"""BRECQ block reconstruction (Li et al., ICLR 2021; baselines.md §1.5, §2) of a partly quantized denoiser's weight
rounding, and the learned activation step sizes Q-Diffusion runs after it (baselines.md §2).

Blocks (`reconstruction_blocks`): every transformer block, ResNet block and stand-alone attention block (`BLOCK_TYPES`)
is one block; every other quantizable layer is a block of its own. They are reconstructed in the order a forward
pass first calls them. For each block:
  1. draw the rows of every iteration's batch uniformly, with replacement, from all calibration steps;
  2. record, on those rows only, the block's input as the *quantized* network computes it (every earlier block already
     reconstructed: BRECQ's asymmetric reconstruction) and the *float* network's output of the same block, each
     forward pass stopped once the block has been reached;
  3. learn the AdaRound α (`qsd.baselines.adaround`) of the block's units with Adam on
         loss = ‖block_Q(x_Q) − y_FP‖² + λ·Σ(1 − |2h(α) − 1|^β)
     and write the hard-rounded weights into the quantized network.

Notation: x_Q the block's input in the quantized network, y_FP the float block's output, λ = `reg_weight`, ‖·‖²
summed over channels (dim 1 of an image tensor, the last dim otherwise) and averaged over samples and positions
(BRECQ's loss), summed over the block's output tensors.

Scaled down for tiny models on CPU: 300 iterations per block where the papers run 20k, with their batch (32),
learning rate (1e-3), regulariser weight (0.01), β range (20 → 2) and warm-up (20 %). A block is its module's first call
in a forward pass; a tensor argument is per-row when its first dimension is the number of rows fed.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from qsd.actquant import StaticQuantizer, TokenwiseQuantizer
from qsd.baselines.adaround import AdaRound, annealed_beta
from qsd.baselines.calibration import CalibrationSet, denoiser_output, detached
from qsd.baselines.common import call_order
from qsd.errors import QsdError
from qsd.layers import QUANTIZABLE_TYPES, Unit

BLOCK_TYPES = ("BasicTransformerBlock", "ResnetBlock2D", "HunyuanDiTBlock", "JointTransformerBlock", "Attention")
"""Classes (diffusers names) reconstructed as one block; an `Attention` only where no other block holds it."""
CHUNK_ROWS = 128
"""Calibration rows per forward pass while recording a block's inputs or outputs."""
EVAL_ROWS = 256
"""Recorded rows (spread over the recorded set) on which a block's loss before and after is reported."""
MIN_STEP = 1e-8


@dataclass(frozen=True)
class ReconstructionSettings:
    iters: int = 300
    """Adam iterations per block (the papers: 20k; scaled down for tiny models on CPU)."""
    batch: int = 32
    lr: float = 1e-3
    """Adam's rate for α, the papers'. An Adam step moves α by about `lr`, so iters × lr bounds how far the rounding
    can leave round-to-nearest (flipping a weight needs α to travel up to about 2.4): 20 in the papers, 0.3 here,
    which leaves part of the method's gain unused (`benchmarks/adaround_rate.py`). Stage 06 keeps the papers' rate
    until its baselines are re-measured."""
    reg_weight: float = 0.01
    warmup: float = 0.2
    """Fraction of the iterations before the rounding regulariser switches on."""
    beta: tuple[float, float] = (20.0, 2.0)
    grid: str = "mse"
    """How the per-channel grid is initialised (`qsd.baselines.adaround.GRIDS`): "mse" or "minmax"."""


@dataclass(frozen=True)
class StepSettings:
    """Learned activation step sizes (BRECQ's code, which Q-Diffusion runs: Adam at 4e-5 for 5k iterations per block,
    cosine-annealed)."""

    iters: int = 100
    batch: int = 32
    lr: float = 3e-3
    """Adam learning rate relative to each quantizer's calibrated step Δ₀ (lr·Δ₀), cosine-annealed to 0: the papers'
    absolute rate cannot move small and large steps alike in a hundred iterations. Chosen on `tiny_pixart`'s
    calibration set (W4A6, 32 images): the denoiser's output error went from 0.00237 with the min-max steps to
    0.00222 at 3e-3, 0.00235 at 1e-3 and 0.00252 at 1e-2 (the former default, which raised the loss of 7 of 9
    blocks)."""
    revert_worse: bool = True
    """A block whose loss on its check rows did not fall keeps its calibrated Δ (False: the learned Δ stay, as in
    the papers' long runs)."""


def block_modules(denoiser: nn.Module) -> list[tuple[str, list[str]]]:
    """(block module name, its quantizable layers) for every block, in module order (see module docstring)."""
    groups: list[tuple[str, list[str]]] = []
    current = None
    for name, module in denoiser.named_modules():
        if current is not None and name.startswith(current + "."):
            if isinstance(module, QUANTIZABLE_TYPES):
                groups[-1][1].append(name)
            continue
        current = None
        if type(module).__name__ in BLOCK_TYPES:
            current = name
            groups.append((name, []))
        elif isinstance(module, QUANTIZABLE_TYPES):
            groups.append((name, [name]))
    return [(block, layers) for block, layers in groups if layers]


def reconstruction_blocks(denoiser: nn.Module) -> list[list[str]]:
    """The quantizable layers of every block, in module order: each transformer block / ResNet block / stand-alone
    attention block is one group, every other quantizable layer its own."""
    return [layers for _, layers in block_modules(denoiser)]


def blocks_in_call_order(denoiser: nn.Module, calibration: CalibrationSet) -> list[tuple[str, list[str]]]:
    """`block_modules` ordered by the first call of any of their layers (blocks never called are left out)."""
    position = {name: i for i, name in enumerate(call_order(denoiser, calibration))}
    called = [(min(position[layer] for layer in layers if layer in position), block, layers)
              for block, layers in block_modules(denoiser) if any(layer in position for layer in layers)]
    return [(block, layers) for _, block, layers in sorted(called)]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@contextlib.contextmanager
def activations_off(model: nn.Module) -> Iterator[None]:
    """Every activation quantizer of `model` passes its input through while inside (a `StaticQuantizer` still divides
    by its smoothing factors, which the layer's weights carry), and is restored on exit."""
    quantizers = [m for m in model.modules() if isinstance(m, StaticQuantizer | TokenwiseQuantizer)]
    for q in quantizers:
        q.forward = q.scaled if isinstance(q, StaticQuantizer) else _identity
    try:
        yield
    finally:
        for q in quantizers:
            del q.forward


@dataclass
class _Rows:
    """A recorded tensor with one entry per calibration row along its first dimension."""

    data: torch.Tensor


def _stack(pieces: Sequence[object], sizes: Sequence[int]) -> object:
    """The recordings of successive chunks of rows (`sizes` rows each) joined: per-row tensors concatenated (as
    `_Rows`), anything else taken from the first chunk."""
    first = pieces[0]
    if isinstance(first, torch.Tensor):
        per_row = all(p.ndim > 0 and p.shape[0] == n for p, n in zip(pieces, sizes, strict=True))
        return _Rows(torch.cat(pieces)) if per_row else first
    if isinstance(first, Mapping):
        return {k: _stack([p[k] for p in pieces], sizes) for k in first}
    if isinstance(first, tuple | list):
        return type(first)(_stack([p[i] for p in pieces], sizes) for i in range(len(first)))
    return first


def take(recorded: object, index: torch.Tensor, device: torch.device | str) -> object:
    """Rows `index` of a recording (every per-row tensor indexed), on `device`."""
    if isinstance(recorded, _Rows):
        return recorded.data[index].to(device)
    if isinstance(recorded, torch.Tensor):
        return recorded.to(device)
    if isinstance(recorded, Mapping):
        return {k: take(v, index, device) for k, v in recorded.items()}
    if isinstance(recorded, tuple | list):
        return type(recorded)(take(v, index, device) for v in recorded)
    return recorded


def draw_rows(calibration: CalibrationSet, iters: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """[iters, batch] calibration rows (numbered step·rows + row) drawn uniformly with replacement from all steps."""
    return torch.randint(len(calibration) * calibration.batch, (iters, batch), generator=generator)


def chunks(calibration: CalibrationSet, rows: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(step, rows of that step) pieces of at most `CHUNK_ROWS` covering the sorted numbered `rows` in order."""
    steps = rows // calibration.batch
    for step in steps.unique().tolist():
        chosen = rows[steps == step] % calibration.batch
        for start in range(0, len(chosen), CHUNK_ROWS):
            yield step, chosen[start:start + CHUNK_ROWS]


def gather_inputs(calibration: CalibrationSet, rows: torch.Tensor) -> object:
    """The denoiser's keyword inputs of the sorted numbered calibration `rows`, as a recording (`take`)."""
    pieces = list(chunks(calibration, rows))
    return _stack([calibration.inputs(step, chosen) for step, chosen in pieces], [len(c) for _, c in pieces])


class _Reached(Exception):
    """Raised by a recording hook: the rest of the forward pass is not needed."""


def record(model: nn.Module, module: nn.Module, calibration: CalibrationSet, rows: torch.Tensor,
           output: bool) -> object:
    """What `module` receives ((args, kwargs); `output` False) or returns (`output` True) on its first call per forward
    pass of `model` over the sorted numbered calibration `rows`, as a recording (`take`)."""
    pieces: list[object] = []
    sizes: list[int] = []

    def grab(value: object) -> None:
        pieces.append(detached(value))
        raise _Reached

    if output:
        handle = module.register_forward_hook(lambda m, args, out: grab(out))
    else:
        handle = module.register_forward_pre_hook(lambda m, args, kwargs: grab((args, kwargs)), with_kwargs=True)
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for step, chosen in chunks(calibration, rows):
                with contextlib.suppress(_Reached):
                    denoiser_output(model, calibration.inputs(step, chosen, device))
                sizes.append(len(chosen))
    finally:
        handle.remove()
    if len(pieces) != len(sizes):
        raise QsdError(f"module {type(module).__name__} was not called by every forward pass: nothing to reconstruct")
    return _stack(pieces, sizes)


def tensors(value: object) -> list[torch.Tensor]:
    """The tensors in `value` (nested tuples, lists, dicts), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, tuple | list):
        return [t for v in value for t in tensors(v)]
    return []


def reconstruction_error(output: object, target: object) -> torch.Tensor:
    """BRECQ's loss (module docstring): squared error summed over channels, averaged over the rest, summed over
    output tensors."""
    total = torch.zeros(())
    for out, ref in zip(tensors(output), tensors(target), strict=True):
        total = total + (out.float() - ref.float()).pow(2).sum(1 if out.ndim == 4 else -1).mean()
    return total


def _block_error(block: nn.Module, inputs: object, targets: object, index: torch.Tensor, device) -> float:
    with torch.no_grad():
        args, kwargs = take(inputs, index, device)
        return float(reconstruction_error(block(*args, **kwargs), take(targets, index, device)))


def eval_index(n: int) -> torch.Tensor:
    return torch.linspace(0, n - 1, min(n, EVAL_ROWS)).round().long()


def _train(block: nn.Module, inputs: object, targets: object, index: torch.Tensor, optimizer: torch.optim.Optimizer,
           penalty: Callable[[int], torch.Tensor | float], after_step: Callable[[], None] = lambda: None,
           scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    """One Adam step per row of `index` (positions in the recordings) on the reconstruction loss plus `penalty(it)`."""
    device = next(block.parameters()).device
    for it, rows in enumerate(index):
        args, kwargs = take(inputs, rows, device)
        loss = reconstruction_error(block(*args, **kwargs), take(targets, rows, device)) + penalty(it)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        after_step()
        if scheduler is not None:
            scheduler.step()


class UnitRounding(nn.Module):
    """Parametrization of a layer's weight: the columns [start, stop) of each learned unit come from its `AdaRound`,
    the other columns are the weight as it is."""

    def __init__(self, pieces: Mapping[tuple[int, int], AdaRound]) -> None:
        super().__init__()
        self.bounds = sorted(pieces)
        self.roundings = nn.ModuleList(pieces[b] for b in self.bounds)

    def set_hard(self, hard: bool) -> None:
        for rounding in self.roundings:
            rounding.hard = hard

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.bounds == [(0, weight.shape[1])]:
            return self.roundings[0]().to(weight.dtype)
        columns, at = [], 0
        for (start, stop), rounding in zip(self.bounds, self.roundings, strict=True):
            columns += [weight[:, at:start], rounding().to(weight.dtype)]
            at = stop
        return torch.cat([*columns, weight[:, at:]], dim=1)


def attach_roundings(modules: Mapping[str, nn.Module], learned: Mapping[str, Sequence[Unit]], bits: int,
                     grid: str) -> dict[str, UnitRounding]:
    """An AdaRound per unit of `learned` (layer name → its units), initialised from the layer's current weight and
    installed as a parametrization of that weight."""
    roundings = {}
    for name, units in learned.items():
        module = modules[name]
        weight = module.weight.detach()
        rounding = UnitRounding({(u.in_start, u.in_stop): AdaRound(u.weight_slice(weight), bits, grid) for u in units})
        parametrize.register_parametrization(module, "weight", rounding)
        roundings[name] = rounding
    return roundings


def harden(modules: Mapping[str, nn.Module], roundings: Mapping[str, UnitRounding]) -> None:
    """Write the hard-rounded weights into the layers and remove the parametrizations."""
    with torch.no_grad():
        for name, rounding in roundings.items():
            rounding.set_hard(True)
            parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=True)


def rounding_penalty(roundings: Iterable[UnitRounding], settings: ReconstructionSettings
                     ) -> Callable[[int], torch.Tensor | float]:
    """λ·Σ regulariser at an iteration (0 during the warm-up)."""
    pieces = [r for rounding in roundings for r in rounding.roundings]

    def penalty(it: int) -> torch.Tensor | float:
        beta = annealed_beta(it, settings.iters, settings.warmup, settings.beta)
        return 0.0 if beta is None else settings.reg_weight * sum(r.regularizer(beta) for r in pieces)
    return penalty


def reconstruct_weights(float_model: nn.Module, quant_model: nn.Module, units: Sequence[Unit], w_bits: int,
                        calibration: CalibrationSet, settings: ReconstructionSettings = ReconstructionSettings(),
                        seed: int = 0, frozen: Iterable[str] = ()) -> dict:
    """Learn the AdaRound rounding of `units` (those of layers named in `frozen` excepted) block by block (module
    docstring) and write the hard-rounded `w_bits` weights into `quant_model` in place.

    `quant_model`'s units hold float weights (possibly rescaled) when called; its activation quantizers pass their
    inputs through meanwhile and are restored afterwards. Deterministic for a `seed`. Returns, per reconstructed block
    (module name): its learned layers, the loss before (round-to-nearest on the initial grid) and after, and
    seconds."""
    frozen = set(frozen)
    learned: dict[str, list[Unit]] = {}
    for unit in units:
        if unit.module not in frozen:
            learned.setdefault(unit.module, []).append(unit)
    float_modules, quant_modules = dict(float_model.named_modules()), dict(quant_model.named_modules())
    generator = torch.Generator().manual_seed(seed)
    stats = {}
    with activations_off(quant_model):
        for block, layers in blocks_in_call_order(quant_model, calibration):
            mine = {layer: learned[layer] for layer in layers if layer in learned}
            if not mine:
                continue
            start = time.perf_counter()
            rows, index = torch.unique(draw_rows(calibration, settings.iters, settings.batch, generator),
                                       return_inverse=True)
            inputs = record(quant_model, quant_modules[block], calibration, rows, output=False)
            targets = record(float_model, float_modules[block], calibration, rows, output=True)
            module, device, check = quant_modules[block], next(quant_model.parameters()).device, eval_index(len(rows))
            roundings = attach_roundings(quant_modules, mine, w_bits, settings.grid)
            try:
                for rounding in roundings.values():
                    rounding.set_hard(True)
                before = _block_error(module, inputs, targets, check, device)
                for rounding in roundings.values():
                    rounding.set_hard(False)
                optimizer = torch.optim.Adam([r.alpha for x in roundings.values() for r in x.roundings], lr=settings.lr,
                                             foreach=True)
                _train(module, inputs, targets, index, optimizer, rounding_penalty(roundings.values(), settings))
            finally:
                harden(quant_modules, roundings)
            stats[block] = {"layers": list(mine), "loss_before": before,
                            "loss_after": _block_error(module, inputs, targets, check, device),
                            "seconds": time.perf_counter() - start}
    return stats


def _keep_positive(quantizers: Iterable[StaticQuantizer]) -> None:
    for q in quantizers:
        q.delta.data.clamp_(min=MIN_STEP)


def learn_activation_steps(float_model: nn.Module, quant_model: nn.Module, calibration: CalibrationSet,
                           settings: StepSettings = StepSettings(), seed: int = 0) -> dict:
    """Q-Diffusion's learned step sizes: block by block (in call order), the calibrated Δ of every `StaticQuantizer`
    inside the block is learned with Adam on the block's reconstruction loss (weights fixed, inputs from the quantized
    network with its activations quantized, targets the float block's outputs; rounding passes gradients straight
    through). A block whose loss on its check rows did not fall keeps its calibrated Δ (`revert_worse`): scaled down
    to a hundred noisy iterations, the learning can end worse than it started. Quantizers with one range for all
    steps only. Returns per block its loss before/after, whether the learned Δ were kept, and seconds."""
    modules, float_modules = dict(quant_model.named_modules()), dict(float_model.named_modules())
    device = next(quant_model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    stats = {}
    for block, _ in blocks_in_call_order(quant_model, calibration):
        quantizers = [m for m in modules[block].modules() if isinstance(m, StaticQuantizer) and m.mode == "quantize"]
        if not quantizers:
            continue
        if any(q.n_sets > 1 for q in quantizers):
            raise QsdError(f"block {block}: step sizes are learned for quantizers shared by all steps only")
        start = time.perf_counter()
        rows, index = torch.unique(draw_rows(calibration, settings.iters, settings.batch, generator),
                                   return_inverse=True)
        inputs = record(quant_model, modules[block], calibration, rows, output=False)
        targets = record(float_model, float_modules[block], calibration, rows, output=True)
        check = eval_index(len(rows))
        before = _block_error(modules[block], inputs, targets, check, device)
        optimizer = torch.optim.Adam([{"params": [q.delta], "lr": settings.lr * float(q.delta.detach().abs().mean())}
                                      for q in quantizers], foreach=True)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.iters)
        for q in quantizers:
            q.delta.requires_grad_(True)
        calibrated = [q.delta.detach().clone() for q in quantizers]
        try:
            _train(modules[block], inputs, targets, index, optimizer, lambda it: 0.0,
                   functools.partial(_keep_positive, quantizers), scheduler)
        finally:
            for q in quantizers:
                q.delta.requires_grad_(False)
        after = _block_error(modules[block], inputs, targets, check, device)
        kept = after < before or not settings.revert_worse
        if not kept:
            for q, delta in zip(quantizers, calibrated, strict=True):
                q.delta.data.copy_(delta)
        stats[block] = {"loss_before": before, "loss_after": after if kept else before, "learned_kept": kept,
                        "seconds": time.perf_counter() - start}
    return stats
