"""Dataset tab: scan a folder of images and clips, edit captions, preview buckets and frame extraction, write the
musubi-tuner dataset TOML and start the cache jobs. The work is in `backend.data`; handlers in `ui.dataset_panel`.

Stable elem_ids (browser tests drive the tab through these):
  scan:      #dataset-folder (dropdown, typed paths allowed) #dataset-scan #dataset-summary #dataset-problems
  captions:  #dataset-gallery #dataset-items (table; a click selects) #dataset-item (dropdown of files, "(no caption)"
             marks missing ones) #dataset-next-missing #dataset-item-preview #dataset-item-info #dataset-caption
             #dataset-caption-save #dataset-caption-message
  bulk edit: #dataset-bulk-operation #dataset-bulk-scope #dataset-bulk-text #dataset-bulk-replacement
             #dataset-bulk-position #dataset-bulk-regex #dataset-bulk-case #dataset-bulk-preview #dataset-bulk-apply
             #dataset-bulk-message #dataset-bulk-changes
  settings:  #dataset-form-<musubi key> (resolution_width, resolution_height, caption_extension, batch_size,
             num_repeats, enable_bucket, bucket_no_upscale, target_frames, frame_extraction, frame_stride,
             frame_sample, max_frames, source_fps)
  buckets:   #dataset-buckets-run #dataset-buckets-message #dataset-buckets #dataset-dropped
  frames:    #dataset-frames-video #dataset-frames-run #dataset-frames-message #dataset-frames #dataset-frames-strip
  TOML:      #dataset-toml-path (#dataset-toml-path-error under it) #dataset-toml-generate #dataset-toml-load
             #dataset-toml (editable code) #dataset-toml-outside #dataset-toml-write #dataset-toml-message
  cache:     #dataset-cache-<option> (device, dtype, batch-size, skip-existing, i2v, vae-tiling,
             max-sequence-length, each with #...-error under it) #dataset-cache-latents #dataset-cache-text #dataset-cache-status #dataset-cache-log
"""
from __future__ import annotations

import functools

import gradio as gr

from backend.data.caption_edits import BULK_OPERATIONS
from backend.data.dataset_folder import dataset_folder_choices
from backend.data.dataset_form import DatasetForm, existing_form
from backend.system.devices import default_device, device_choices
from ui import dataset_views as views
from ui.context import AppContext
from ui.dataset_panel import ALL_FOLDERS, CACHE_FIELDS, FORM_FIELDS, OUTPUTS, DatasetPanel, cache_form, form_values
from ui.merge_ema_common import OUTSIDE_LABEL, problem_slot

POLL_SECONDS = 1.0
_GROUP = dict(concurrency_id="dataset-tab", concurrency_limit=1, show_progress="hidden")
INTRO = ("### Dataset\nScan a folder of images and short clips with a caption file beside each (`clip.mp4` → "
         "`clip.txt`; subfolders such as `concept_a/images` are found too). Fix captions, check how items land in "
         "buckets and which frames each clip gives, write the musubi-tuner `dataset.toml`, and cache latents and "
         "text once for training.")


def wire(handler, outputs: dict[str, gr.components.Component]):
    """(function, output list) for an event: the handler's {name: value} becomes the output tuple."""
    unknown = set(outputs) - OUTPUTS
    assert not unknown, f"not a Dataset tab output: {unknown}"
    names = list(outputs)

    @functools.wraps(handler)
    def run(*args):
        result = handler(*args)
        values = tuple(result.get(name, gr.skip()) for name in names)
        return values[0] if len(values) == 1 else values  # gradio takes one output's value as it is

    return run, [outputs[name] for name in names]


def _file_text(path) -> str:
    """The TOML file the page opens with, as it is on disk (empty when there is none yet)."""
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return ""


def form_component(name: str, info: dict, value):
    annotation = str(DatasetForm.model_fields[name].annotation)
    common = dict(label=info["label"], info=info["help"], elem_id=f"dataset-form-{name}", value=value)
    if info["choices"]:
        return gr.Dropdown(list(info["choices"]), **common)
    if "bool" in annotation:
        return gr.Checkbox(**common)
    if name in ("target_frames", "caption_extension"):
        return gr.Textbox(**common)
    return gr.Number(**common)  # no precision: a fraction reaches the check and is refused beside the field


