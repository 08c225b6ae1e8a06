"""Train tab: presets, the settings form generated from TrainSettings, the network_args builder, the LORAID
picker, the commands, and a live view of the training job (progress, ETA, loss and lr charts, VRAM, log, samples).

Widgets are kept in one name -> component dict; every handler (ui/train_panel.py) receives values by name and
returns updates by name. Stable elem_ids for browser tests:

    presets   train-preset (dropdown; choosing one shows its description), train-preset-load, train-preset-name, train-preset-replace,
              train-preset-save, train-preset-rename, train-preset-delete, train-preset-import (file upload),
              train-preset-export (button), train-preset-export-file, train-preset-message
    form      train-<field> for every TrainSettings field (e.g. train-max_train_steps, train-network_type,
              train-dataset_config), its error slot train-<field>-error, train-validation (summary),
              train-output-outside (confirms an output folder outside the workspace)
    network   train-loraid (picker), train-loraid-allocation, train-net-recipe, train-net-<key> (one per
              network_args key, e.g. train-net-use_dora), train-net-paste, train-net-paste-apply,
              train-network-args (the live lines), train-network_args-error
    run       train-processes, train-show-command, train-start, train-stop, train-resume-run, train-run-message,
              train-command, train-toml, train-musubi, train-command-notes
    monitor   train-job, train-progress (data-step / data-total / data-status), train-stats, train-loss-chart,
              train-lr-chart, train-samples, train-log
"""
from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from backend.config.model_fields import MODEL_FIELDS, fields_for
from backend.config.network_builder import BUILDER_KEYS, builder_state
from backend.errors import UserError
from backend.train.run_events import RunProgress
from backend.train.settings import TrainSettings
from ui import moe_panel
from ui.context import AppContext
from ui.train_form import FIELDS, GROUP_ORDER, OWN_WIDGETS, Form, error_key, widget_values
from ui.train_network import NO_LORAID, build_builder, control_updates, loraid_choices, net_key
from ui.preset_row import DELETE_ASKED, preset_choices
from ui.train_panel import OPENED, OUTSIDE, TrainPanel
from ui.train_run import (FOLLOW_SECONDS, LOSS_SERIES, RUN_OUTPUTS, SAMPLES_LABEL, RunSession, chart_label,
                          first_loss_frame, lr_frame)

INITIAL_PRESET = "shipped:lora"
_GROUP = dict(concurrency_id="train-tab", concurrency_limit=1, show_progress="hidden",
              api_visibility="undocumented")
DESCRIPTION = """### Train
Choose a preset or fill in the form: every setting is checked as you change it, and the message appears next to
the field. **Show command** gives this app's `accelerate launch` command with its TOML and the equivalent
musubi-tuner command. **Start** runs the training as a job (it keeps running if you close the page); **Stop** saves
a checkpoint (and the training state when *Save training state* is on) and **Resume** continues from it."""


def initial_settings(panel: TrainPanel) -> TrainSettings:
    try:
        return panel.store.load(INITIAL_PRESET)
    except UserError:
        return TrainSettings()


class Wiring:
    """Connect name-keyed handlers to the components, through sets of components (no positional arguments)."""

    def __init__(self, components: dict[str, Any]) -> None:
        self.components = components

    def on(self, triggers: list, handler: Callable[[dict], dict], outputs: list[str],
           inputs: list[str] | None = None, **options) -> None:
        """One event for all `triggers`; a handler returning a name that is not among `outputs` is a bug."""
        names = {component: name for name, component in self.components.items()}
        inputs = inputs if inputs is not None else input_names(self.components)
        allowed = set(outputs)

        def run(data: dict) -> dict:
            updates = handler({names[component]: value for component, value in data.items()})
            unexpected = set(updates) - allowed
            if unexpected:
                raise RuntimeError(f"{handler.__name__} returned {sorted(unexpected)}, which are not its outputs")
            return {self.components[name]: value for name, value in updates.items()}

        gr.on(triggers, run, inputs={self.components[n] for n in inputs},
              outputs={self.components[n] for n in outputs}, **{**_GROUP, **options})


