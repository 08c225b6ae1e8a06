"""Key names of LoRA-family files: which Wan module a key belongs to, and which tensor of the adapter it is.

The canonical layout is musubi / ComfyUI's: `lora_unet_<Wan name with '.'→'_'>.<suffix>`. Underscores make the
prefix ambiguous (`self_attn_q` vs `self.attn_q`), so the prefix is decoded by matching it against the Wan module
names adapters can target, never by guessing where the dots were.
"""
from __future__ import annotations

import re

from backend.errors import UserError
from backend.models.names import BLOCK_LINEARS, I2V_EXTRA_LINEARS, lora_key_prefix

# Modules inside `blocks.<i>.` that adapters can target (every Linear of a Wan block).
BLOCK_MODULES = BLOCK_LINEARS + I2V_EXTRA_LINEARS
# Top-level Linear / Conv modules of the Wan transformer (original names).
TOP_LEVEL_MODULES = ("patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0",
                     "time_embedding.2", "time_projection.1", "head.head", "img_emb.proj.1", "img_emb.proj.3")

LORA_SUFFIXES = ("lora_down.weight", "lora_up.weight")
LOHA_SUFFIXES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_SUFFIXES = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
SHARED_SUFFIXES = ("alpha", "dora_scale")
CANONICAL_SUFFIXES = LORA_SUFFIXES + LOHA_SUFFIXES + LOKR_SUFFIXES + SHARED_SUFFIXES

_BLOCK_PREFIX_RE = re.compile(r"^lora_unet_blocks_(\d+)_(.+)$")
_BLOCK_NAME_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BLOCK_BY_UNDERSCORED = {name.replace(".", "_"): name for name in BLOCK_MODULES}
_TOP_BY_PREFIX = {lora_key_prefix(name): name for name in TOP_LEVEL_MODULES}


def module_name_from_prefix(prefix: str) -> str:
    """`lora_unet_blocks_0_self_attn_q` -> `blocks.0.self_attn.q`; a prefix naming no known Wan module is a UserError."""
    match = _BLOCK_PREFIX_RE.match(prefix)
    if match:
        inner = _BLOCK_BY_UNDERSCORED.get(match.group(2))
        if inner is not None:
            return f"blocks.{int(match.group(1))}.{inner}"
    elif prefix in _TOP_BY_PREFIX:
        return _TOP_BY_PREFIX[prefix]
    raise UserError(f"The LoRA key `{prefix}` names no Wan transformer module this app knows "
                    f"(expected names like `lora_unet_blocks_0_self_attn_q`); the file is for another model.")


def is_wan_module(name: str) -> bool:
    """True for original Wan names adapters can target: `blocks.3.ffn.0`, `head.head`, ..."""
    match = _BLOCK_NAME_RE.match(name)
    if match:
        return match.group(2) in BLOCK_MODULES
    return name in TOP_LEVEL_MODULES


def split_canonical_key(key: str) -> tuple[str, str]:
    """`lora_unet_blocks_0_ffn_0.lora_down.weight` -> (`lora_unet_blocks_0_ffn_0`, `lora_down.weight`)."""
    prefix, _, suffix = key.partition(".")
    if not suffix or suffix not in CANONICAL_SUFFIXES:
        raise UserError(f"The tensor `{key}` is not part of a LoRA / LoHa / LoKr adapter "
                        f"(expected a `.lora_down.weight`, `.lora_up.weight`, `.alpha`, `.hada_*` or `.lokr_*` key).")
    return prefix, suffix


def split_dotted_key(key: str, suffixes: tuple[str, ...]) -> tuple[str, str] | None:
    """`blocks.0.self_attn.q.lora_A.weight` -> (`blocks.0.self_attn.q`, `lora_A.weight`) for the longest matching suffix."""
    for suffix in sorted(suffixes, key=len, reverse=True):
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    return None


def block_of(module_name: str) -> int | None:
    match = _BLOCK_NAME_RE.match(module_name)
    return int(match.group(1)) if match else None


def module_sort_key(module_name: str) -> tuple:
    """Blocks in numeric order, then musubi's file order inside a block; top-level modules last, by name."""
    match = _BLOCK_NAME_RE.match(module_name)
    if match:
        inner = match.group(2)
        position = BLOCK_MODULES.index(inner) if inner in BLOCK_MODULES else len(BLOCK_MODULES)
        return (0, int(match.group(1)), position, inner)
    return (1, 0, 0, module_name)