def build_form(initial: DatasetForm) -> tuple[dict[str, gr.components.Component], dict[str, gr.Markdown]]:
    """The settings' widgets (`form.<name>`) and, under each, its problem slot (`form_problem.<name>`)."""
    shown = form_values(initial)
    components, slots = {}, {}
    for group, names in DatasetForm.groups().items():
        with gr.Group():
            gr.Markdown(f"**{group}**")
            with gr.Row(equal_height=False):
                for name in names:
                    with gr.Column(min_width=160):
                        components[f"form.{name}"] = form_component(name, DatasetForm.field_info()[name],
                                                                    shown[f"form.{name}"])
                        slots[f"form_problem.{name}"] = gr.Markdown("", visible=False,
                                                                    elem_id=f"dataset-form-{name}-error",
                                                                    elem_classes=["field-error"])
    return components, slots


def build(ctx: AppContext, tab: gr.Tab) -> None:
    panel = DatasetPanel(ctx)
    default_folder = ctx.workspace.demo_dataset if ctx.workspace.demo_dataset.is_dir() else ctx.workspace.datasets
    initial = existing_form(default_folder)[0] or DatasetForm()
    gr.Markdown(INTRO)
    with gr.Row():
        folder = gr.Dropdown(dataset_folder_choices(ctx.workspace.datasets), value=str(default_folder),
                             allow_custom_value=True, scale=4, elem_id="dataset-folder",
                             label="Dataset folder (pick one, or type a path; relative paths start at the workspace)")
        scan_button = gr.Button("Scan", variant="primary", scale=0, min_width=120, elem_id="dataset-scan")
    summary = gr.Markdown("Click **Scan** to list the folder's images and videos.", elem_id="dataset-summary")
    problems = gr.Markdown("", elem_id="dataset-problems")

    gr.Markdown("#### Captions\nClick a thumbnail or a row of the table to edit that file's caption.")
    gallery = gr.Gallery(label="Thumbnails", show_label=False, columns=10, height=260, object_fit="contain",
                         allow_preview=False, elem_id="dataset-gallery")  # no label over the first row
    items = gr.Dataframe(headers=views.ITEM_HEADERS, value=[], interactive=False, wrap=True, max_height=320,
                         column_widths=["28%", "7%", "8%", "17%", "40%"],
                         label="Files (click a row to edit its caption)", elem_id="dataset-items")
    with gr.Row():
        item = gr.Dropdown([], value=None, label="File", scale=4, elem_id="dataset-item")
        next_missing = gr.Button("Next file without a caption", scale=0, min_width=220,
                                 elem_id="dataset-next-missing")
    with gr.Row():
        preview = gr.Image(label="Preview (first frame of a clip)", interactive=False, height=256, scale=1,
                           elem_id="dataset-item-preview")
        with gr.Column(scale=3):
            item_info = gr.Markdown("", elem_id="dataset-item-info")
            caption = gr.Textbox("", label="Caption", lines=3, elem_id="dataset-caption")
            with gr.Row():
                save = gr.Button("Save caption", variant="primary", scale=0, min_width=160,
                                 elem_id="dataset-caption-save")
                caption_message = gr.Markdown("", elem_id="dataset-caption-message")

    with gr.Accordion("Bulk edit captions (previewed, applied only on confirm)", open=True):
        with gr.Row():
            operation = gr.Radio(list(BULK_OPERATIONS), value=BULK_OPERATIONS[0], label="Edit",
                                 elem_id="dataset-bulk-operation", scale=2)
            scope = gr.Dropdown([ALL_FOLDERS], value=ALL_FOLDERS, label="Apply to", elem_id="dataset-bulk-scope",
                                scale=2)
            position = gr.Radio(["start", "end"], value="start", label="Trigger word position",
                                elem_id="dataset-bulk-position", scale=1)
        with gr.Row():
            bulk_text = gr.Textbox("", label="Trigger word / prefix / suffix / text to find",
                                   elem_id="dataset-bulk-text", scale=3)
            replacement = gr.Textbox("", label="Replace with (find / replace)", elem_id="dataset-bulk-replacement",
                                     scale=3)
            regex = gr.Checkbox(False, label="Regular expression", elem_id="dataset-bulk-regex", scale=1)
            case = gr.Checkbox(True, label="Case sensitive", elem_id="dataset-bulk-case", scale=1)
        with gr.Row():
            bulk_preview = gr.Button("Preview", scale=0, min_width=120, elem_id="dataset-bulk-preview")
            bulk_apply = gr.Button("Apply", variant="primary", scale=0, min_width=120, elem_id="dataset-bulk-apply")
            bulk_message = gr.Markdown("", elem_id="dataset-bulk-message")
        changes = gr.Dataframe(headers=views.CHANGE_HEADERS, value=[], interactive=False, wrap=True, max_height=260,
                               label="Captions that change", elem_id="dataset-bulk-changes")

    gr.Markdown("#### Settings")
    form, form_slots = build_form(initial)
    with gr.Row():
        buckets_run = gr.Button("Preview buckets", scale=0, min_width=160, elem_id="dataset-buckets-run")
        buckets_message = gr.Markdown("", elem_id="dataset-buckets-message")
    with gr.Row():
        buckets = gr.Dataframe(headers=views.BUCKET_HEADERS, value=[], interactive=False, scale=3,
                               label="Buckets at the chosen resolution", elem_id="dataset-buckets")
        dropped = gr.Dataframe(headers=views.DROPPED_HEADERS, value=[], interactive=False, wrap=True, scale=2,
                               label="Items dropped", elem_id="dataset-dropped")

    gr.Markdown("#### Frame extraction")
    with gr.Row():
        frames_video = gr.Dropdown([], value=None, label="Video", scale=3, elem_id="dataset-frames-video")
        frames_run = gr.Button("Preview frames", scale=0, min_width=160, elem_id="dataset-frames-run")
    frames_message = gr.Markdown("", elem_id="dataset-frames-message")
    frames = gr.Dataframe(headers=views.FRAME_HEADERS, value=[], interactive=False, wrap=True,
                          label="Frames each mode takes (target_frames, frame_stride, frame_sample, max_frames and "
                                "source_fps from the settings)", elem_id="dataset-frames")
    frames_strip = gr.HTML("", elem_id="dataset-frames-strip")

    gr.Markdown("#### Dataset TOML")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            toml_path = gr.Textbox(str(default_folder / "dataset.toml"), label="TOML file",
                                   elem_id="dataset-toml-path")
            toml_path_problem = problem_slot("dataset-toml-path-error")
        generate = gr.Button("Generate from settings", scale=0, min_width=200, elem_id="dataset-toml-generate")
        load = gr.Button("Load file", scale=0, min_width=120, elem_id="dataset-toml-load")
    toml = gr.Code(_file_text(default_folder / "dataset.toml"), language=None, interactive=True, lines=14,
                   max_lines=40, elem_id="dataset-toml",
                   label="Dataset TOML (editable; validated before it is written)")
    with gr.Row():
        outside = gr.Checkbox(False, label=OUTSIDE_LABEL, scale=0, min_width=180, elem_id="dataset-toml-outside")
        write = gr.Button("Write TOML", variant="primary", scale=0, min_width=160, elem_id="dataset-toml-write")
        toml_message = gr.Markdown("", elem_id="dataset-toml-message")

    gr.Markdown("#### Cache (run once before training)")
    cache_options = cache_form(start={"device": default_device()}, choices={"device": device_choices()})
    cache_options.build()
    with gr.Row():
        cache_latents = gr.Button("Cache latents", variant="primary", scale=0, min_width=160,
                                  elem_id="dataset-cache-latents")
        cache_text = gr.Button("Cache text", variant="primary", scale=0, min_width=160, elem_id="dataset-cache-text")
        cache_status = gr.Markdown("", elem_id="dataset-cache-status")
    cache_progress = gr.HTML("", elem_id="dataset-cache-progress")
    cache_log = gr.Textbox("", label="Cache job log (last lines; the Jobs tab has all of it)", lines=8,
                           max_lines=8, interactive=False, autoscroll=True, elem_id="dataset-cache-log")

    scan_state, plan_state, cache_view = gr.State(None), gr.State(None), gr.State(None)
    timer = gr.Timer(POLL_SECONDS)  # its first tick adopts a cache job still running (a reloaded page)
    form_inputs = [form[f"form.{name}"] for name in FORM_FIELDS]
    listing = dict(scan=scan_state, summary=summary, problems=problems, items=items, item=item)
    bucket_outputs = dict(buckets=buckets, dropped=dropped, buckets_message=buckets_message)
    frame_outputs = dict(frames=frames, frames_strip=frames_strip, frames_message=frames_message)
    item_outputs = dict(preview=preview, item_info=item_info, caption=caption, caption_message=caption_message)

    def on(event, handler, inputs, outputs):
        function, output_list = wire(handler, outputs)
        event(function, inputs=inputs, outputs=output_list, **_GROUP)

    on(scan_button.click, panel.scan, [folder, scan_state, *form_inputs],
       dict(**listing, gallery=gallery, scope=scope, plan=plan_state, changes=changes, bulk_message=bulk_message,
            frames_video=frames_video, toml_path=toml_path, toml_path_problem=toml_path_problem, toml=toml,
            toml_message=toml_message,
            **bucket_outputs, **frame_outputs, **form, **form_slots))
    on(item.change, panel.select_item, [scan_state, item], item_outputs)
    items.select(_row_pick, inputs=None, outputs=item, **_GROUP)
    gallery.select(_gallery_pick, inputs=scan_state, outputs=item, **_GROUP)
    on(next_missing.click, panel.next_missing, [scan_state, item], dict(item=item, caption_message=caption_message))
    on(save.click, panel.save_caption, [scan_state, item, caption], dict(**listing, **item_outputs))
    bulk_inputs = [scan_state, operation, scope, bulk_text, replacement, position, regex, case]
    on(bulk_preview.click, panel.bulk_preview, bulk_inputs, dict(plan=plan_state, changes=changes,
                                                                 bulk_message=bulk_message))
    on(bulk_apply.click, panel.bulk_apply, [scan_state, plan_state, item],
       dict(**listing, plan=plan_state, changes=changes, bulk_message=bulk_message, caption=caption,
            item_info=item_info))
    on(buckets_run.click, panel.buckets, [scan_state, *form_inputs], {**bucket_outputs, **form_slots})
    on(frames_run.click, panel.frames, [scan_state, frames_video, *form_inputs], {**frame_outputs, **form_slots})
    on(frames_video.change, panel.frames, [scan_state, frames_video, *form_inputs], {**frame_outputs, **form_slots})
    on(generate.click, panel.generate_toml, [scan_state, toml_path, *form_inputs],
       dict(toml=toml, toml_message=toml_message, **form_slots))
    for widget in form_inputs:
        on(widget.input, panel.check_form, form_inputs, form_slots)
    on(load.click, panel.load_toml, [toml_path], dict(toml=toml, toml_message=toml_message))
    on(write.click, panel.write_toml, [toml_path, toml, outside],
       dict(toml_path_problem=toml_path_problem, toml_message=toml_message))
    for event in (toml_path.blur, toml_path.submit, outside.change):
        on(event, panel.check_toml_path, [toml_path, outside], dict(toml_path_problem=toml_path_problem))
    cache_slots = {f"cache_problem.{name}": cache_options.slots[name] for name in CACHE_FIELDS}
    cache_outputs = dict(cache_view=cache_view, cache_status=cache_status, cache_log=cache_log,
                         cache_progress=cache_progress, timer=timer, **cache_slots)
    for what, button in (("latents", cache_latents), ("text", cache_text)):
        on(button.click, functools.partial(panel.start_cache, what), [toml_path, toml, *cache_options.inputs],
           cache_outputs)
    for name in CACHE_FIELDS:
        on(cache_options.widgets[name].change, panel.check_cache, [toml_path, *cache_options.inputs], cache_slots)
    on(timer.tick, panel.poll_cache, [cache_view], cache_outputs)


def _gallery_pick(scan, event: gr.SelectData):
    """The file name of the clicked thumbnail (the gallery lists the scan's entries in order)."""
    if scan is None or event.index is None:
        return gr.skip()
    entries = scan.entries
    return entries[event.index].name if 0 <= event.index < len(entries) else gr.skip()


def _row_pick(event: gr.SelectData):
    """The file name of the clicked table row (its first column)."""
    row = event.row_value or []
    return row[0] if row and row[0] else gr.skip()
