"""Shared fixtures for tests/adapters: a tiny diffusers Wan transformer, its inputs, the musubi golden files, and
`lora_builder` (canonical LoRA tensors from {Wan name: (in, out)} shapes) used by the formats tests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch

from tests.tiny_wan import MUSUBI, run_model, tiny_inputs
from tests.tiny_wan import make_tiny_wan as make_shared_wan


def make_tiny_wan(seed: int = 0, **overrides):
    """The shared tiny Wan with two blocks unless `overrides` say otherwise."""
    return make_shared_wan(seed, **{"num_layers": 2, **overrides})


def randomize(network, std: float = 0.1, seed: int = 3) -> None:
    """Non-zero random factors everywhere (fresh adapters start at ΔW = 0, which would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in network.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)


@pytest.fixture
def tiny_wan():
    return make_tiny_wan()


@pytest.fixture
def make_wan() -> Callable:
    """make_wan(seed=0, **WanTransformer3DModel overrides) -> a tiny random Wan transformer in eval mode."""
    return make_tiny_wan


@pytest.fixture
def inputs():
    return tiny_inputs()


@pytest.fixture
def run() -> Callable:
    return run_model


@pytest.fixture
def randomized() -> Callable:
    return randomize


@pytest.fixture(scope="session")
def musubi_fixture():
    """(model, golden tensors, run) for the musubi-tuner golden files (see their README)."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    from backend.models.names import wan_to_diffusers

    spec = json.loads((MUSUBI / "fixture.json").read_text())["model"]
    model = WanTransformer3DModel(
        num_attention_heads=spec["num_heads"], attention_head_dim=spec["dim"] // spec["num_heads"],
        in_channels=spec["in_dim"], out_channels=spec["out_dim"], text_dim=spec["text_dim"],
        freq_dim=spec["freq_dim"], ffn_dim=spec["ffn_dim"], num_layers=spec["num_layers"], cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6).eval()
    weights = load_file(MUSUBI / "dit.safetensors")
    model.load_state_dict({wan_to_diffusers(key): value for key, value in weights.items()}, strict=True)
    golden = load_file(MUSUBI / "golden.safetensors")
    context = torch.zeros(1, 512, spec["text_dim"])
    context[0, : golden["input_context"].shape[0]] = golden["input_context"]
    musubi_inputs = {"hidden_states": golden["input_x"][None], "timestep": golden["input_t"],
                     "encoder_hidden_states": context}
    return model, golden, lambda: run_model(model, musubi_inputs)[0]


@pytest.fixture
def musubi_dir() -> Path:
    return MUSUBI


@pytest.fixture
def lora_builder() -> Callable:
    """build(shapes {wan_name: (in, out)}, rank=4 | {name: r}, alpha=2.0 | {name: a}, seed=0, dora=False, up_std=0.1)
    -> canonical fp32 tensors `lora_unet_<name>.lora_down.weight` [r, in], `.lora_up.weight` [out, r], `.alpha`
    (0-dim) and, with dora, `.dora_scale` [out, 1] (positive)."""
    from backend.models.names import lora_key_prefix

    def build(shapes, rank=4, alpha=2.0, seed=0, dora=False, up_std=0.1) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        tensors: dict[str, torch.Tensor] = {}
        for name, (fan_in, fan_out) in shapes.items():
            module_rank = rank[name] if isinstance(rank, dict) else rank
            module_alpha = alpha[name] if isinstance(alpha, dict) else alpha
            prefix = lora_key_prefix(name)
            tensors[f"{prefix}.lora_down.weight"] = torch.randn(module_rank, fan_in, generator=generator) * 0.1
            tensors[f"{prefix}.lora_up.weight"] = torch.randn(fan_out, module_rank, generator=generator) * up_std
            tensors[f"{prefix}.alpha"] = torch.tensor(float(module_alpha), dtype=torch.float32)
            if dora:
                tensors[f"{prefix}.dora_scale"] = torch.rand(fan_out, 1, generator=generator) + 0.5
        return tensors

    return build
