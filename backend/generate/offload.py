"""CPU offload of whatever a generation is not using: the text encoder, each transformer and the VAE wait in CPU
memory and move to the GPU only while they run.

The parts form one chain in the order they run (text encoder → transformer → transformer_2 → VAE): when a part
starts, the part before it goes back to the CPU, so an A14B pair swaps its experts at the boundary timestep and the
VAE finds the GPU free for the decode. A transformer with block swap keeps its swapped blocks in CPU memory through
these moves. `offload_all` parks everything again between prompts. The hooks are accelerate's (`cpu_offload_with_hook`),
which also route the VAE's `decode` (diffusers' `apply_forward_hook`); the devices of the inputs follow
`engine.execution_device`.
"""
from __future__ import annotations

import torch

CHAIN = ("text_encoder", "image_encoder", "transformer", "transformer_2", "vae")
_HOOK = "_loraid_offload_hook"  # on each hooked part: its accelerate hook (pipelines sharing parts share them)


def offload_idle_parts(pipeline, device: torch.device | str, stream_text_encoder: bool = False) -> list:
    """Attach the chain of offload hooks to the pipeline's parts (computing on `device`); returns the hooks.

    `stream_text_encoder`: the text encoder (UMT5-XXL is 11 GB in bf16) never moves whole; each of its layers is
    copied to `device` for its own forward (accelerate's `cpu_offload`), for cards smaller than it."""
    from accelerate import cpu_offload, cpu_offload_with_hook

    previous, hooks = None, []
    for name in CHAIN:
        module = getattr(pipeline, name, None)
        if not isinstance(module, torch.nn.Module):
            continue
        if name == "text_encoder" and stream_text_encoder:
            cpu_offload(module, execution_device=torch.device(device))
            continue
        _, previous = cpu_offload_with_hook(module, torch.device(device), prev_module_hook=previous)
        module.__dict__[_HOOK] = previous
        hooks.append(previous)
    return hooks


def offload_hooks(pipeline) -> list:
    parts = (getattr(pipeline, name, None) for name in CHAIN)
    return [part.__dict__[_HOOK] for part in parts if isinstance(part, torch.nn.Module) and _HOOK in part.__dict__]


def offload_all(pipeline) -> None:
    """Every hooked part back to the CPU (after a prompt's decode, before the next prompt's encoding)."""
    for hook in offload_hooks(pipeline):
        hook.offload()


def is_offloaded(pipeline) -> bool:
    return bool(offload_hooks(pipeline))
