"""Dotted Wan module names of an allocation, and which module group a name belongs to."""
from __future__ import annotations

from typing import Iterable, Sequence

from backend.loraid.allocation import MODULE_GROUPS, Allocation
from backend.models.names import BLOCK_LINEARS, I2V_EXTRA_LINEARS, block_index


def group_of(module_name: str) -> str | None:
    """`blocks.3.cross_attn.k_img` -> "cross_attn"; None for names outside a block's three groups."""
    if block_index(module_name) is None:
        return None
    inner = module_name.split(".", 2)[2]
    group = inner.split(".", 1)[0]
    return group if group in MODULE_GROUPS else None


def block_targets(image_attention: bool = False) -> tuple[str, ...]:
    """The default LoRA targets inside one block (musubi's): 10 Linears, 12 with Wan2.1 I2V's k_img / v_img."""
    return BLOCK_LINEARS + (I2V_EXTRA_LINEARS if image_attention else ())


def owned_modules(allocation: Allocation, targets: Sequence[str] = BLOCK_LINEARS) -> list[str]:
    """Dotted names (`blocks.4.self_attn.q`) of the default targets the allocation owns, block-major."""
    names = []
    for block in allocation.blocks:
        groups = allocation.groups_of(block)
        names += [f"blocks.{block}.{inner}" for inner in targets if inner.split(".", 1)[0] in groups]
    return names


def all_block_modules(num_blocks: int, targets: Sequence[str] = BLOCK_LINEARS) -> list[str]:
    """Every default target of a model with `num_blocks` blocks, in musubi's order."""
    return [f"blocks.{block}.{inner}" for block in range(num_blocks) for inner in targets]


def blocks_of(module_names: Iterable[str]) -> set[int]:
    return {block for block in map(block_index, module_names) if block is not None}
