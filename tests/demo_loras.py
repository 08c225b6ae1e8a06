"""Test helper: LoRA files on a LORAID of the demo T2V model without training, saved as training saves them."""
from __future__ import annotations

from pathlib import Path

import torch

from backend.adapters.formats import save_lora
from backend.adapters.metadata import build_metadata
from backend.adapters.network import AdapterNetwork
from backend.adapters.network_config import NetworkConfig
from backend.loraid.allocation import allocate
from backend.loraid.patterns import network_args_entries

DEMO_BLOCKS = 8  # the demo T2V transformer


def save_demo_lora(model, path: Path, loraid: int, blocks_per_loraid: int = 2, seed: int = 0,
                   step: int | None = None, expert: str | None = None) -> Path:
    """A rank-4 LoRA restricted to the ID's slice, its factors drawn from N(0, 0.1) with `seed`."""
    allocation = allocate(loraid, DEMO_BLOCKS, blocks_per_loraid, expert=expert, model="demo-t2v")
    args = network_args_entries(allocation)
    network = AdapterNetwork.create(model, NetworkConfig.from_network_args(4, 4.0, args))
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in network.parameters():
            param.normal_(0.0, 0.1)
    metadata = build_metadata("lora", 4, 4.0, args, network.flags(), "demo-t2v", loraid=loraid,
                              allocation=allocation.to_metadata(), step=step)
    return save_lora(path, network.state_dict_for_save(), metadata)
