import pytest
import torch
from torch import nn

from qsd import quantizable_units
from qsd.layers import SKIP_SUFFIX, concat_boundaries
from qsd.models.random_init import RANDOM_ARCHITECTURES, example_inputs, random_denoiser


def observed_concat_widths(arch):
    """Record, for every module, the widths of the pieces of a torch.cat that produced its input."""
    model = random_denoiser(arch)
    made = {}
    real_cat = torch.cat

    def recording_cat(tensors, dim=0, **kw):
        out = real_cat(tensors, dim=dim, **kw)
        made[id(out)] = [t.shape[dim] for t in tensors]
        return out

    seen = {}

    def hook(name):
        def pre(module, args):
            # inputs may pass through norm/activation first; look at the resnet / block input instead
            seen.setdefault(name, made.get(id(args[0])) if args else None)
        return pre

    for name, module in model.named_modules():
        if name.endswith(".skip_norm") or (".resnets." in name and name.count(".") == 3):
            module.register_forward_pre_hook(hook(name))
    torch.cat = recording_cat
    try:
        with torch.no_grad():
            model(**example_inputs(arch))
    finally:
        torch.cat = real_cat
    return model, seen


@pytest.mark.parametrize("arch", ["sd15_unet", "sdxl_unet", "hunyuan_dit"])
def test_split_boundaries_match_the_real_concatenations(arch):
    model, seen = observed_concat_widths(arch)
    boundaries = concat_boundaries(model)
    assert boundaries, "expected concatenation-fed layers"
    for name, cut in boundaries.items():
        owner = name.rsplit(".", 1)[0] + (".skip_norm" if name.endswith("skip_linear") else "")
        widths = seen[owner]
        assert widths is not None and len(widths) == 2, (name, widths)
        assert widths[0] == cut, (name, widths, cut)


def test_every_linear_and_conv_is_covered_exactly_once():
    for arch in RANDOM_ARCHITECTURES:
        model = random_denoiser(arch)
        units = quantizable_units(model)
        layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}
        covered = {}
        for u in units:
            covered.setdefault(u.module, []).append((u.in_start, u.in_stop))
        assert set(covered) == set(layers)
        for name, spans in covered.items():
            spans.sort()
            assert spans[0][0] == 0 and spans[-1][1] == layers[name].weight.shape[1]
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_split_can_be_disabled():
    model = random_denoiser("sd15_unet")
    assert any(u.name.endswith(SKIP_SUFFIX) for u in quantizable_units(model))
    assert not any(u.name.endswith(SKIP_SUFFIX) for u in quantizable_units(model, split_concat_inputs=False))
