"""Dataset tab: scan a folder of images and clips, edit captions, plan buckets, write the dataset TOML, cache latents."""
from __future__ import annotations

from ui.context import AppContext
from ui.widgets import coming_soon

DESCRIPTION = """### Dataset
This tab will take a folder of images and short clips with caption files (`.txt` beside each file), scan it,
show each item with its caption for editing, plan the resolution / frame-count buckets, write a musubi-style
`dataset.toml`, and start a **cache** job that encodes VAE latents and T5 text embeddings once for training.
The demo workspace ships a sample dataset with two visually distinct concepts."""


def build(ctx: AppContext) -> None:
    coming_soon(DESCRIPTION, where=ctx.workspace.datasets)
