"""The Generate tab's LoRA-MoE expert picker: a LoRA-MoE file of the workspace, the expert to force (or the router),
per-expert strengths, the routing the router would choose for the prompt before a run ("Show routing", through
`python -m backend moe route`), and the routing weights the router chose for the selected result's prompt.

`arguments(file, hint, strengths, router_ema)` gives the `generate` flags; the tab appends them to the job's command.
The router smoothing (`router_ema`) is a field of the tab's settings form, laid out here beside the expert.
Stable elem_ids: gen-moe-file, gen-moe-hint, gen-moe-strengths, gen-router-ema, gen-moe-experts,
gen-moe-show-routing, gen-moe-route, gen-moe-routing.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gradio as gr

from backend.errors import UserError
from backend.generate.options import MoeOptions
from backend.moe.files import is_moe_file, load_moe
from backend.moe.inference import parse_strengths
from ui.context import AppContext

NONE = "(no LoRA-MoE)"
ROUTER = "router decides"


def moe_files(ctx: AppContext) -> list[str]:
    folder = ctx.workspace.loras
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return [NONE, *(str(path) for path in files if is_moe_file(path))]


def arguments(file: str, hint: str, strengths: str, router_ema: float | None = None) -> list[str]:
    """`--moe FILE [--hint NAME] [--expert_strength NAME=VALUE ...] [--router_ema B]`, checked; [] without a
    file."""
    if not file or file == NONE:
        return []
    moe = load_moe(file)
    hint = hint if hint and hint != ROUTER else None
    if hint:
        moe.spec.expert_index(hint)
    entries = strengths.replace(",", " ").split()
    for name in parse_strengths(entries):
        if name != "*":
            moe.spec.expert_index(name)
    return MoeOptions(moe=str(Path(file).resolve()), hint=hint, expert_strength=entries,
                      router_ema=router_ema).flag_arguments()


def route_argv(workspace: Path, file: str, hint: str, prompt: str, text_encoder: str, tokenizer: str, steps,
               sampler: str, flow_shift, seed, width, height, frames) -> list[str]:
    """`python -m backend moe route ... --json` for the picker's file and expert and the form's prompt and sampling."""
    if not file or file == NONE:
        raise UserError("Pick a LoRA-MoE file first; the routing belongs to its router.")
    if not (prompt or "").strip():
        raise UserError("Type a prompt first; the router chooses the experts from it.")
    argv = [sys.executable, "-m", "backend", "moe", "route", "--moe", str(Path(file).resolve()), "--prompt", prompt,
            "--workspace", str(workspace), "--json"]
    for flag, value in (("--text_encoder", text_encoder), ("--tokenizer", tokenizer)):
        if value and value.strip():
            argv += [flag, value.strip()]
    for flag, value in (("--steps", steps), ("--flow_shift", flow_shift), ("--seed", seed), ("--width", width),
                        ("--height", height), ("--frames", frames)):
        if value is not None and value != "":
            argv += [flag, str(int(value) if flag != "--flow_shift" else float(value))]
    if sampler:
        argv += ["--sampler", sampler]
    if hint and hint != ROUTER:
        argv.append(f"--hint={hint}")
    return argv


def route_text(routing: dict) -> str:
    """The gates per noise expert (mean over the steps it takes) and τ, as Markdown."""
    how = f"forced to **{routing['hint']}**" if routing.get("hint") else "the router would choose"
    lines = [f"Routing {how} for this prompt, before a run ({routing.get('file')}):"]
    for transformer, part in routing["transformers"].items():
        gates = ", ".join(f"{name} {value:.2f}" for name, value in part["mean"].items())
        lines.append(f"- {transformer}: {gates} (τ {part['tau']:.2f} over {len(part['steps'])} steps)")
    if routing.get("approximate"):
        lines.append("This router also reads the latents: shown on the seed's starting noise; later steps of a run "
                     "may route differently.")
    return "  \n".join(lines)


def show_routing(workspace: Path, *values) -> str:
    """The "Show routing" button: runs `moe route` in its own process (the text encoder stays out of the app)."""
    from backend.jobs.manager import PROJECT_ROOT

    try:
        argv = route_argv(workspace, *values)
    except (UserError, ValueError, TypeError) as exc:
        return f"⚠ {exc}"
    done = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line.removeprefix("error: ") for line in done.stderr.strip().splitlines() if line.strip()]
        return f"⚠ {lines[-1] if lines else 'the routing could not be computed (exit code ' + str(done.returncode) + ')'}"
    return route_text(json.loads(done.stdout.strip().splitlines()[-1]))


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


def build(ctx: AppContext, setting_widget) -> dict:
    """The picker's widgets by name (file, hint, strengths, router_ema, routing); `setting_widget(name)` makes a
    settings field's widget with its problem slot, as the tab makes its other fields."""
    with gr.Accordion("LoRA-MoE experts", open=False, elem_id="gen-moe"):
        with gr.Row():
            file = gr.Dropdown(moe_files(ctx), value=NONE, allow_custom_value=True, scale=3,
                               label=f"LoRA-MoE file in {ctx.workspace.loras}", elem_id="gen-moe-file")
            hint = gr.Dropdown([ROUTER], value=ROUTER, label="Expert (or the router)", scale=1,
                               elem_id="gen-moe-hint")
            strengths = gr.Textbox("", label="Expert strengths (NAME=VALUE, *=VALUE for all)", scale=2,
                                   elem_id="gen-moe-strengths")
            router_ema = setting_widget("router_ema")
        experts = gr.Markdown("", elem_id="gen-moe-experts")
        with gr.Row():
            show = gr.Button("Show routing", scale=0, min_width=160, elem_id="gen-moe-show-routing")
            route = gr.Markdown("", elem_id="gen-moe-route")
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
    return {"file": file, "hint": hint, "strengths": strengths, "router_ema": router_ema, "routing": routing, "refresh": refresh,
            "show": show, "route": route, "workspace": ctx.workspace.root}


def wire(widgets: dict, tab, selected_settings, form: dict) -> None:
    """List the workspace's LoRA-MoE files when the tab opens; "Show routing" for the form's prompt and sampling
    (`form`: the Generate tab's widgets by field name); show the routing of the result whose settings are shown."""
    names = ("prompt", "text_encoder", "tokenizer", "steps", "sampler", "flow_shift", "seed", "width", "height",
             "frames")
    workspace = widgets["workspace"]
    widgets["show"].click(lambda *values: show_routing(workspace, *values),
                          inputs=[widgets["file"], widgets["hint"], *(form[name] for name in names)],
                          outputs=widgets["route"], api_visibility="private")
    tab.select(widgets["refresh"], inputs=widgets["file"], outputs=widgets["file"], show_progress="hidden",
               api_visibility="private")
    selected_settings.change(routing_text, inputs=selected_settings, outputs=widgets["routing"],
                             show_progress="hidden", api_visibility="private")
