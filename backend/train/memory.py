"""Memory and speed options applied to the frozen base after the adapters are injected.

fp8_base: diffusers layerwise casting stores the base weights in float8_e4m3fn and upcasts each layer for its
forward; the adapters are not submodules of the model, so they stay fp32. fp8_scaled: the block Linears hold fp8 +
a per-row fp32 scale (backend/models/fp8_scaled.py), applied while the model is loaded (build_networks), before it
goes to the GPU. attn_mode: diffusers' attention
dispatcher (sdpa = PyTorch's own; flash / sage need their packages). compile: `torch.compile` of the repeated
transformer blocks. blocks_to_swap: the first N blocks' base weights live in CPU memory and are copied to the GPU
ahead of use (backend/models/block_swap.py); offload_activations: the block inputs gradient checkpointing keeps wait
in CPU memory until backward (backend/models/activation_offload.py). Both need gradient checkpointing.

The `auto` choices (the defaults):
- compile: on when CUDA is available and triton is importable (torch.compile's GPU code generator), else off.
- attn_mode: on CUDA the first installed entry of `AUTO_ATTENTION` (fastest first, by `bench/bench_speed_paths.py`
  on the Wan bench shape; re-run it on new hardware and reorder): FlashAttention 3 (Hopper), FlashAttention 2,
  SDPA's cuDNN kernel on compute capability 9.0+, then SDPA as PyTorch dispatches it. Sage is not a candidate for
  training: its kernels have no backward pass (it stays selectable for generation). Off CUDA: SDPA.
"""
from __future__ import annotations

import importlib.util

import torch

from backend.errors import UserError
from backend.models.activation_offload import offload_activations
from backend.models.block_swap import check_blocks_to_swap, enable_block_swap
from backend.models.partial_checkpoint import check_uncheckpointed_blocks, keep_activations
from backend.models.registry import pixels_per_token
from backend.train.memory_plan import (
    TrainRun,
    allocator_fraction,
    budget_bytes,
    describe_choice,
    gib,
    plan_training,
    shape_from_config,
    tokens_for,
)

ATTENTION_PACKAGES = {"flash": ("flash_attn", "flash-attn"), "sage": ("sageattention", "sageattention")}
COMPUTE_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_memory_settings(settings, use_dora: bool) -> None:
    if settings.attn_mode in ATTENTION_PACKAGES:
        module, package = ATTENTION_PACKAGES[settings.attn_mode]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"attn_mode={settings.attn_mode} needs the `{package}` package; install it with "
                            f"`pip install {package}` or use attn_mode=sdpa.")
    if settings.fp8_base and getattr(settings, "fp8_scaled", False):
        raise UserError("fp8_base and fp8_scaled are two ways of storing the base weights in fp8; turn one of them off "
                        "(fp8_scaled is the more precise).")
    if settings.fp8_base and use_dora:
        raise UserError("fp8_base cannot be combined with DoRA (its magnitude needs the full-precision base weight); "
                        "use fp8_scaled instead, or turn one of them off.")


def check_offload_settings(settings, num_blocks: int, label: str) -> None:
    """blocks_to_swap within the model's block count; swap and activation offload only with checkpointing."""
    check_blocks_to_swap(settings.blocks_to_swap, num_blocks, label)
    if settings.blocks_to_swap and not settings.gradient_checkpointing:
        raise UserError(f"blocks_to_swap={settings.blocks_to_swap} needs gradient_checkpointing (without it backward "
                        f"keeps every swapped block's weights on the GPU); turn gradient_checkpointing on.")
    if settings.offload_activations and not settings.gradient_checkpointing:
        raise UserError("offload_activations moves the block inputs that gradient checkpointing keeps, and "
                        "checkpointing is off; turn gradient_checkpointing on or offload_activations off.")
    kept = settings.uncheckpointed_blocks if settings.gradient_checkpointing else 0
    check_uncheckpointed_blocks(kept, num_blocks, label)
    if kept and settings.blocks_to_swap + kept > num_blocks:
        raise UserError(f"blocks_to_swap={settings.blocks_to_swap} and uncheckpointed_blocks={kept} overlap in the "
                        f"{num_blocks} blocks of the {label} (swapped blocks must be checkpointed); lower one of them.")
    if kept and settings.offload_activations:
        raise UserError("offload_activations saves memory and uncheckpointed_blocks spends it; turn one of them off "
                        "(uncheckpointed_blocks=0 with offload_activations).")


# (diffusers backend name, the module it needs, the least CUDA compute capability), fastest first.
AUTO_ATTENTION = (("_flash_3", "flash_attn_interface", (9, 0)), ("flash", "flash_attn", (8, 0)),
                  ("_native_cudnn", None, (9, 0)))


def installed(module: str | None) -> bool:
    return module is None or importlib.util.find_spec(module) is not None


def resolve_compile(settings) -> tuple[bool, str]:
    """(compile?, why) for the log."""
    if settings.compile != "auto":
        return settings.compile == "on", f"compile={settings.compile}"
    if not torch.cuda.is_available():
        return False, "auto: no CUDA device"
    if not installed("triton"):
        return False, "auto: triton is not installed"
    return True, "auto: CUDA with triton; compile=off turns it off"


