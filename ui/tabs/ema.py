"""EMA tab: post-hoc EMA over saved checkpoints."""
from __future__ import annotations

from ui.context import AppContext
from ui.widgets import coming_soon

DESCRIPTION = """### EMA
This tab will build an exponential-moving-average LoRA after training from the checkpoints a run saved, choosing the
averaging width (`sigma_rel`) without retraining. Runs as a job and writes a new LoRA file to `loras/`."""


def build(ctx: AppContext) -> None:
    coming_soon(DESCRIPTION, where=ctx.workspace.loras)
