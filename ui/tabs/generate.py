"""Generate tab: a prompt, a model, LoRAs at chosen strengths (conflicts flagged before running), the settings, Run as a
`python -m backend generate` job with its progress, and the gallery of results, which plays videos and can refill the
form from any result's settings. The handlers are in `ui.generate_panel`; this module lays out the widgets."""
from __future__ import annotations

import gradio as gr

from backend.generate.memory import MemoryOptions
from backend.generate.options import Companions, RunOptions
from backend.generate.settings import GenerateSettings
from ui import moe_generate, settings_form
from ui.context import AppContext
from ui.generate_form import FORM_PARTS, LORA_MODES, MAX_LORAS, GenerateForm, part_of
from ui.generate_panel import FollowedGeneration, GeneratePanel

POLL_SECONDS = 1.0
_GROUP = dict(concurrency_id="generate-tab", concurrency_limit=1, show_progress="hidden",
              api_visibility="private")  # a page, not an API: keeps the page quick to load
DEFAULTS = GenerateForm()
ELEM_IDS = {"negative_prompt": "gen-negative-prompt", "guidance_scale": "gen-guidance", "guidance_scale_2": "gen-guidance-2",
            "moe": "gen-moe-file", "hint": "gen-moe-hint", "expert_strength": "gen-moe-strengths"}
# The settings checked as they change, each with its own message slot under it (the prompt is checked on Run, the
# start image when it is uploaded, the overlap rule beside the LoRA list).
FIELD_ERRORS = [name for names in FORM_PARTS.values() for name in names
                if name not in ("prompt", "negative_prompt", "image", "allow_overlap")]


def elem_id(name: str) -> str:
    return ELEM_IDS.get(name, f"gen-{name.replace('_', '-')}")


def shown(name: str, info: str | None = None) -> dict:
    """A settings widget's label and hint, from its model's field."""
    field = part_of(name).field_info()[name]
    return {"label": field["label"], "info": info or field["help"]}


def setting_widget(name: str, errors: dict, info: str | None = None, visible: bool = True,
                   choices: list | None = None, typed: bool = False):
    """The widget of one setting, made from its field as every tab makes it (`settings_form.widget`; `choices` and
    `typed` as there), in a column with its problem slot right under it."""
    with gr.Column(min_width=160, scale=1, visible=visible) as column:
        made = settings_form.widget(part_of(name), name, getattr(DEFAULTS, name), elem_id(name), choices, typed)
        if info:
            made.info = info
        errors[name] = gr.Markdown("", visible=False, elem_id=f"{elem_id(name)}-error", elem_classes=["field-error"])
    made.column = column
    return made


