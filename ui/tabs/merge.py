"""Merge tab: merge LoRAs into a base model or into each other."""
from __future__ import annotations

from ui.context import AppContext
from ui.widgets import coming_soon

DESCRIPTION = """### Merge
This tab will merge LoRA files into a base transformer at chosen strengths, or combine several LoRAs into one file.
LoRAs whose parameters overlap are refused unless you force it; LORAID LoRAs on disjoint blocks merge without
touching each other's weights. Merges run as jobs and write `.safetensors` files atomically to `outputs/`."""


def build(ctx: AppContext) -> None:
    coming_soon(DESCRIPTION, where=ctx.workspace.outputs)
