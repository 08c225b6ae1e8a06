"""Shared helpers for tests/loraid: the musubi fixtures folder, tiny Wan models, and LoRA files made on them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backend.adapters.formats import save_lora
from backend.adapters.metadata import build_metadata
from backend.models.names import lora_key_prefix
from tests.tiny_wan import MUSUBI, TINY_CONFIG, make_tiny_wan

TINY_DIM, TINY_FFN = 32, 64


@pytest.fixture(scope="session")
def musubi_dir() -> Path:
    return MUSUBI


def tiny_shape(module: str) -> tuple[int, int]:
    """(in, out) of a block Linear of the tiny model."""
    inner = module.split(".", 2)[2]
    if inner == "ffn.0":
        return TINY_DIM, TINY_FFN
    if inner == "ffn.2":
        return TINY_FFN, TINY_DIM
    return TINY_DIM, TINY_DIM


def lora_tensors(modules, rank: int = 2, alpha: float = 1.0, seed: int = 0, shape=tiny_shape) -> dict:
    """Canonical random LoRA tensors on these dotted module names."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module in modules:
        fan_in, fan_out = shape(module)
        prefix = lora_key_prefix(module)
        tensors[f"{prefix}.lora_down.weight"] = torch.randn(rank, fan_in, generator=generator) * 0.3
        tensors[f"{prefix}.lora_up.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.3
        tensors[f"{prefix}.alpha"] = torch.tensor(float(alpha))
    return tensors


def save_loraid_file(path: Path, allocation, modules, rank: int = 2, seed: int = 0, precision: str = "fp32",
                     metadata: dict | None = None) -> Path:
    """A LoRA file as training writes it: canonical tensors + build_metadata with ss_loraid and the allocation."""
    if metadata is None:
        metadata = build_metadata("lora", rank, 1.0, [], {}, allocation.model if allocation else None,
                                  loraid=allocation.loraid if allocation else None,
                                  allocation=allocation.to_metadata() if allocation else None)
    return save_lora(path, lora_tensors(modules, rank, seed=seed), metadata, precision)


def save_tiny_checkpoint(model, folder: Path) -> Path:
    """The tiny model as an original-layout single file with its diffusers config.json beside it."""
    from backend.models.loading import save_transformer_original

    folder.mkdir(parents=True, exist_ok=True)
    path = save_transformer_original(model, folder / "transformer.safetensors")
    config = {key: value for key, value in dict(model.config).items() if not key.startswith("_")}
    config["_class_name"] = "WanTransformer3DModel"
    (folder / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def kit():
    """The helpers above, for test modules (importlib mode does not let them import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(make_tiny_wan=make_tiny_wan, tiny_shape=tiny_shape, lora_tensors=lora_tensors,
                           save_loraid_file=save_loraid_file, save_tiny_checkpoint=save_tiny_checkpoint,
                           TINY_CONFIG=TINY_CONFIG)
