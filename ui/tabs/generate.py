"""Generate tab: a prompt, a model, LoRAs at chosen strengths (conflicts flagged before running), the settings, Run as a
`python -m backend generate` job with its progress, and the gallery of results, which plays videos and can refill the
form from any result's settings. The handlers are in `ui.generate_panel`; this module lays out the widgets."""
from __future__ import annotations

import gradio as gr

from backend.errors import UserError
from backend.generate.settings import GenerateSettings
from ui import moe_generate
from ui.context import AppContext
from ui.generate_form import LORA_MODES, MAX_LORAS, GenerateForm
from ui.generate_panel import FollowedGeneration, GeneratePanel
from ui.widgets import report_error

POLL_SECONDS = 1.0
_GROUP = dict(concurrency_id="generate-tab", concurrency_limit=1, show_progress="hidden",
              api_visibility="private")  # a page, not an API: keeps the page quick to load
DEFAULTS = GenerateForm()
FIELDS = GenerateSettings.field_info()


def shown(name: str, info: str | None = None) -> dict:
    """A settings widget's label and hint, from the model's field."""
    return {"label": FIELDS[name]["label"], "info": info or FIELDS[name]["help"]}


def build(ctx: AppContext, tab: gr.Tab) -> None:
    panel = GeneratePanel(ctx)
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
                         label=FIELDS["image"]["label"])
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
    with gr.Accordion("Other model parts (empty: the workspace's)", open=False):
        with gr.Row():
            vae = gr.Textbox("", label="VAE folder", elem_id="gen-vae")
            text_encoder = gr.Textbox("", label="Text encoder folder", elem_id="gen-text-encoder")
            tokenizer = gr.Textbox("", label="Tokenizer folder", elem_id="gen-tokenizer")
            image_encoder = gr.Textbox("", label="CLIP image encoder folder (Wan2.1 I2V)", elem_id="gen-image-encoder")

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
        allow_overlap = gr.Checkbox(DEFAULTS.allow_overlap, elem_id="gen-allow-overlap",
                                    label="Allow overlap (apply LoRAs that change the same weights; they add up)")

    moe = moe_generate.build(ctx)

    gr.Markdown("#### Settings")
    with gr.Row():
        width = gr.Number(DEFAULTS.width, precision=0, **shown("width"), elem_id="gen-width")
        height = gr.Number(DEFAULTS.height, precision=0, **shown("height"), elem_id="gen-height")
        frames = gr.Number(DEFAULTS.frames, precision=0, **shown("frames"), elem_id="gen-frames")
        fps = gr.Number(DEFAULTS.fps, precision=0, **shown("fps"), elem_id="gen-fps")
        steps = gr.Number(DEFAULTS.steps, precision=0, **shown("steps"), elem_id="gen-steps")
    with gr.Row():
        guidance = gr.Number(DEFAULTS.guidance_scale, **shown("guidance_scale"), elem_id="gen-guidance")
        guidance_2 = gr.Number(DEFAULTS.guidance_scale_2, **shown("guidance_scale_2", "A14B pair; 0: the same as the guidance scale"),
                               visible=panel.is_pair(model.value, model_kind.value), elem_id="gen-guidance-2")
        flow_shift = gr.Number(DEFAULTS.flow_shift, **shown("flow_shift"),
                               elem_id="gen-flow-shift")
        seed = gr.Number(DEFAULTS.seed, precision=0, **shown("seed"), elem_id="gen-seed")
        random_seed = gr.Checkbox(DEFAULTS.random_seed, label="Random seed (recorded in the result)",
                                  elem_id="gen-random-seed")
        sampler = gr.Radio(FIELDS["sampler"]["choices"], value=DEFAULTS.sampler, **shown("sampler"), elem_id="gen-sampler")
    with gr.Row():
        cpu_offload = gr.Checkbox(DEFAULTS.cpu_offload, elem_id="gen-cpu-offload",
                                  label="CPU offload (less GPU memory, a transfer per model per prompt; CUDA only)")
        fp8 = gr.Checkbox(DEFAULTS.fp8, label="fp8 transformer storage (half of bf16, slight precision loss)",
                          elem_id="gen-fp8")
        vae_tiling = gr.Checkbox(DEFAULTS.vae_tiling, label="VAE tiling (less memory, slower decode)",
                                 elem_id="gen-vae-tiling")
        blocks_to_swap = gr.Number(DEFAULTS.blocks_to_swap, precision=0, minimum=0, elem_id="gen-blocks-to-swap",
                                   label="Blocks to swap (kept in CPU memory, each copied to the GPU as it runs)")
        save_latents = gr.Checkbox(DEFAULTS.save_latents, label="Also save latents", elem_id="gen-save-latents")
        save_frames = gr.Checkbox(DEFAULTS.save_frames, label="Also save frames as png", elem_id="gen-save-frames")
    settings_message = gr.Markdown("", elem_id="gen-settings-message")

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

    widgets = dict(prompt=prompt, negative_prompt=negative, model=model, model_kind=model_kind, image=image, vae=vae,
                   text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder, width=width,
                   height=height, frames=frames, fps=fps, steps=steps, guidance_scale=guidance,
                   guidance_scale_2=guidance_2, flow_shift=flow_shift, seed=seed, random_seed=random_seed,
                   sampler=sampler, lora_mode=lora_mode, allow_overlap=allow_overlap, cpu_offload=cpu_offload,
                   fp8=fp8, vae_tiling=vae_tiling, blocks_to_swap=blocks_to_swap, save_latents=save_latents, save_frames=save_frames,
                   lora_files=lora_files, slot_files=slot_files)
    form = [widgets[name] for name in GenerateForm.names()] + sliders

    slot_inputs = [model, model_kind, lora_files, slot_files, *sliders]
    slot_outputs = [slot_files, conflicts, *sliders]
    lora_files.change(panel.lora_slots, inputs=slot_inputs, outputs=slot_outputs, **_GROUP)
    for control in (model, model_kind):
        control.change(panel.model_message, inputs=[model, model_kind], outputs=model_message, **_GROUP).then(
            panel.lora_slots, inputs=slot_inputs, outputs=slot_outputs, **_GROUP)
    gr.on([model.change, model_kind.change], panel.pair_fields, inputs=[model, model_kind], outputs=guidance_2,
          **_GROUP)  # A14B-only fields hidden for single-transformer models
    checked = [*GenerateSettings.groups()["Size"], *GenerateSettings.groups()["Sampling"], "random_seed"]
    for control in (widgets[name] for name in checked):  # every field `validate_values` checks, by name
        control.change(panel.settings_message, inputs=form, outputs=settings_message, **_GROUP)
    gr.on([refresh.click, tab.select], panel.refresh, inputs=[model, lora_files],
          outputs=[model, lora_files, gallery, results], **_GROUP)

    def run(followed_now, moe_file, moe_hint, moe_strengths, *values):
        try:
            extra = moe_generate.arguments(moe_file, moe_hint, moe_strengths)
        except UserError as exc:
            return followed_now, f"⚠ {report_error(exc)}", gr.skip(), gr.skip()
        return panel.run_with(extra, followed_now, *values)

    run_button.click(run, inputs=[followed, moe["file"], moe["hint"], moe["strengths"], *form],
                     outputs=[followed, status, progress, timer], **_GROUP)
    moe_generate.wire(moe, tab, selected_settings, widgets)
    stop_button.click(panel.stop, inputs=followed, outputs=status, **_GROUP)
    timer.tick(panel.tick, inputs=followed,
               outputs=[followed, status, progress, gallery, results, selected, selected_settings, timer], **_GROUP)
    gallery.select(panel.select, inputs=results, outputs=[selected, selected_settings], **_GROUP)
    reuse.click(panel.reuse, inputs=[selected, *form], outputs=[*form, reuse_message], **_GROUP)
