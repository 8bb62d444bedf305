"""Learned Equivalent Scaling with adaptive timestep weighting (DMQ, Lee et al., ICCV 2025, §3.2-3.3;
baselines.md §1.3).

Every quantized layer y = x ⊛ W is rewritten as y = (x/γ) ⊛ (W·γ) with one learnable γ per input channel. In
float the two are the same function; quantized, Q(x/γ) ⊛ Q(W·γ) moves range between the activation and the weight
side channel by channel. Unlike SmoothQuant's closed-form scale, γ is learned by gradient descent, layer by layer,
on the float network's own inputs and outputs, with a loss that re-weights the sampling steps as it goes.

Notation:
  x      a layer's float input (channels on dim 1 for convolutions, the last dim for linear layers); C input channels
  W      its float weight [O, C, ...];  γ [C] the learned scale, initialised to 1
  Q_a    per-tensor asymmetric min/max quantization of the current batch (dynamic), one range per unit (the two
         halves of a concatenation-fed layer separately), STE rounding
  Q_w    per-output-channel asymmetric min/max quantization of W·γ (dynamic), per unit, STE rounding
  ŷ      Q_a(x/γ) ⊛ Q_w(W·γ) + b,  y = x ⊛ W + b
  e_i    Σ_channels (ŷ_i − y_i)², averaged over the spatial positions / tokens, for pool sample i at step k_i
  Λ      one slot per calibration step: Λ_k ← m·Λ_k + (1 − m)·Σ_{i: k_i = k} e_i  (m = 0.95; absent steps decay)
  λ_k    (1 − Λ_k / Σ_k' Λ_k')^r,  r = 20: no gradient, not normalised
  loss   mean_i λ_{k_i}·e_i

Steps (`learn_scales`):
  1. the pool: `rows_per_step` random rows of every calibration step; one float pass records every LES layer's
     input on it (layers in groups, to bound memory);
  2. per layer, separately: γ = 1, Adam(lr) with cosine decay to 0 over `iters` mini-batches of `batch` samples
     drawn from the pool (all steps mixed), loss above (or uniform: λ = 1);
  3. return γ per layer. `fold_scales_` then stores W·γ in the layer; its input must be divided by γ from then on
     (the layer's `StaticQuantizer` carries γ as its `smooth` divisors).

Ranges are taken from detached values, so γ gets its gradient through the rounding's straight-through path only.
The paper trains 6,000 iterations per layer (4,000 for LSUN-Churches) with batch 32 over 5,120 pool samples; for the
tiny models the defaults of `qsd.baselines.dmq.Settings` scale this down.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qsd.actquant.attach import channel_dim
from qsd.actquant.static import round_ste
from qsd.baselines.calibration import CalibrationSet, denoiser_output
from qsd.errors import InvalidSettingError, QsdError

WEIGHTINGS = ("adaptive", "uniform")
EVAL_SAMPLES = 128
"""Pool samples (spread over the pool) on which a layer's loss before and after is reported."""
CACHE_BYTES = 256 * 2**20
"""At most this many bytes of cached layer inputs at once (layers beyond it are recorded in a further pass)."""


# ---- the adaptive timestep weighting ------------------------------------------------------------------------------

def update_buffer(buffer: torch.Tensor, errors: torch.Tensor, steps: torch.Tensor, momentum: float) -> torch.Tensor:
    """Λ after one batch: Λ_k ← m·Λ_k + (1 − m)·(sum of the batch's `errors` whose step is k), for every slot k."""
    sums = torch.zeros_like(buffer).index_add_(0, steps, errors.detach().to(buffer.dtype))
    return momentum * buffer + (1 - momentum) * sums


def adaptive_weights(buffer: torch.Tensor, power: float) -> torch.Tensor:
    """λ_k = (1 − Λ_k / Σ Λ)^r per slot (all 1 while Λ is zero)."""
    total = buffer.sum()
    if total <= 0:
        return torch.ones_like(buffer)
    return (1 - buffer / total).clamp(min=0) ** power


# ---- the scaled, dynamically quantized layer ----------------------------------------------------------------------