def build(ctx: AppContext, tab: gr.Tab) -> None:
    panel = GeneratePanel(ctx)
    errors: dict[str, gr.Markdown] = {}  # one slot under each setting, shown while it is wrong
    gr.Markdown("### Generate\nText-to-video (one frame makes an image) on the demo models, a merged model or your own "
                "checkpoint, with any LoRAs at their own strengths. LoRAs on disjoint LORAIDs never change each "
                "other's weights; overlapping ones are flagged before you run. Each run is a job; results land in "
                f"`{ctx.workspace.outputs}` with a JSON record of every setting. The demo models are tiny and random: "
                "their videos are coloured noise, as expected.")
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(DEFAULTS.prompt, lines=3, **shown("prompt"), elem_id="gen-prompt",
                                placeholder="what the video shows, e.g. a red ball bouncing on a wooden floor")
            negative = gr.Textbox(DEFAULTS.negative_prompt, lines=1, **shown("negative_prompt"),
                                  elem_id="gen-negative-prompt")
        image = gr.Image(None, type="filepath", sources=["upload"], scale=1, height=180, elem_id="gen-image",
                         label=shown("image")["label"])
    models = panel.model_choices()
    with gr.Row():
        model = gr.Dropdown(models, value=models[0][1] if models else None, allow_custom_value=True, scale=4,
                            label="Model (a demo, a merged model from outputs/merged, or type a checkpoint path; "
                                  "a pair as HIGH | LOW)", elem_id="gen-model")
        model_kind = gr.Dropdown(panel.kind_choices(), value=DEFAULTS.model_kind, scale=2,
                                 label="Model type (for your own files)", elem_id="gen-model-kind")
        refresh = gr.Button("Refresh lists", scale=0, min_width=130, elem_id="gen-refresh")
    model_message = gr.Markdown(panel.model_message(models[0][1], DEFAULTS.model_kind) if models else "",
                                elem_id="gen-model-message")
    companions = {}
    with gr.Accordion("Other model parts (empty: the workspace's)", open=False):
        with gr.Row():
            for name in FORM_PARTS[Companions]:
                companions[name] = setting_widget(name, errors)

    gr.Markdown("#### LoRAs")
    lora_files = gr.Dropdown(panel.lora_choices(), value=[], multiselect=True, allow_custom_value=True,
                             label=f"LoRA files in {ctx.workspace.loras} (or type a path and press Enter)",
                             elem_id="gen-loras")
    with gr.Row():
        sliders = [gr.Slider(-1.0, 2.0, value=1.0, step=0.05, visible=False, label=f"LoRA {i + 1} multiplier",
                             min_width=260, elem_id=f"gen-lora-multiplier-{i}") for i in range(MAX_LORAS)]
    conflicts = gr.HTML("", elem_id="gen-lora-conflicts")
    with gr.Row():
        lora_mode = gr.Radio(LORA_MODES, value=DEFAULTS.lora_mode, label="How LoRAs are applied",
                             elem_id="gen-lora-mode")
        allow_overlap = gr.Checkbox(DEFAULTS.allow_overlap, elem_id="gen-allow-overlap", **shown("allow_overlap"))
        loraid = setting_widget("loraid", errors, info=f"{shown('loraid')['info']}; each applies at strength 1.0")

    moe = moe_generate.build(ctx, lambda name, **how: setting_widget(name, errors, **how))

    gr.Markdown("#### Settings")
    widgets: dict = {**companions}
    with gr.Row():
        for name in GenerateSettings.groups()["Size"]:
            widgets[name] = setting_widget(name, errors)
    with gr.Row():
        for name in GenerateSettings.groups()["Sampling"]:
            extra = {"info": "A14B pair; 0: the same as the guidance scale",
                     "visible": panel.is_pair(model.value, model_kind.value)} if name == "guidance_scale_2" else {}
            widgets[name] = setting_widget(name, errors, **extra)
        random_seed = gr.Checkbox(DEFAULTS.random_seed, label="Random seed (recorded in the result)",
                                  elem_id="gen-random-seed")
    with gr.Accordion("Memory (auto plans these on a GPU)", open=False, elem_id="gen-memory-options"):
        with gr.Row():
            for name in FORM_PARTS[MemoryOptions]:
                widgets[name] = setting_widget(name, errors)
    with gr.Row():
        for name in FORM_PARTS[RunOptions]:
            widgets[name] = setting_widget(name, errors)

    with gr.Row():
        run_button = gr.Button("Run", variant="primary", scale=0, min_width=140, elem_id="gen-run")
        stop_button = gr.Button("Stop", variant="stop", scale=0, min_width=100, elem_id="gen-stop")
        status = gr.Markdown("", elem_id="gen-status")
    progress = gr.HTML("", elem_id="gen-progress")

    gr.Markdown("#### Results (newest first; click one to play it and see its settings)")
    gallery = gr.Gallery([], columns=4, height=420, allow_preview=True, object_fit="contain", label="Results",
                         elem_id="gen-gallery")
    with gr.Row():
        reuse = gr.Button("Reuse these settings", scale=0, min_width=200, elem_id="gen-reuse")
        reuse_message = gr.Markdown("", elem_id="gen-reuse-message")
    selected_settings = gr.Code("", language="json", label="Settings of the selected result", max_lines=24,
                                elem_id="gen-result-settings")

    slot_files = gr.State([])
    followed = gr.State(FollowedGeneration())
    results = gr.State([])
    selected = gr.State(None)
    timer = gr.Timer(POLL_SECONDS, active=True)  # the first tick fills the gallery and picks up a running job

    widgets.update(prompt=prompt, negative_prompt=negative, model=model, model_kind=model_kind, image=image,
                   random_seed=random_seed, lora_mode=lora_mode, allow_overlap=allow_overlap, lora_files=lora_files,
                   slot_files=slot_files, loraid=loraid, **{name: moe[name] for name in moe_generate.FIELDS})
    form = [widgets[name] for name in GenerateForm.names()] + sliders

    slot_inputs = [model, model_kind, lora_files, slot_files, *sliders]
    slot_outputs = [slot_files, conflicts, *sliders]
    lora_files.change(panel.lora_slots, inputs=slot_inputs, outputs=slot_outputs, **_GROUP)
    for control in (model, model_kind):
        control.change(panel.model_message, inputs=[model, model_kind], outputs=model_message, **_GROUP).then(
            panel.lora_slots, inputs=slot_inputs, outputs=slot_outputs, **_GROUP)
    gr.on([model.change, model_kind.change], panel.pair_fields, inputs=[model, model_kind],
          outputs=widgets["guidance_scale_2"].column, **_GROUP)  # A14B-only fields hidden for other models
    error_slots = [errors[name] for name in FIELD_ERRORS]
    for name in [*FIELD_ERRORS, "random_seed"]:  # each setting's own message, next to it, as it changes
        widgets[name].change(panel.field_errors, inputs=form, outputs=error_slots, **_GROUP)
    gr.on([refresh.click, tab.select], panel.refresh, inputs=[model, lora_files],
          outputs=[model, lora_files, gallery, results], **_GROUP)

    run_button.click(panel.run, inputs=[followed, *form],
                     outputs=[followed, status, progress, timer, model_message, conflicts, *error_slots], **_GROUP)
    moe_generate.wire(moe, tab, selected_settings, widgets)
    stop_button.click(panel.stop, inputs=followed, outputs=status, **_GROUP)
    timer.tick(panel.tick, inputs=followed,
               outputs=[followed, status, progress, gallery, results, selected, selected_settings, timer], **_GROUP)
    gallery.select(panel.select, inputs=results, outputs=[selected, selected_settings], **_GROUP)
    reuse.click(panel.reuse, inputs=[selected, *form], outputs=[*form, reuse_message], **_GROUP)