def input_names(components: dict[str, Any]) -> list[str]:
    """What the handlers read: the form, the builder, the preset controls, the processes and the run session."""
    extra = ("preset", "preset:name", "preset:replace", "preset:file", "run:processes", "run:session", "loraid",
             "net:recipe", "net:paste", OUTSIDE, DELETE_ASKED, "command:ours", OPENED)
    return [name for name in components if name in FIELDS or name in extra
            or (name.startswith("net:") and name[4:] in BUILDER_KEYS)]


def build(ctx: AppContext, tab: gr.Tab) -> None:
    panel = TrainPanel(ctx)
    settings = initial_settings(panel)
    network_type, net_values = builder_state(settings.network_type, settings.network_args)
    start_widgets = {**widget_values(settings), **control_updates(net_values), "network_type": network_type,
                     "loraid": settings.loraid if settings.loraid is not None else NO_LORAID}
    check = panel.read(start_widgets)
    shown = panel.validation(start_widgets, check)
    c: dict[str, Any] = {}
    gr.Markdown(DESCRIPTION)

    _preset_widgets(c, panel)
    with gr.Row(equal_height=False, elem_id="train-layout"):
        with gr.Column(scale=3, min_width=480, elem_id="train-form-column"):
            _form_widgets(c, ctx, settings, net_values, check, shown)
        with gr.Column(scale=2, min_width=380, elem_id="train-run-column"):  # stays in view (CSS: sticky)
            _run_controls(c)
            _monitor_widgets(c)
    c[OPENED] = ctx.links["train:opened-preset"] = gr.State(None)  # set by the Jobs tab's "Open in Train tab"
    moe_panel.build(ctx)  # the LoRA-MoE mode: its own widgets, handlers and jobs (ui/moe_panel.py)
    wiring = Wiring(c)
    _wire(wiring, c, panel)


def _preset_widgets(c: dict, panel: TrainPanel) -> None:
    """One line (preset, Load), its message under it; saving, renaming, deleting, importing and exporting are one
    click away."""
    with gr.Row(equal_height=True, elem_id="train-presets"):
        c["preset"] = gr.Dropdown(preset_choices(panel.store), value=INITIAL_PRESET, label="Preset", scale=2,
                                  min_width=220, elem_id="train-preset")
        c["preset:load"] = gr.Button("Load", variant="primary", scale=0, min_width=90, elem_id="train-preset-load")
    described = panel.store.description(INITIAL_PRESET)  # the page's width for it: a description takes two lines
    c["preset:message"] = gr.Markdown(f"The form starts from preset `{INITIAL_PRESET.split(':')[1]}`: {described}"
                                      if described else "", elem_id="train-preset-message")
    with gr.Accordion("Manage presets: save, rename, delete, import, export", open=False,
                      elem_id="train-preset-manage"):
        with gr.Row():
            c["preset:name"] = gr.Textbox("", label="Name (to save, rename or import as)", scale=3,
                                          elem_id="train-preset-name")
            c["preset:replace"] = gr.Checkbox(False, label="Replace an existing preset", scale=1,
                                              elem_id="train-preset-replace")
            c["preset:save"] = gr.Button("Save form as preset", scale=0, min_width=170, elem_id="train-preset-save")
        with gr.Row():
            c["preset:rename"] = gr.Button("Rename", scale=0, min_width=90, elem_id="train-preset-rename")
            c["preset:delete"] = gr.Button("Delete", variant="stop", scale=0, min_width=90,
                                           elem_id="train-preset-delete")
            c[DELETE_ASKED] = gr.State(None)
            c["preset:export"] = gr.Button("Export", scale=0, min_width=90, elem_id="train-preset-export")
        with gr.Row():
            c["preset:file"] = gr.File(label="Import a preset file", file_types=[".json"], type="filepath",
                                       scale=1, elem_id="train-preset-import")
            c["preset:exported"] = gr.File(label="Exported preset", interactive=False, scale=1,
                                           elem_id="train-preset-export-file")


