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
from tests.tiny_wan import TINY_CONFIG, make_tiny_wan, run_model, tiny_inputs

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
