"""Activation offload: the inputs gradient checkpointing keeps for each block wait in CPU memory until backward.

    model.enable_gradient_checkpointing()
    offload_activations(model, torch.device("cuda"))

With gradient checkpointing a block keeps only its input (for Wan, the hidden states: tokens × width, 335 MB per
block at 14B and 81×480×832 in bf16) and runs its forward again in backward. Here that input is copied to CPU memory
(pinned when CUDA exists) on a side stream as soon as the block has it, and the device copy is dropped once the
block's forward is done; in backward the recomputation takes a fresh device copy, and the input of the block that
backward reaches next is already on its way (reverse order). The gradient still flows through the original forward
graph, so losses and gradients are the same numbers as plain checkpointing.

It works by replacing the model's checkpoint function (diffusers' `_gradient_checkpointing_func`, which the Wan
forward calls as `f(block, hidden_states, *rest)`) with one that checkpoints `block(stash.take(), *rest)`: the
first `take()` is the forward's own tensor, later ones copies from CPU memory. Without CUDA the "CPU copy" is a
plain copy and the fetch another one, so the tests run the same code. Combine freely with block swap.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from backend.errors import UserError

_ATTRIBUTE = "_activation_offload"


class _Stash:
    """One checkpointed block's input: the forward's tensor once, then (pinned) CPU memory and device copies."""

    def __init__(self, tensor: torch.Tensor, offload: "ActivationOffload", position: int) -> None:
        self.offload = offload
        self.position = position
        self.device = tensor.device
        self.requires_grad = tensor.requires_grad
        self.original = tensor
        self.host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=offload.cuda)
        self.copy_event = None
        if offload.cuda:
            stream = offload.stream
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self.host.copy_(tensor.detach(), non_blocking=True)
                self.copy_event = stream.record_event()
            tensor.record_stream(stream)  # its memory is not reused before the copy has read it
        else:
            self.host.copy_(tensor.detach())
        self.fetched = None
        self.fetch_event = None
        offload.stashes.append(weakref.ref(self))
        offload.copies_to_host += 1

    def prefetch(self) -> None:
        if self.fetched is not None:
            return
        fetched = torch.empty_like(self.host, device=self.device)
        if self.offload.cuda:
            stream = self.offload.stream
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                fetched.copy_(self.host, non_blocking=True)
                self.fetch_event = stream.record_event()
        else:
            fetched.copy_(self.host)
        self.fetched = fetched
        self.offload.copies_to_device += 1

    def take(self) -> torch.Tensor:
        if self.original is not None:  # the forward pass: its own tensor, which the graph links to the previous block
            tensor, self.original = self.original, None
            return tensor
        self.prefetch()
        if self.fetch_event is not None:
            torch.cuda.current_stream(self.device).wait_event(self.fetch_event)
        tensor, self.fetched, self.fetch_event = self.fetched, None, None
        tensor.requires_grad_(self.requires_grad)  # the recomputation saves what the forward saved
        earlier = self.offload.stash_at(self.position - 1)
        if earlier is not None and self.requires_grad:  # backward goes on below this block
            earlier.prefetch()
        return tensor


def _run_block(block: nn.Module, stash: _Stash, *rest):
    return block(stash.take(), *rest)


class ActivationOffload:
    """The checkpoint function that offloads each block's input; `copies_to_host` / `copies_to_device` count copies."""

    def __init__(self, model: nn.Module, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.stashes: list[weakref.ref] = []
        self.copies_to_host = self.copies_to_device = 0
        self.model_checkpoint = model._gradient_checkpointing_func
        self._handle = model.register_forward_pre_hook(self._new_forward)

    def stash_at(self, position: int) -> _Stash | None:
        return self.stashes[position]() if 0 <= position < len(self.stashes) else None

    @torch.compiler.disable
    def _new_forward(self, module, args) -> None:
        if torch._C._current_graph_task_id() == -1:
            self.stashes = []

    @torch.compiler.disable
    def __call__(self, block: nn.Module, hidden_states: torch.Tensor, *rest):
        stash = _Stash(hidden_states, self, len(self.stashes))
        return checkpoint(_run_block, block, stash, *rest, use_reentrant=False)

    def remove(self, model: nn.Module) -> None:
        self._handle.remove()
        model._gradient_checkpointing_func = self.model_checkpoint


def offload_activations(model: nn.Module, device: torch.device | str) -> ActivationOffload:
    """Keep the checkpointed blocks' inputs in CPU memory between forward and backward (see the module docstring).
    The model must have gradient checkpointing on."""
    if not getattr(model, "gradient_checkpointing", False):
        raise UserError("offload_activations moves the block inputs that gradient checkpointing keeps, and "
                        "checkpointing is off; turn gradient_checkpointing on or offload_activations off.")
    remove_activation_offload(model)
    offload = ActivationOffload(model, device)
    model._gradient_checkpointing_func = offload
    model.__dict__[_ATTRIBUTE] = offload
    return offload


def activation_offload_of(model: nn.Module) -> ActivationOffload | None:
    return model.__dict__.get(_ATTRIBUTE)


def remove_activation_offload(model: nn.Module) -> None:
    offload = model.__dict__.pop(_ATTRIBUTE, None)
    if offload is not None:
        offload.remove(model)