def _form_widgets(c: dict, ctx: AppContext, settings: TrainSettings, net_values: dict, check, shown: dict) -> None:
    form = Form()
    for group in GROUP_ORDER:
        names = [n for n, info in FIELDS.items() if info["group"] == group and n not in OWN_WIDGETS]
        with gr.Accordion(group, open=group in ("Model", "Dataset", "Network"), elem_id=f"train-group-{group}"):
            form.build_fields(names, settings, ctx.workspace, check.errors)
            if group == "Network":
                _network_widgets(c, form, shown, settings, net_values, check)
            if group == "Saving":
                c[OUTSIDE] = gr.Checkbox(False, label="Confirm: write outside the workspace",
                                         info="Needed when the output folder lies outside the workspace.",
                                         elem_id="train-output-outside")
    c.update(form.components)
    for name, applies in fields_for(settings.model_kind).items():  # the other models' fields start hidden
        c[name].visible = applies
    c.update({error_key(name): slot for name, slot in form.errors.items()})
    c["summary"] = gr.Markdown(shown["summary"], elem_id="train-validation")
    with gr.Row(equal_height=True):
        c["run:processes"] = gr.Number(1, precision=0, label="Processes (one per GPU)", scale=1, min_width=150,
                                       elem_id="train-processes")
        c["command:show"] = gr.Button("Show command", scale=0, min_width=140, elem_id="train-show-command")
    with gr.Accordion("Command", open=False):
        c["command:ours"] = gr.Code("", language="shell", label="This app", elem_id="train-command",
                                    wrap_lines=True)
        c["command:toml"] = gr.Code("", language=None, label="run.toml", elem_id="train-toml")
        c["command:musubi"] = gr.Code("", language="shell", label="musubi-tuner equivalent", elem_id="train-musubi",
                                      wrap_lines=True)
        c["command:notes"] = gr.Markdown("", elem_id="train-command-notes")


def _run_controls(c: dict) -> None:
    with gr.Row(equal_height=True):
        c["run:start"] = gr.Button("Start training", variant="primary", scale=1, min_width=130,
                                   elem_id="train-start")
        c["run:stop"] = gr.Button("Stop", variant="stop", scale=0, min_width=80, elem_id="train-stop")
        c["run:resume"] = gr.Button("Resume", scale=0, min_width=90, elem_id="train-resume-run")
        c["run:queue"] = gr.Button("Queue after it", visible=False, scale=0, min_width=130, elem_id="train-queue")
    c["run:message"] = gr.Markdown("", elem_id="train-run-message")


def _network_widgets(c: dict, form: Form, shown: dict, settings: TrainSettings, net_values: dict, check) -> None:
    loraid_update = shown.get("loraid") or {"choices": loraid_choices(settings, {})}
    with gr.Row():
        with gr.Column(scale=1):
            c["loraid"] = gr.Dropdown(loraid_update["choices"], value=settings.loraid or NO_LORAID,
                                      label="LORAID (free IDs of the workspace; taken ones name their file)",
                                      elem_id="train-loraid")
            form.add_error_slot("loraid", check.errors.get("loraid", ""))
        c["loraid:allocation"] = gr.Markdown(shown.get("loraid:allocation", ""), elem_id="train-loraid-allocation")
    build_builder(c, net_values)
    c["net:text"] = gr.Code(shown.get("net:text", ""), language=None, interactive=False, lines=4, wrap_lines=True,
                            label="network_args (paste into musubi-tuner's --network_args or TOML; includes the "
                                  "network type and the LORAID slice)", elem_id="train-network-args")
    form.add_error_slot("network_args", check.errors.get("network_args", ""))


LOSS_COLOURS = dict(zip(LOSS_SERIES, ("#4c78a8", "#f58518")))  # fixed: the legend names them


