"""A tiny randomly initialised Wan transformer (diffusers' WanTransformer3DModel), inputs for it, and the musubi
fixtures folder: shared by the adapter, compose and LORAID tests."""
from __future__ import annotations

from pathlib import Path

import torch

MUSUBI = Path(__file__).resolve().parent / "fixtures" / "musubi"

TINY_CONFIG = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_dim=32,
                   freq_dim=32, ffn_dim=64, num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads")


def make_tiny_wan(seed: int = 0, **overrides):
    """TINY_CONFIG with `overrides`, in eval mode, every weight drawn from N(0, 0.2)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**{**TINY_CONFIG, **overrides}).eval()
    with torch.no_grad():  # diffusers zero-initialises some layers; random weights make every path observable
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


def tiny_inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"hidden_states": torch.randn(2, 4, 1, 4, 4, generator=generator),
            "timestep": torch.tensor([300.0, 700.0]),
            "encoder_hidden_states": torch.randn(2, 5, 32, generator=generator)}


def run_model(model, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(**(inputs or tiny_inputs()), return_dict=False)[0]
