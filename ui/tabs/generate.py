"""Generate tab: text-to-video / image generation with LoRAs applied."""
from __future__ import annotations

from ui.context import AppContext
from ui.widgets import coming_soon

DESCRIPTION = """### Generate
This tab will take a prompt, a base model and LoRAs with their strengths, and generate a short video or an image
(Wan 2.1 / 2.2, including the A14B high / low-noise pair). Generation runs as a job; results land in
`outputs/` and are shown here."""


def build(ctx: AppContext) -> None:
    coming_soon(DESCRIPTION, where=ctx.workspace.outputs)
