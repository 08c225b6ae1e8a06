"""Train tab: configure and start a LoRA-family training job."""
from __future__ import annotations

from ui.context import AppContext
from ui.widgets import coming_soon

DESCRIPTION = """### Train
This tab will let you choose a base model (a Wan 2.1 / 2.2 checkpoint on disk, or the tiny demo model), a cached
dataset and an adapter (LoRA, DoRA, LoCon, LoHa, LoKr) with its rank, alpha and `network_args`. Settings come
from presets and are saved with the run. Training runs as a job (`accelerate launch -m backend.train --config
run.toml`) whose loss, learning rate, samples and checkpoints stream into the Jobs tab; it can be stopped and resumed."""


def build(ctx: AppContext) -> None:
    coming_soon(DESCRIPTION, where=ctx.workspace.loras)
