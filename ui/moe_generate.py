"""The Generate tab's LoRA-MoE expert picker: a LoRA-MoE file of the workspace, the expert to force (or the router),
per-expert strengths, and the routing weights the router chose for the selected result's prompt.

`arguments(file, hint, strengths)` gives the `generate` flags; the tab appends them to the job's command.
Stable elem_ids: gen-moe-file, gen-moe-hint, gen-moe-strengths, gen-moe-experts, gen-moe-routing.
"""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from backend.errors import UserError
from backend.moe.files import is_moe_file, load_moe
from backend.moe.inference import parse_strengths
from ui.context import AppContext

NONE = "(no LoRA-MoE)"
ROUTER = "router decides"


def moe_files(ctx: AppContext) -> list[str]:
    folder = ctx.workspace.loras
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return [NONE, *(str(path) for path in files if is_moe_file(path))]


def arguments(file: str, hint: str, strengths: str) -> list[str]:
    """`--moe FILE [--hint NAME] [--expert_strength NAME=VALUE ...]`, checked; [] without a file."""
    if not file or file == NONE:
        return []
    moe = load_moe(file)
    args = ["--moe", str(Path(file).resolve())]
    if hint and hint != ROUTER:
        moe.spec.expert_index(hint)
        args.append(f"--hint={hint}")
    entries = strengths.replace(",", " ").split()
    if entries:
        given = parse_strengths(entries)
        for name in given:
            if name != "*":
                moe.spec.expert_index(name)
        args += ["--expert_strength", *entries]
    return args


def routing_text(record_json: str) -> str:
    """The routing weights recorded in a result (mean gate per expert on each transformer)."""
    try:
        record = json.loads(record_json) if record_json else {}
    except json.JSONDecodeError:
        return ""
    moe = record.get("moe")
    if not moe:
        return ""
    how = f"forced to **{moe['hint']}**" if moe.get("hint") else "chosen by the router"
    lines = [f"Routing {how} ({moe.get('file')}):"]
    for transformer, weights in (moe.get("routing") or {}).items():
        lines.append(f"- {transformer}: " + ", ".join(f"{name} {value:.2f}" for name, value in weights.items()))
    return "  \n".join(lines)


def build(ctx: AppContext) -> dict:
    """The picker's widgets by name (file, hint, strengths, routing)."""
    with gr.Accordion("LoRA-MoE experts", open=False, elem_id="gen-moe"):
        with gr.Row():
            file = gr.Dropdown(moe_files(ctx), value=NONE, allow_custom_value=True, scale=3,
                               label=f"LoRA-MoE file in {ctx.workspace.loras}", elem_id="gen-moe-file")
            hint = gr.Dropdown([ROUTER], value=ROUTER, label="Expert (or the router)", scale=1,
                               elem_id="gen-moe-hint")
            strengths = gr.Textbox("", label="Expert strengths (NAME=VALUE, *=VALUE for all)", scale=2,
                                   elem_id="gen-moe-strengths")
        experts = gr.Markdown("", elem_id="gen-moe-experts")
        routing = gr.Markdown("", elem_id="gen-moe-routing")

    def picked(path: str):
        if not path or path == NONE:
            return gr.update(choices=[ROUTER], value=ROUTER), ""
        try:
            moe = load_moe(path)
        except UserError as exc:
            return gr.update(choices=[ROUTER], value=ROUTER), f"⚠ {exc}"
        names = list(moe.spec.expert_names)
        return (gr.update(choices=[ROUTER, *names], value=ROUTER),
                f"{len(names)} experts ({', '.join(names)}), routing {moe.spec.routing_mode}, trained for "
                f"{', '.join(moe.labels)}.")

    def refresh(path: str):
        return gr.update(choices=moe_files(ctx), value=path if path else NONE)

    file.change(picked, inputs=file, outputs=[hint, experts], show_progress="hidden", api_visibility="private")
    return {"file": file, "hint": hint, "strengths": strengths, "routing": routing, "refresh": refresh}


def wire(widgets: dict, tab, selected_settings) -> None:
    """List the workspace's LoRA-MoE files when the tab opens; show the routing of the result whose settings are
    shown."""
    tab.select(widgets["refresh"], inputs=widgets["file"], outputs=widgets["file"], show_progress="hidden",
               api_visibility="private")
    selected_settings.change(routing_text, inputs=selected_settings, outputs=widgets["routing"],
                             show_progress="hidden", api_visibility="private")
