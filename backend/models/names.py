"""The one map between diffusers' Wan module names and the original Wan names (musubi-tuner, ComfyUI, LoRA files).

Works on dotted module or parameter names, e.g. `blocks.3.attn1.to_q.weight` <-> `blocks.3.self_attn.q.weight`.
"""
from __future__ import annotations

import re

# Inside `blocks.<i>.`: diffusers suffix -> original suffix (module level; parameter suffixes ride along).
_BLOCK_PAIRS = [
    ("attn1.to_q", "self_attn.q"),
    ("attn1.to_k", "self_attn.k"),
    ("attn1.to_v", "self_attn.v"),
    ("attn1.to_out.0", "self_attn.o"),
    ("attn1.norm_q", "self_attn.norm_q"),
    ("attn1.norm_k", "self_attn.norm_k"),
    ("attn2.to_q", "cross_attn.q"),
    ("attn2.to_k", "cross_attn.k"),
    ("attn2.to_v", "cross_attn.v"),
    ("attn2.to_out.0", "cross_attn.o"),
    ("attn2.norm_q", "cross_attn.norm_q"),
    ("attn2.norm_k", "cross_attn.norm_k"),
    ("attn2.add_k_proj", "cross_attn.k_img"),
    ("attn2.add_v_proj", "cross_attn.v_img"),
    ("attn2.norm_added_k", "cross_attn.norm_k_img"),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("norm2", "norm3"),
    ("scale_shift_table", "modulation"),
]

# Top level: diffusers prefix -> original prefix.
_TOP_PAIRS = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("proj_out", "head.head"),
    ("scale_shift_table", "head.modulation"),
    ("patch_embedding", "patch_embedding"),
]

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")

# Original names of the default LoRA targets inside a block (musubi-compatible), in file order.
BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                 "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
I2V_EXTRA_LINEARS = ("cross_attn.k_img", "cross_attn.v_img")


def _swap(name: str, pairs: list[tuple[str, str]], src: int) -> str | None:
    dst = 1 - src
    for pair in pairs:
        prefix = pair[src]
        if name == prefix or name.startswith(prefix + "."):
            return pair[dst] + name[len(prefix):]
    return None


def _convert(name: str, src: int) -> str:
    match = _BLOCK_RE.match(name)
    if match:
        index, rest = match.groups()
        converted = _swap(rest, _BLOCK_PAIRS, src)
        return f"blocks.{index}.{converted if converted is not None else rest}"
    converted = _swap(name, _TOP_PAIRS, src)
    return converted if converted is not None else name


def diffusers_to_wan(name: str) -> str:
    """`blocks.0.attn1.to_out.0.weight` -> `blocks.0.self_attn.o.weight`; unknown names pass through."""
    return _convert(name, 0)


def wan_to_diffusers(name: str) -> str:
    """`blocks.0.self_attn.o.weight` -> `blocks.0.attn1.to_out.0.weight`; unknown names pass through."""
    return _convert(name, 1)


def block_index(name: str) -> int | None:
    """The block number of a dotted name (either naming), or None outside the blocks."""
    match = _BLOCK_RE.match(name)
    return int(match.group(1)) if match else None


def lora_key_prefix(wan_module_name: str) -> str:
    """`blocks.0.self_attn.q` -> `lora_unet_blocks_0_self_attn_q` (musubi / ComfyUI file layout)."""
    return "lora_unet_" + wan_module_name.replace(".", "_")
