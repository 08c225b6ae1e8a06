"""Partial gradient checkpointing: the last N blocks keep their activations, the others are recomputed in backward.

    model.enable_gradient_checkpointing()
    keep_activations(model, blocks=10)       # blocks 0..29 of 40 checkpointed, 30..39 not

diffusers' Wan forward calls the model's checkpoint function as `f(block, hidden_states, *rest)` for every block
when checkpointing is on; here that function runs the kept blocks plainly (autograd saves what they need) and
passes the others on to the function it replaced. Recomputation gives the same numbers, so losses and gradients do
not change, only memory (more) and time (less: no second forward for the kept blocks). The kept blocks are the
last ones because block swap takes the first ones, and swapped blocks must be checkpointed.
"""
from __future__ import annotations

import torch.nn as nn

from backend.errors import UserError


def check_uncheckpointed_blocks(blocks: int, num_blocks: int, label: str) -> None:
    """One sentence when the number of uncheckpointed blocks does not fit the model."""
    if blocks < 0 or blocks > num_blocks:
        raise UserError(f"uncheckpointed_blocks={blocks} does not fit the {label}, which has {num_blocks} blocks; use "
                        f"a number from 0 to {num_blocks}.")


def keep_activations(model: nn.Module, blocks: int) -> None:
    """Run the last `blocks` of `model.blocks` without checkpointing; no-op for 0."""
    count = len(model.blocks)
    check_uncheckpointed_blocks(blocks, count, type(model).__name__)
    if blocks == 0:
        return
    kept = {id(block) for block in list(model.blocks)[count - blocks:]}
    checkpointed = model._gradient_checkpointing_func

    def checkpoint_or_run(block, *args, **kwargs):
        if id(block) in kept:
            return block(*args, **kwargs)
        return checkpointed(block, *args, **kwargs)

    model._gradient_checkpointing_func = checkpoint_or_run
