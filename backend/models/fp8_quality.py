"""The quality guard of fp8 storage: the flow-matching loss of one fixed batch with the base weights in bf16, in
scaled fp8 (per-row scales) and in plain fp8 (a cast), computed in bf16 for all three.

    numbers = storage_loss_difference(build, inputs)   # build() -> a fresh bf16 model with the same weights
    numbers["fp8_scaled_relative"]                      # |loss_fp8_scaled - loss_bf16| / loss_bf16

The loss is the trainer's: x_t = (1 − t)·x0 + t·ε, loss = mean ‖model(x_t, t·1000, text) − (ε − x0)‖².
tests/models/test_fp8_scaled.py states the bound on the demo model; bench/bench_fp8_quality.py prints the numbers
for a real-size model on a GPU.
"""
from __future__ import annotations

from typing import Callable

import torch

from backend.models.fp8_scaled import FP8, store_scaled_fp8

STORAGES = ("bf16", "fp8_scaled", "fp8")


def fixed_inputs(config: dict, frames: int, height: int, width: int, text_tokens: int = 32, seed: int = 0,
                 t: float = 0.5, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """One seeded batch for a transformer config at a pixel size (latents at the Wan VAE's 4×8×8 stride)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (1, config["in_channels"], (frames - 1) // 4 + 1, height // 8, width // 8)
    x0 = torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    text = torch.randn(1, text_tokens, config["text_dim"], generator=generator)
    return {name: tensor.to(device) for name, tensor in
            {"x0": x0, "noise": noise, "text": text, "t": torch.tensor([t])}.items()}


def flow_loss(model, inputs: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16) -> float:
    x0, noise, t = inputs["x0"], inputs["noise"], inputs["t"]
    x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * noise
    with torch.no_grad(), torch.autocast(x0.device.type, dtype=dtype):
        prediction = model(hidden_states=x_t, timestep=t * 1000.0, encoder_hidden_states=inputs["text"],
                           return_dict=False)[0]
    return float(((prediction.float() - (noise - x0)) ** 2).mean())


def with_storage(model, storage: str, compute_dtype: torch.dtype = torch.bfloat16):
    """`model` with its base weights stored as `storage` (in place)."""
    if storage == "fp8_scaled":
        store_scaled_fp8(model)
    elif storage == "fp8":
        model.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=compute_dtype)
    elif storage != "bf16":
        raise ValueError(f"unknown storage {storage!r}")
    return model


def storage_loss_difference(build: Callable[[], torch.nn.Module], inputs: dict[str, torch.Tensor],
                            dtype: torch.dtype = torch.bfloat16) -> dict[str, float]:
    """Loss per storage and each fp8 storage's relative difference to bf16 (`build` is called once per storage)."""
    losses = {}
    for storage in STORAGES:
        model = with_storage(build(), storage, dtype)
        losses[storage] = flow_loss(model, inputs, dtype)
        del model
    base = losses["bf16"]
    return {**losses, **{f"{s}_relative": abs(losses[s] - base) / base for s in STORAGES if s != "bf16"}}