def fake_quant_tensor(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric min/max quantization of `x` as one tensor (range detached, zero included), STE rounding."""
    levels = (1 << bits) - 1
    data = x.detach()
    low, high = data.min().clamp(max=0), data.max().clamp(min=0)
    delta = ((high - low) / levels).clamp(min=1e-8)
    zero = torch.round(-low / delta)
    return (torch.clamp(round_ste(x / delta) + zero, 0, levels) - zero) * delta


def fake_quant_rows(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric min/max quantization of every output channel (dim 0) of `w` (ranges detached, zero included), STE
    rounding."""
    levels = (1 << bits) - 1
    rows = w.detach().reshape(w.shape[0], -1)
    low, high = rows.min(1).values.clamp(max=0), rows.max(1).values.clamp(min=0)
    delta = ((high - low) / levels).clamp(min=1e-8)
    zero = torch.round(-low / delta)
    shape = (-1,) + (1,) * (w.ndim - 1)
    delta, zero = delta.reshape(shape), zero.reshape(shape)
    return (torch.clamp(round_ste(w / delta) + zero, 0, levels) - zero) * delta


def layer_forward(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`module` (Linear or Conv) applied to `x` with `weight` in place of its own (its hooks bypassed, no gradient to
    its bias)."""
    bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


def channel_shape(ndim: int, dim: int) -> list[int]:
    shape = [1] * ndim
    shape[dim] = -1
    return shape


def scaled_quantized_forward(module: nn.Module, x: torch.Tensor, gamma: torch.Tensor, bounds: Sequence[tuple[int, int]],
                             w_bits: int, a_bits: int | None) -> torch.Tensor:
    """Q_a(x/γ) ⊛ Q_w(W·γ) + b, each input-channel block [start, stop) of `bounds` quantized on its own (a_bits None:
    the activation side stays float)."""
    dim = channel_dim(module)
    xs = x / gamma.reshape(channel_shape(x.ndim, dim))
    ws = module.weight.detach() * gamma.reshape(channel_shape(module.weight.ndim, 1))
    if a_bits is not None:
        xs = torch.cat([fake_quant_tensor(xs.narrow(dim, a, b - a), a_bits) for a, b in bounds], dim=dim)
    wq = torch.cat([fake_quant_rows(ws[:, a:b], w_bits) for a, b in bounds], dim=1)
    return layer_forward(module, xs, wq)


def sample_errors(output: torch.Tensor, target: torch.Tensor, out_dim: int) -> torch.Tensor:
    """e_i: squared error summed over the output channels (`out_dim`), averaged over the rest, per sample."""
    sq = (output - target).square().sum(out_dim)
    return sq.reshape(sq.shape[0], -1).mean(1)


def learn_layer_scale(module: nn.Module, bounds: Sequence[tuple[int, int]], inputs: torch.Tensor, steps: torch.Tensor,
                      n_steps: int, w_bits: int, a_bits: int | None, iters: int, batch: int, lr: float,
                      momentum: float, power: float, weighting: str, generator: torch.Generator) -> tuple[torch.Tensor,
                                                                                                         dict]:
    """γ [C] for one layer from its cached float `inputs` (pool samples on dim 0) at calibration steps `steps`;
    returns γ and statistics: the mean e_i before and after, and after with the final λ weights, on up to
    `EVAL_SAMPLES` pool samples."""
    if weighting not in WEIGHTINGS:
        raise InvalidSettingError(f"unknown LES weighting {weighting!r}; one of {', '.join(WEIGHTINGS)}")
    dim = channel_dim(module)
    width = module.weight.shape[1]
    gamma = nn.Parameter(torch.ones(width, dtype=module.weight.dtype))
    out_dim = 1 if dim == 1 else -1
    with torch.no_grad():
        targets = torch.cat([layer_forward(module, inputs[i:i + 256], module.weight.detach())
                             for i in range(0, len(inputs), 256)])
    optimizer = torch.optim.Adam([gamma], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(iters, 1), eta_min=0.0)
    buffer = torch.zeros(n_steps, dtype=torch.float64)

    check = torch.linspace(0, len(inputs) - 1, min(len(inputs), EVAL_SAMPLES)).round().long()

    def check_errors() -> torch.Tensor:
        """e_i on the `check` samples of the pool (for the record)."""
        with torch.no_grad():
            return sample_errors(scaled_quantized_forward(module, inputs[check], gamma, bounds, w_bits, a_bits),
                                 targets[check], out_dim)

    before = float(check_errors().mean())
    for _ in range(iters):
        rows = torch.randint(len(inputs), (min(batch, len(inputs)),), generator=generator)
        output = scaled_quantized_forward(module, inputs[rows], gamma, bounds, w_bits, a_bits)
        errors = sample_errors(output, targets[rows], out_dim)
        if weighting == "adaptive":
            buffer = update_buffer(buffer, errors, steps[rows], momentum)
            weights = adaptive_weights(buffer, power)[steps[rows]].to(errors.dtype)
        else:
            weights = torch.ones_like(errors)
        loss = (weights * errors).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    after = check_errors()
    final = adaptive_weights(buffer, power)[steps[check]].to(after.dtype) if weighting == "adaptive" else 1.0
    return gamma.detach().clone(), {"loss_before": before, "loss_after": float(after.mean()),
                                    "weighted_loss_after": float((final * after).mean()),
                                    "gamma_min": float(gamma.detach().min()), "gamma_max": float(gamma.detach().max())}


# ---- recording inputs and the whole pass --------------------------------------------------------------------------

class _Stop(Exception):
    """Ends a forward pass once every wanted input is recorded."""


def pool_rows(calibration: CalibrationSet, rows_per_step: int, generator: torch.Generator) -> list[torch.Tensor]:
    """`rows_per_step` distinct random rows of every calibration step (all of them if fewer), sorted."""
    n = calibration.batch
    return [torch.randperm(n, generator=generator)[:min(rows_per_step, n)].sort().values
            for _ in range(len(calibration))]


def record_inputs(denoiser: nn.Module, names: Sequence[str], calibration: CalibrationSet,
                  rows: Sequence[torch.Tensor], chunk: int = 64) -> dict[str, torch.Tensor]:
    """The input of every module in `names` over `rows[k]` of every step k (steps concatenated in order), one sample
    per row of dim 0: a Linear fed batch and tokens flattened together (HunyuanDiT's T5 projection) gets them apart
    again. The forward stops after the last wanted module."""
    modules = dict(denoiser.named_modules())
    wanted = set(names)
    recorded: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    seen: set[str] = set()
    samples = [0]

    def hook(module, args, name):
        x = args[0].detach().clone()
        if isinstance(module, nn.Linear) and x.shape[0] != samples[0] and x.shape[0] % samples[0] == 0:
            x = x.reshape(samples[0], -1, *x.shape[1:])
        recorded[name].append(x)
        seen.add(name)
        if seen == wanted:
            raise _Stop

    handles = [modules[n].register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in names]
    device = next(denoiser.parameters()).device
    try:
        with torch.no_grad():
            for step, step_rows in enumerate(rows):
                for start in range(0, len(step_rows), chunk):
                    seen.clear()
                    samples[0] = len(step_rows[start:start + chunk])
                    try:
                        denoiser_output(denoiser, calibration.inputs(step, step_rows[start:start + chunk], device))
                    except _Stop:
                        pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, v in recorded.items() if not v]
    if missing:
        raise QsdError(f"layers {missing[:3]} never ran on the calibration inputs; LES needs layers the forward calls")
    return {n: torch.cat(v) for n, v in recorded.items()}


def learn_scales(denoiser: nn.Module, layers: dict[str, Sequence[tuple[int, int]]], calibration: CalibrationSet,
                 w_bits: int, a_bits: int | None, iters: int, batch: int = 32, lr: float = 1e-3,
                 rows_per_step: int = 16, momentum: float = 0.95, power: float = 20.0, weighting: str = "adaptive",
                 order: Sequence[str] | None = None, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """γ for every layer of `layers` (module name → its units' input-channel blocks) of the float `denoiser` (not
    changed); returns γ per module and per-module statistics. `order`: the modules in call order (groups of
    recorded inputs follow it); a layer of `layers` missing from it is never called as a module (HunyuanDiT's
    attention pooling reads its projections' weights directly) and gets no γ."""
    generator = torch.Generator().manual_seed(seed)
    rows = pool_rows(calibration, rows_per_step, generator)
    steps = torch.cat([torch.full((len(r),), k, dtype=torch.long) for k, r in enumerate(rows)])
    names = [n for n in (layers if order is None else order) if n in layers]
    modules = dict(denoiser.named_modules())
    sizes = _input_sizes(denoiser, names, calibration)
    gammas: dict[str, torch.Tensor] = {}
    stats: dict[str, dict] = {}
    pool = len(steps)
    group: list[str] = []
    for i, name in enumerate(names):
        group.append(name)
        last = i == len(names) - 1
        if not last and sum(sizes[n] for n in group + [names[i + 1]]) * pool <= CACHE_BYTES:
            continue
        inputs = record_inputs(denoiser, group, calibration, rows)
        for layer in group:
            module = modules[layer]
            with torch.enable_grad():
                gammas[layer], stats[layer] = learn_layer_scale(
                    module, layers[layer], inputs.pop(layer), steps, len(calibration), w_bits, a_bits, iters, batch,
                    lr, momentum, power, weighting, generator)
        group = []
    return gammas, stats


def _input_sizes(denoiser: nn.Module, names: Sequence[str], calibration: CalibrationSet) -> dict[str, int]:
    """Bytes of one sample's input to each module of `names`."""
    one = record_inputs(denoiser, names, calibration, [torch.arange(1)])
    return {n: v[0].numel() * v.element_size() for n, v in one.items()}


def fold_scales_(denoiser: nn.Module, gammas: dict[str, torch.Tensor]) -> None:
    """Store W·γ in every layer of `gammas` (input channels: weight dim 1), in place."""
    modules = dict(denoiser.named_modules())
    for name, gamma in gammas.items():
        weight = modules[name].weight
        weight.data.mul_(gamma.to(weight.dtype).reshape(channel_shape(weight.ndim, 1)))
