"""Test helpers: files training or the Dataset tab would make on a demo workspace, made directly.

`save_demo_lora`: a LoRA on a LORAID of the demo T2V model, saved as training saves it.
`cache_concept_a`: concept A's VAE latents and text-encoder outputs, as the cache jobs write them.
"""
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


def cache_concept_a(ws) -> None:
    """Concept A's latents and text outputs in its cache folders, skipping what is cached already."""
    from backend.data import encoders
    from backend.data.cache import cache_latents, cache_text
    from backend.data.dataset_config import load_dataset_config

    config = load_dataset_config(ws.demo_dataset / "concept_a" / "dataset.toml")
    cache_latents(config, encoders.load_vae(ws.vae), model_id=encoders.model_fingerprint(ws.vae), log=lambda *_: None)
    tokenizer, text_encoder = encoders.load_text_encoder(ws.text_encoder, ws.tokenizer)
    cache_text(config, tokenizer, text_encoder, model_id=encoders.model_fingerprint(ws.text_encoder, ws.tokenizer),
               log=lambda *_: None)