def resolve_attention(settings) -> tuple[str | None, str]:
    """(diffusers attention backend or None for PyTorch's SDPA dispatch, why) for the log."""
    if settings.attn_mode != "auto":
        return (None if settings.attn_mode == "sdpa" else settings.attn_mode), f"attn_mode={settings.attn_mode}"
    if not torch.cuda.is_available():
        return None, "auto: SDPA (no CUDA device)"
    capability = torch.cuda.get_device_capability()
    for backend, module, least in AUTO_ATTENTION:
        if capability >= least and installed(module):
            return backend, f"auto: {backend}, the fastest installed for compute capability {capability[0]}." \
                            f"{capability[1]} (backend/train/memory.py AUTO_ATTENTION)"
    return None, "auto: SDPA"


def apply_memory_settings(model, settings, device=None, log=lambda *_: None) -> None:
    """Call after the network is injected: fp8 storage, block swap, then the move to `device` (default: where the
    model is), and the rest; the attention and compile choices are logged."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if settings.fp8_base:
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                       compute_dtype=COMPUTE_DTYPES[settings.mixed_precision])
    enable_block_swap(model, settings.blocks_to_swap, device)
    model.to(device)  # the swapped blocks stay in CPU memory
    if settings.offload_activations:
        offload_activations(model, device)
    if settings.gradient_checkpointing:
        keep_activations(model, settings.uncheckpointed_blocks)
    backend, why = resolve_attention(settings)
    if backend is not None:
        model.set_attention_backend(backend)
    log(f"attention: {backend or 'sdpa'} ({why})")
    compile_blocks, why = resolve_compile(settings)
    if compile_blocks:
        model.compile_repeated_blocks()
    log(f"torch.compile of the blocks: {'on' if compile_blocks else 'off'} ({why})")


PLANNED = ("gradient_checkpointing", "uncheckpointed_blocks", "fp8_base", "fp8_scaled", "offload_activations",
           "blocks_to_swap")


def largest_bucket_tokens(dataset, spatial: int = 16) -> int:
    """Transformer tokens of the largest batch: latent frames × H/spatial × W/spatial × batch size, over buckets."""
    batch = {d.index: d.batch_size for d in dataset.datasets}
    return max((tokens_for(frames, height, width, spatial) * batch[index]
                for (index, width, height, frames) in dataset.buckets()), default=0)


def limit_memory(limit_gb: float | None, device) -> None:
    """Make a memory limit real: cap PyTorch's allocator on this GPU (the CUDA context is the rest of the card)."""
    device = torch.device(device)
    if limit_gb and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(allocator_fraction(limit_gb, total), index)


def plan_memory(settings, kind, experts: int, dataset, device, log=print, adapters_per_module: int = 1):
    """The settings with memory=auto's choices in PLANNED (logged, one line per decision); unchanged for manual or
    on a CPU. Refuses with one sentence when nothing fits. `adapters_per_module`: LoRA-MoE trains that many expert
    adapters on each module."""
    limit_memory(settings.memory_limit_gb, device)
    if settings.memory == "manual":
        log("memory=manual: using gradient_checkpointing / fp8 / offload_activations / blocks_to_swap as set")
        return settings
    if device.type != "cuda":
        log("memory=auto: training on the CPU, nothing to plan")
        return settings
    free, _ = torch.cuda.mem_get_info(device)
    tokens = largest_bucket_tokens(dataset, pixels_per_token(kind.task))
    shape = shape_from_config(kind.name, kind.config(kind.experts[0] if kind.has_experts else None))
    run = TrainRun(shape, tokens, resident_experts=experts, rank=settings.network_dim,
                   optimizer=settings.optimizer_type, network_copies=experts * adapters_per_module,
                   value_bytes=4 if settings.mixed_precision == "no" else 2)
    budget = budget_bytes(free, settings.memory_limit_gb)
    plan = plan_training(run, budget)
    for reason in plan.reasons:
        log(f"memory=auto: {reason}")
    if not plan.fits:
        raise UserError(f"{kind.label} with {tokens:,} tokens per batch needs about {gib(plan.estimate)} of GPU "
                        f"memory even with every saver on ({describe_choice(plan.choice)}), and {gib(budget)} is "
                        f"available; use smaller buckets (fewer frames or pixels), a lower rank"
                        f"{', fewer experts' if adapters_per_module > 1 else ''} or a larger GPU.")
    chosen = {name: getattr(plan.choice, name) for name in PLANNED}
    mine = {name: getattr(settings, name) for name in PLANNED if getattr(settings, name) != chosen[name]}
    log(f"memory=auto: {describe_choice(plan.choice)}; estimate {gib(plan.estimate)} of {gib(budget)} "
        f"({plan.summary()}) for {tokens:,} tokens")
    if mine:
        log(f"memory=auto replaces {', '.join(f'{k}={v}' for k, v in mine.items())}; set memory=manual to keep them")
    return settings.with_overrides(chosen)
