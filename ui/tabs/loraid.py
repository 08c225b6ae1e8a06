"""LORAID tab: allocate disjoint block slices to LoRAs and show the block map."""
from __future__ import annotations

from ui.context import AppContext
from ui.widgets import coming_soon

DESCRIPTION = """### LORAID block map
Give each LoRA its own slice of the model's transformer blocks (`LORAID n` owns blocks `[(n-1)·k, n·k)` for
`blocks_per_loraid = k`, or an explicit block list; per expert on Wan 2.2 A14B). This tab will show blocks × module
kinds coloured by owner with conflicts marked, keep the workspace registry of taken IDs, and measure how much
LoRAs on disjoint blocks still influence each other's outputs (cross-talk)."""


def build(ctx: AppContext) -> None:
    coming_soon(DESCRIPTION, where=ctx.workspace.loraid_registry)
