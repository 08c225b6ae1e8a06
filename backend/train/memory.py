"""Memory and speed options applied to the frozen base after the adapters are injected.

fp8_base: diffusers layerwise casting stores the base weights in float8_e4m3fn and upcasts each layer for its
forward; the adapters are not submodules of the model, so they stay fp32. fp8_scaled: the block Linears hold fp8 +
a per-row fp32 scale (backend/models/fp8_scaled.py), applied while the model is loaded (build_networks), before it
goes to the GPU. attn_mode: diffusers' attention
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
    if settings.fp8_base and getattr(settings, "fp8_scaled", False):
        raise UserError("fp8_base and fp8_scaled are two ways of storing the base weights in fp8; turn one of them off "
                        "(fp8_scaled is the more precise).")
    if settings.fp8_base and use_dora:
        raise UserError("fp8_base cannot be combined with DoRA (its magnitude needs the full-precision base weight); "
                        "use fp8_scaled instead, or turn one of them off.")


def apply_memory_settings(model, settings) -> None:
    """Call after the network is injected."""
    if settings.fp8_base:
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                       compute_dtype=COMPUTE_DTYPES[settings.mixed_precision])
    if settings.attn_mode != "sdpa":
        model.set_attention_backend(settings.attn_mode)
    if settings.compile:
        model.compile_repeated_blocks()
