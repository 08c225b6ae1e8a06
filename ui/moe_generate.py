"""The Generate tab's LoRA-MoE expert picker: its fields are MoeOptions' (backend/generate/options.py), made as the
tab makes every setting (ui/settings_form.py: label, help, starting value, a problem slot under each, checked by the
backend as they change) and read back into the job's argv through the same model: the LoRA-MoE file (a file of the
workspace, or a typed path), the expert to force (the file's experts, or the router), per-expert strengths, the
router smoothing. Beside them: the routing the router would choose for the prompt before a run ("Show routing",
through `python -m backend moe route`), and the routing weights the router chose for the selected result's prompt.

Stable elem_ids: gen-moe-file, gen-moe-hint, gen-moe-strengths, gen-router-ema (each with -error under it),
gen-moe-experts, gen-moe-show-routing, gen-moe-route, gen-moe-routing.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gradio as gr

from backend.errors import UserError
from backend.generate.options import MoeOptions
from backend.moe.files import is_moe_file, read_moe_header
from ui.context import AppContext
from ui.settings_form import choice_list

FIELDS = list(MoeOptions.model_fields)  # the picker shows every field of the model, in its order


def moe_files(ctx: AppContext) -> list[str]:
    folder = ctx.workspace.loras
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return [str(path) for path in files if is_moe_file(path)]


def _file(workspace: Path, file: str | None) -> Path | None:
    """The picked file (a typed path is relative to the workspace); None when none is picked."""
    text = (file or "").strip().strip('"')
    if not text:
        return None
    path = Path(text).expanduser()
    return path if path.is_absolute() else Path(workspace) / path


def route_argv(workspace: Path, file: str, hint: str, prompt: str, text_encoder: str, tokenizer: str, steps,
               sampler: str, flow_shift, seed, width, height, frames) -> list[str]:
    """`python -m backend moe route ... --json` for the picker's file and expert and the form's prompt and sampling."""
    path = _file(workspace, file)
    if path is None:
        raise UserError(f"Pick a {MoeOptions.named('moe')} first; the routing belongs to its router.")
    if not (prompt or "").strip():
        raise UserError("Type a prompt first; the router chooses the experts from it.")
    argv = [sys.executable, "-m", "backend", "moe", "route", "--moe", str(path.resolve()), "--prompt", prompt,
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
    if hint:
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


def build(ctx: AppContext, setting_widget, model: type[MoeOptions] = MoeOptions) -> dict:
    """The picker's widgets by field name, one per field of `model` (and the routing views); `setting_widget(name,
    **how)` makes a settings field's widget with its problem slot, as the tab makes its other fields."""
    files_help = f"{model.field_info()['moe']['help']}: one of {ctx.workspace.loras}, or type a path"
    how = {"moe": dict(choices=moe_files(ctx), typed=True, info=files_help), "hint": dict(choices=[], typed=True)}
    with gr.Accordion("LoRA-MoE experts", open=False, elem_id="gen-moe"):
        with gr.Row():
            made = {name: setting_widget(name, **how.get(name, {})) for name in model.model_fields}
        experts = gr.Markdown("", elem_id="gen-moe-experts")
        with gr.Row():
            show = gr.Button("Show routing", scale=0, min_width=160, elem_id="gen-moe-show-routing")
            route = gr.Markdown("", elem_id="gen-moe-route")
        routing = gr.Markdown("", elem_id="gen-moe-routing")
    workspace = ctx.workspace.root

    def picked(file: str, hint: str):
        """A new file: its experts become the expert choices (the router first; a chosen expert the file has stays,
        e.g. from a reused result), and a line says what it holds; what is wrong with the file is said beside its
        field by the form's check."""
        path = _file(workspace, file)
        try:
            header = read_moe_header(path)[0] if path is not None else None
        except UserError:
            header = None
        if header is None:
            return gr.update(choices=choice_list(MoeOptions, "hint", []), value=""), ""
        names, spec = list(header["spec"]["expert_names"]), header["spec"]
        return (gr.update(choices=choice_list(MoeOptions, "hint", names), value=hint if hint in names else ""),
                f"{len(names)} experts ({', '.join(names)}), routing {spec.get('routing_mode')}, trained for "
                f"{', '.join(header['labels'])}.")

    def refresh(file: str):
        return gr.update(choices=choice_list(MoeOptions, "moe", moe_files(ctx)), value=file or "")

    made["moe"].change(picked, inputs=[made["moe"], made["hint"]], outputs=[made["hint"], experts],
                       show_progress="hidden", api_visibility="private")
    return {**made, "routing": routing, "refresh": refresh, "show": show, "route": route, "workspace": workspace}


def wire(widgets: dict, tab, selected_settings, form: dict) -> None:
    """List the workspace's LoRA-MoE files when the tab opens; "Show routing" for the form's prompt and sampling
    (`form`: the Generate tab's widgets by field name); show the routing of the result whose settings are shown."""
    names = ("prompt", "text_encoder", "tokenizer", "steps", "sampler", "flow_shift", "seed", "width", "height",
             "frames")
    workspace = widgets["workspace"]
    widgets["show"].click(lambda *values: show_routing(workspace, *values),
                          inputs=[widgets["moe"], widgets["hint"], *(form[name] for name in names)],
                          outputs=widgets["route"], api_visibility="private")
    tab.select(widgets["refresh"], inputs=widgets["moe"], outputs=widgets["moe"], show_progress="hidden",
               api_visibility="private")
    selected_settings.change(routing_text, inputs=selected_settings, outputs=widgets["routing"],
                             show_progress="hidden", api_visibility="private")
