"""The demo concepts differ in latent space (what lets LoRA-MoE experts specialise on the demo): the demo VAE's
latents follow the image and its latents_mean / latents_std standardise the demo dataset's cached latents."""
from __future__ import annotations

import torch

from backend.data.cached_dataset import CachedDataset


def test_demo_latents_are_standardised_and_the_concepts_apart(moe_workspace):
    dataset = CachedDataset.from_file(moe_workspace.demo_dataset / "dataset.toml")
    images = {"a": [], "b": []}
    channels = []
    for item in dataset.items:
        latents = dataset.load_batch([item])["latents"].float()[0]  # [C, F, H, W]
        channels.append(latents.flatten(1))
        if latents.shape[1:] == (1, 8, 8):  # single frames of one size, comparable element by element
            images[item.key[0]].append(latents)
    flat = torch.cat(channels, dim=1)
    assert flat.mean(dim=1).abs().max() < 0.6 and 0.5 < float(flat.std()) < 2.0  # about N(0, 1), as Wan's are

    a, b = torch.stack(images["a"]), torch.stack(images["b"])
    apart = (a.mean(0) - b.mean(0)).pow(2).mean().sqrt()
    within = max((a - a.mean(0)).pow(2).mean().sqrt(), (b - b.mean(0)).pow(2).mean().sqrt())
    assert len(a) >= 6 and len(b) >= 6
    # on the scale of the flow-matching noise (unit variance): 0.80 apart (0.53 and 0.21 within); the demo VAE
    # before (biased convs, Wan's constants) put the concepts' latents a few hundredths apart
    assert apart > 0.4 and apart > 0.5 * within, (float(apart), float(within))
