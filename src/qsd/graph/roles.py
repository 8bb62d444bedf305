"""What each node of a traced denoiser does: its role and its block (paper §3.3 position codes; code.md §4).

Roles come from the layer's module name by a short list of rules that hold across diffusers' denoisers
(PixArt, Hunyuan-DiT, DiT, SD3, SD/SDXL U-Nets share their sub-module names), with one structural rule where
names are ambiguous: an attention's `to_q/to_k/to_v/to_out.0` are self-attention when its key reads the same
tensors as its query, cross-attention otherwise. A layer no rule recognises gets the generic `linear` or `conv`
role, never an error. The block of a layer is the item of a top-level module list (`transformer_blocks.k`,
`blocks.k`, `down_blocks.k`, `up_blocks.k`) or a top-level `*Block` module (`mid_block`) it lives in, numbered in
execution order; −1 outside blocks.
"""

from __future__ import annotations

import re

from torch import nn

from qsd.layers import SKIP_SUFFIX

ATTENTION_PARTS = {"to_q": "Q", "to_k": "K", "to_v": "V", "to_out.0": "Out"}
CONTEXT_PARTS = {"add_q_proj": "ctx-Q", "add_k_proj": "ctx-K", "add_v_proj": "ctx-V", "to_add_out": "ctx-Out"}
NAME_RULES: tuple[tuple[str, str], ...] = (
    (r"ff_context\.net\.0\.proj$", "ctx-FF-1"),
    (r"ff_context\.net\.2$", "ctx-FF-2"),
    (r"(^|\.)ff\.net\.0\.proj$", "FF-1"),
    (r"(^|\.)ff\.net\.2$", "FF-2"),
    (r"(^|\.)(timestep_embedder|time_embedding|time_embed|t_embedder)\.", "t-embed"),
    (r"(caption_projection|text_embedder|context_embedder|encoder_hid_proj|add_embedding|pooler|extra_embedder"
     r"|class_embedding|text_proj)", "c-embed"),
    (r"(adaln_single\.linear|norm1\.linear|norm1_context\.linear|norm_out\.linear|(^|\.)norm\.linear"
     r"|adaLN_modulation)", "adaLN"),
    (r"(pos_embed|patch_embed|x_embedder)\.proj$", "pos-embed"),
    (r"(^|\.)conv_in$", "conv-in"),
    (r"(^|\.)conv_out$", "conv-out"),
    (r"resnets\.\d+\.(conv1|conv2)$", "res-conv"),
    (r"time_emb_proj$", "time-proj"),
    (r"conv_shortcut$", "res-skip"),
    (r"downsamplers\.\d+\.conv$", "down-sample"),
    (r"upsamplers\.\d+\.conv$", "up-sample"),
    (r"skip_linear$", "skip"),
    (r"(^|\.)proj_in$", "proj-in"),
    (r"^proj_out(_\d)?$", "output"),
    (r"\.proj_out$", "proj-out"),
)
"""Module-name rules, first match wins (`unit_role` handles attention and split halves first)."""
INPUT_RULES: tuple[tuple[str, str], ...] = (
    (r"^(hidden_states|sample|x)$", "input-x"),
    (r"^(timestep|timesteps|t)$", "input-t"),
    (r"(encoder_hidden_states|class_labels|pooled_projections|text_embeds|context)", "input-c"),
)


def unit_role(unit_name: str, module: nn.Module, self_attention: bool | None) -> str:
    """Role of a weight unit (`features.WEIGHT_ROLES`). `self_attention`: for `to_q/k/v/out` of an attention,
    whether its key reads what its query reads (None when unknown: then the name decides, `attn2` = cross)."""
    if unit_name.endswith(SKIP_SUFFIX):
        return "skip"
    for suffix, part in CONTEXT_PARTS.items():
        if unit_name.endswith("." + suffix):
            return part
    for suffix, part in ATTENTION_PARTS.items():
        if unit_name.endswith("." + suffix):
            if self_attention is None:
                self_attention = not re.search(r"attn2\.[^.]+(\.0)?$", unit_name)
            return f"{'SA' if self_attention else 'CA'}-{part}"
    for pattern, role in NAME_RULES:
        if re.search(pattern, unit_name):
            return role
    return "linear" if isinstance(module, nn.Linear) else "conv"


def input_role(argument: str) -> str:
    """Role of a denoiser input (`features.INPUT_ROLES`) from its argument name."""
    for pattern, role in INPUT_RULES:
        if re.search(pattern, argument.rsplit(".", 1)[-1]):
            return role
    return "input-other"


def block_prefixes(model: nn.Module) -> set[str]:
    """Top-level container paths that are blocks: `<list>.<k>` items of top-level ModuleLists, and top-level
    modules whose class name contains `Block` (the order comes from the trace)."""
    blocks = set()
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            blocks.update(f"{name}.{k}" for k in range(len(child)))
        elif "Block" in type(child).__name__:
            blocks.add(name)
    return blocks


def block_of(module_name: str, blocks: set[str]) -> str | None:
    """The block container path of a module, or None outside blocks."""
    parts = module_name.split(".")
    for depth in (2, 1):
        prefix = ".".join(parts[:depth])
        if prefix in blocks:
            return prefix
    return None


def owner_of(module_name: str, model: nn.Module) -> str:
    """The nearest enclosing module that is a block of some kind (class name with `Block`, or a
    `Transformer2DModel` inside a U-Net): the scope within which SA/CA/FF/res units are formed."""
    parts = module_name.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:depth])
        cls = type(model.get_submodule(prefix)).__name__
        if "Block" in cls or cls.endswith("Transformer2DModel"):
            return prefix
    return ".".join(parts[:-1])
