"""Memory and speed options applied to the frozen base after the adapters are injected.

fp8_base: diffusers layerwise casting stores the base weights in float8_e4m3fn and upcasts each layer for its
forward; the adapters are not submodules of the model, so they stay fp32. attn_mode: diffusers' attention
dispatcher (sdpa = PyTorch's own; flash / sage need their packages). compile: `torch.compile` of the repeated
transformer blocks. blocks_to_swap is not offered yet and is refused with a sentence by the loop.
"""
from __future__ import annotations

import importlib.util

import torch

from backend.errors import UserError

ATTENTION_PACKAGES = {"flash": ("flash_attn", "flash-attn"), "sage": ("sageattention", "sageattention")}
COMPUTE_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_memory_settings(settings, use_dora: bool) -> None:
    if settings.attn_mode in ATTENTION_PACKAGES:
        module, package = ATTENTION_PACKAGES[settings.attn_mode]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"attn_mode={settings.attn_mode} needs the `{package}` package; install it with "
                            f"`pip install {package}` or use attn_mode=sdpa.")
    if settings.fp8_base and use_dora:
        raise UserError("fp8_base cannot be combined with DoRA (its magnitude needs the full-precision base weight); "
                        "turn one of them off.")


def apply_memory_settings(model, settings) -> None:
    """Call after the network is injected."""
    if settings.fp8_base:
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                       compute_dtype=COMPUTE_DTYPES[settings.mixed_precision])
    if settings.attn_mode != "sdpa":
        model.set_attention_backend(settings.attn_mode)
    if settings.compile:
        model.compile_repeated_blocks()