def _monitor_widgets(c: dict) -> None:
    empty = RunProgress()
    c["run:session"] = gr.State(RunSession())
    c["run:timer"] = gr.Timer(FOLLOW_SECONDS)  # the first tick adopts a running job, then RunPanel sets the pace
    c["run:job"] = gr.Markdown("", elem_id="train-job")
    c["run:progress"] = gr.HTML("", elem_id="train-progress")
    c["run:stats"] = gr.Markdown("", elem_id="train-stats")
    with gr.Column():
        c["run:loss"] = gr.LinePlot(first_loss_frame(), x="step", y="value", color="series",
                                    color_map=LOSS_COLOURS, x_axis_format="d",
                                    label=chart_label("Loss", empty), y_title="loss", height=260,
                                    elem_id="train-loss-chart")
        c["run:lr"] = gr.LinePlot(lr_frame(empty), x="step", y="lr", label=chart_label("Learning rate", empty),
                                  x_axis_format="d", y_axis_format="~s", height=200, y_lim=[0, None],
                                  elem_id="train-lr-chart")
    c["run:samples"] = gr.Gallery([], label=SAMPLES_LABEL, columns=3, height=200, object_fit="contain",
                                  elem_id="train-samples")
    c["run:log"] = gr.Textbox("", label="Log", lines=8, max_lines=8, autoscroll=True, interactive=False,
                              buttons=["copy"], elem_id="train-log")


WIDGETS = [*(n for n in FIELDS if n not in OWN_WIDGETS), "loraid", *(net_key(key) for key in BUILDER_KEYS), OUTSIDE]
COMMANDS = ["command:ours", "command:toml", "command:musubi", "command:notes"]
CHECKS = [*(error_key(name) for name in FIELDS), "summary", "net:text", "loraid", "loraid:allocation", *COMMANDS]
PRESETS = ["preset", "preset:message", "preset:file", "preset:exported"]
RUN = [*RUN_OUTPUTS, "run:message", "run:queue"]
OUTPUTS = {  # handler -> the names it may update
    "validate": CHECKS, "on_model_kind": [*MODEL_FIELDS, *CHECKS], "on_network_type": [net_key("use_dora"), *CHECKS], "apply_recipe": [*WIDGETS, *CHECKS], "apply_paste": [*WIDGETS, *CHECKS],
    "load_preset": [*WIDGETS, *CHECKS, *PRESETS], "describe_preset": ["preset:message"],
    "open_preset": [*WIDGETS, *CHECKS, *PRESETS], "save_preset": PRESETS, "rename_preset": PRESETS,
    "delete_preset": [*PRESETS, DELETE_ASKED], "export_preset": PRESETS, "import_preset": PRESETS, "refresh_presets": PRESETS,
    "refresh_datasets": ["dataset_config"],
    "show_command": [*COMMANDS, "run:message"],
    "start": [*CHECKS, *RUN], "queue": [*CHECKS, *RUN], "stop": RUN, "resume": RUN,
    "tick": [*RUN, *WIDGETS, *CHECKS, "preset:message"],
}
TRIGGERS = {"apply_recipe": ("net:recipe", "input"), "apply_paste": ("net:paste-apply", "click"),
            "load_preset": ("preset:load", "click"), "describe_preset": ("preset", "input"),
            "open_preset": (OPENED, "change"),
            "save_preset": ("preset:save", "click"),
            "rename_preset": ("preset:rename", "click"), "delete_preset": ("preset:delete", "click"),
            "export_preset": ("preset:export", "click"), "import_preset": ("preset:file", "upload"),
            "refresh_presets": ("preset", "focus"), "refresh_datasets": ("dataset_config", "focus"),
            "show_command": ("command:show", "click"),
            "start": ("run:start", "click"), "queue": ("run:queue", "click"), "stop": ("run:stop", "click"), "resume": ("run:resume", "click")}


def _wire(wiring: Wiring, c: dict, panel: TrainPanel) -> None:
    typed = [name for name in WIDGETS if isinstance(c[name], (gr.Textbox, gr.Dropdown))]
    wiring.on([c[name].input for name in WIDGETS] + [c[name].blur for name in typed] + [c["loraid"].focus],
              panel.validate, OUTPUTS["validate"], trigger_mode="always_last")
    for handler, (name, event) in TRIGGERS.items():
        wiring.on([getattr(c[name], event)], getattr(panel, handler), OUTPUTS[handler])
    wiring.on([c["run:timer"].tick], panel.tick, OUTPUTS["tick"], inputs=["run:session"])
    wiring.on([c["model_kind"].input], panel.on_model_kind, OUTPUTS["on_model_kind"])
    wiring.on([c["network_type"].input], panel.on_network_type, OUTPUTS["on_network_type"])
