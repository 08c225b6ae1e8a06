"""Shared helpers for tests/compose: a tiny Wan transformer saved as a checkpoint, LoRA files trained-looking on it
(random non-zero factors, written by AdapterNetwork + save_lora), and a loader for merged checkpoints."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from backend.adapters.formats import save_lora
from backend.adapters.metadata import build_metadata
from backend.adapters.network import AdapterNetwork
from backend.adapters.network_config import NetworkConfig
from backend.models.names import wan_to_diffusers
from backend.models.registry import strip_checkpoint_prefix

TINY_CONFIG = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_dim=32,
                   freq_dim=32, ffn_dim=64, num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads")


def make_tiny_wan(seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**TINY_CONFIG).eval()
    with torch.no_grad():  # diffusers zero-initialises some layers; random weights make every path observable
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


def tiny_inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"hidden_states": torch.randn(2, 4, 1, 4, 4, generator=generator),
            "timestep": torch.tensor([300.0, 700.0]),
            "encoder_hidden_states": torch.randn(2, 5, 32, generator=generator)}


def run_model(model, inputs=None) -> torch.Tensor:
    with torch.no_grad():
        return model(**(inputs or tiny_inputs()), return_dict=False)[0]


def make_network(model, args=(), rank: int = 4, alpha: float = 2.0, seed: int = 3, std: float = 0.1,
                 name: str = "network") -> AdapterNetwork:
    """A network with non-zero random factors (fresh adapters start at ΔW = 0, which would hide mistakes)."""
    network = AdapterNetwork.create(model, NetworkConfig.from_network_args(rank, alpha, list(args)), name=name)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in network.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)
    return network


def save_network(network: AdapterNetwork, path: Path, args=(), step: int | None = None, loraid: int | None = None,
                 allocation=None) -> Path:
    flags = network.flags()
    metadata = build_metadata(flags["algo"], network.config.rank, network.config.alpha, list(args), flags, None,
                              loraid=loraid, allocation=allocation.to_metadata() if allocation else None, step=step)
    return save_lora(path, network.state_dict_for_save(), metadata)


def load_merged(path: Path, seed: int = 0):
    """A fresh tiny model holding the tensors of a merged checkpoint (any prefix), strictly."""
    from safetensors.torch import load_file

    model = make_tiny_wan(seed)
    state = {wan_to_diffusers(strip_checkpoint_prefix(k)): v for k, v in load_file(path).items()}
    model.load_state_dict(state, strict=True)
    return model


@pytest.fixture(scope="session")
def kit():
    """The helpers above, for test modules (importlib mode does not let them import conftest)."""
    return SimpleNamespace(make_tiny_wan=make_tiny_wan, tiny_inputs=tiny_inputs, run=run_model,
                           make_network=make_network, save_network=save_network, load_merged=load_merged,
                           TINY_CONFIG=TINY_CONFIG)
