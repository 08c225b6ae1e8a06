"""Merge tab: fold LoRAs into a base DiT (a Wan2.2 A14B pair too), or merge LoRAs into one LoRA, as a job.

The options' labels, hints, starting values and choices come from `MergeSettings` / `MergeLorasSettings`; checks,
names and summaries from `backend.compose` (merge_plan, merge_request, output_names, summaries); this module builds
widgets and turns them into a request."""
from __future__ import annotations

import sys
from html import escape
from pathlib import Path

import gradio as gr

from backend.compose.merge_plan import (NO_EXPERT, TABLE_HEADERS, display_path, lora_files, overlap_lines,
                                        picks_from_rows, table_rows, workspace_path)
from backend.compose.merge_request import DitMerge, LoraMerge
from backend.compose.output_names import (MERGED_DIT_FOLDER, PAIR_VARIANTS, free_path, high_noise_partner,
                                          merged_dit_stem, merged_lora_stem)
from backend.compose.settings import MergeLorasSettings, MergeSettings
from backend.compose.summaries import merge_summary
from backend.config.presets import job_presets
from backend.errors import UserError
from backend.models.demo import TRANSFORMER_FILE, expert_file
from backend.output_guard import output_message
from backend.system.devices import device_choices
from ui.context import AppContext
from ui.merge_ema_common import (NOT_STARTED, OUTSIDE_LABEL, FollowedJob, error_html, follow_job, job_bar,
                                 output_update, problem_slot, refused, shown, summary_markdown, tick)
from ui.preset_row import PresetRow
from ui.settings_form import SettingsForm, slot_update

MODES = [("Into a DiT (a new model file)", "dit"), ("LoRAs into one LoRA", "loras")]
JOB_KINDS = ("merge", "merge-loras")
PAIR_OUTPUT_HINT = f"{MergeSettings.field_info()['out']['help']}; a Wan2.2 A14B pair writes NAME-high_noise and " \
                   "NAME-low_noise"
OPTIONS = ["allow_overlap", "dtype", "device", "rank", "precision", "overwrite"]  # the form's option fields
MODE_MODELS = {"dit": MergeSettings, "loras": MergeLorasSettings}
MODE_JOBS = {"dit": "merge", "loras": "merge-loras"}  # each mode's presets are its job type's
MODE_REQUESTS = {"dit": DitMerge, "loras": LoraMerge}
PRESET_FIELDS = ("files", "typed paths", "table", "base", "high-noise base", "output")  # then the options
POLL_SECONDS = 1.0
_GROUP = dict(concurrency_id="merge-tab", concurrency_limit=1, show_progress="hidden")


def merged_folder(ctx: AppContext) -> Path:
    return ctx.workspace.root.joinpath(*MERGED_DIT_FOLDER)


def base_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """The demo checkpoints, then earlier merged models (a merge may build on another)."""
    ws = ctx.workspace
    demos = [(f"Demo T2V ({display_path(ws.root, ws.demo_t2v / TRANSFORMER_FILE)})", ws.demo_t2v / TRANSFORMER_FILE),
             (f"Demo A14B pair, low-noise expert ({display_path(ws.root, expert_file(ws, 'low'))})",
              expert_file(ws, "low"))]
    folder = merged_folder(ctx)
    merged = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return [(label, str(path)) for label, path in demos if path.is_file()] + \
        [(f"Merged: {path.name}", str(path)) for path in merged]


def high_choices(ctx: AppContext) -> list[tuple[str, str]]:
    demo = expert_file(ctx.workspace, "high")
    return [("None: a single model", "")] + ([(f"Demo A14B pair, high-noise expert "
                                               f"({display_path(ctx.workspace.root, demo)})", str(demo))]
                                             if demo.is_file() else [])


def lora_choices(ctx: AppContext) -> list[str]:
    folder = ctx.workspace.loras
    return sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def merge_form() -> SettingsForm:
    """The merges' options, wired by field name: each widget, its problem slot and its value come from the field of
    MergeSettings (into a DiT) or MergeLorasSettings (rank, precision)."""
    return SettingsForm((MergeSettings, MergeLorasSettings), OPTIONS, "merge", choices={"device": device_choices()})


def overlap_html(lines: list[str], count: int) -> str:
    if count < 2:
        return ""
    if not lines:
        return (f'<p class="merge-ok"><b>No overlap:</b> the {count} LoRAs change different weights, so none of '
                f"them changes what another one merged.</p>")
    items = "".join(f'<li style="color: #c0392b;">{escape(line)}</li>' for line in lines)
    return (f'<p style="color: #c0392b;"><b>Overlap:</b> these LoRAs change the same weights; the merge is refused '
            f"unless you tick “Allow overlap” (their changes then add up).</p><ul>{items}</ul>")


def job_title(request: DitMerge | LoraMerge) -> str:
    count = f"{len(request.picks)} LoRA{'s' * (len(request.picks) != 1)}"
    if isinstance(request, LoraMerge):
        return f"Merge {count} into one LoRA"
    pair = " (A14B pair)" if request.pair else ""
    return f"Merge {count} into {Path(request.base).name}{pair}"


class MergePanel:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.form = merge_form()
        self.presets = PresetRow({mode: job_presets(ctx.workspace.presets, job) for mode, job in MODE_JOBS.items()},
                                 "merge", self.preset_settings, self.preset_fill, len(PRESET_FIELDS) + len(OPTIONS))

    def _path(self, text: str | None) -> Path | None:
        return workspace_path(self.ctx.workspace.root, text).resolve() if text and str(text).strip() else None

    def _pair(self, mode: str, base_high: str | None) -> bool:
        return mode == "dit" and self._path(base_high) is not None

    def refresh_files(self, names):
        choices = lora_choices(self.ctx)
        return gr.update(choices=choices, value=[n for n in names or [] if n in choices]), \
            gr.update(choices=base_choices(self.ctx))

    def on_base(self, base):
        partner = high_noise_partner(self._path(base)) if self._path(base) else None
        return str(partner) if partner else ""

    def on_mode(self, mode):
        """The options of the chosen merge, and the output's hint from that merge's model."""
        dit = mode == "dit"
        hint = PAIR_OUTPUT_HINT if dit else MergeLorasSettings.field_info()["out"]["help"]
        return gr.update(visible=dit), gr.update(visible=not dit), gr.update(info=hint)

    def rows(self, mode, names, typed, table, base_high):
        """(table rows, file message) for the picked files."""
        root = self.ctx.workspace.root
        try:
            paths = lora_files(root, self.ctx.workspace.loras, names, typed)
            return table_rows(root, paths, table, self._pair(mode, base_high)), ""
        except UserError as exc:  # shown beside the picker: typed paths are checked when the box loses focus
            return gr.skip(), error_html(str(exc))

    def suggestion(self, mode, base, base_high, picks) -> str:
        paths = [pick.path for pick in picks]
        if mode == "loras":
            return str(free_path(self.ctx.workspace.loras, merged_lora_stem(paths)))
        variants = PAIR_VARIANTS if self._pair(mode, base_high) else ("",)
        return str(free_path(merged_folder(self.ctx), merged_dit_stem(self._path(base), paths), variants))

    def review(self, mode, table, base, base_high, out, suggested):
        """(overlap report, output path, suggested output): warnings before running; the default output follows
        the picks (output_update)."""
        try:
            pair = self._pair(mode, base_high)
            picks = picks_from_rows(self.ctx.workspace.root, table, pair)
            report = overlap_html(overlap_lines(picks, pair), len(picks))
            suggestion = self.suggestion(mode, base, base_high, picks)
        except UserError as exc:
            return error_html(str(exc)), gr.skip(), gr.skip()
        return report, output_update(out, suggested, suggestion), suggestion

    def request(self, mode, table, base, base_high, out, options: dict):
        """The merge the form asks for; `options` by field name."""
        root = self.ctx.workspace.root
        pair = self._pair(mode, base_high)
        picks = picks_from_rows(root, table, pair)
        target = self._path(out)
        shared = {"allow_overlap": bool(options.get("allow_overlap")), "overwrite": bool(options.get("overwrite"))}
        if mode == "loras":
            return LoraMerge(picks, target, options.get("rank"), options.get("precision", "fp32"), **shared)
        return DitMerge(picks, self._path(base), target, self._path(base_high) if pair else None,
                        options.get("dtype", "same"), options.get("device", "cpu"), **shared)

    def option_problems(self, mode, options: dict) -> dict[str, str]:
        """{field: sentence} for the chosen merge's options, from its model's checks (worded with the labels)."""
        model = MODE_MODELS[mode]
        return self.form.problems(model, {name: value for name, value in options.items()
                                          if name in model.model_fields})

    def check_options(self, mode, *values):
        """Each option's problem beside it, as the user changes them."""
        return tuple(self.form.slot_updates(self.option_problems(mode, self.form.values(values))))

    def out_problem(self, mode, table, base, base_high, out, overwrite, outside) -> str | None:
        """The output field's problem, worded for this form: empty, not a name, an input, a model where a LoRA goes,
        an existing file without Overwrite (each file of a pair), outside the workspace without the confirm box."""
        if not out or not str(out).strip():
            return "The output path is empty; type where the merged file goes (a .safetensors name)."
        try:
            request = self.request(mode, table, base, base_high, out, {"overwrite": overwrite})
        except UserError:  # the picks' own problem is the Run button's to report
            request = None
        outputs = list(request.outputs().values()) if request is not None else []
        inputs = [pick.path for pick in request.picks] if request is not None else []
        if isinstance(request, DitMerge):
            inputs += [path for path in request.bases().values() if path is not None]
        for path in outputs or [self._path(out)]:
            problem = output_message(str(path), workspace=self.ctx.workspace, inputs=inputs,
                                     overwrite=bool(overwrite), outside_confirmed=bool(outside),
                                     lora_output=mode == "loras")
            if problem:
                return problem
        return None

    def check_out(self, mode, table, base, base_high, out, outside, *values):
        overwrite = self.form.values(values)["overwrite"]
        return slot_update(self.out_problem(mode, table, base, base_high, out, overwrite, outside)
                           if out and str(out).strip() else None)

    def run(self, mode, table, base, base_high, out, followed, outside, *values):
        """(followed job, status, log, summary, bar, timer, each option's problem, the output's problem); `values`:
        the option widgets' values in OPTIONS order; `outside`: the user confirmed an output outside the workspace.
        Every wrong field is shown beside it."""
        options = self.form.values(values)
        problems = self.option_problems(mode, options)
        out_wrong = self.out_problem(mode, table, base, base_high, out, options["overwrite"], outside)
        slots = [*self.form.slot_updates(problems), slot_update(out_wrong)]
        if problems or out_wrong:
            return refused(followed, NOT_STARTED, *slots)
        try:
            request = self.request(mode, table, base, base_high, out, options)
            warnings = request.check()
            arguments = request.arguments()
            job = self.ctx.jobs.submit(
                [sys.executable, "-m", "backend", *arguments], kind=arguments[0], title=job_title(request),
                settings={"mode": mode, "files": [str(pick.path) for pick in request.picks],
                          "multipliers": [pick.multiplier for pick in request.picks],
                          "outputs": [str(path) for path in request.outputs().values()]})
        except UserError as exc:
            return refused(followed, f"⚠ {exc}", *slots)  # no stale results beside the new problem
        note = "".join(f"  \n⚠ Allowed overlap: {warning}." for warning in warnings)
        return (follow_job(job), f"Job {job.id}: {job.status}…{note}", "", "", job_bar(job), gr.Timer(active=True),
                *slots)

    def preset_settings(self, mode, files, typed, table, base, base_high, out, *values):
        """The form as its merge's settings (MergeSettings or MergeLorasSettings), for a preset: the picks with their
        strengths (and experts), the base, the output and the options."""
        options = self.form.values(values)
        problems = self.option_problems(mode, options)
        if problems:
            raise UserError(f"Fix the form first: {next(iter(problems.values()))}")
        if not out or not str(out).strip():
            raise UserError("The output path is empty; type where the merged file goes, then save the preset.")
        if mode == "dit" and self._path(base) is None:
            raise UserError("No base DiT is chosen; pick the base model, then save the preset.")
        request = self.request(mode, table, base, base_high, out, options)
        if not request.picks:
            raise UserError("No LoRA file is picked; choose the LoRAs of the merge, then save the preset.")
        return request.settings()

    def preset_fill(self, mode, settings, *values) -> tuple:
        """Updates for (files, typed paths, table, base, high-noise base, output, each option) that show `settings`;
        a LoRA file that is gone is a UserError (nothing changes)."""
        ws = self.ctx.workspace
        request = MODE_REQUESTS[mode].from_settings(settings)
        paths = [pick.path.expanduser().resolve() for pick in request.picks]
        gone = next((path for path in paths if not path.is_file()), None)
        if gone is not None:
            raise UserError(f"The preset's LoRA file {gone} does not exist any more; put it back or save the preset "
                            "again with other files.")
        listed = [path for path in paths if path.parent == ws.loras.resolve() and path.suffix == ".safetensors"]
        typed = "\n".join(display_path(ws.root, path) for path in paths if path not in listed)
        pair = isinstance(request, DitMerge) and request.pair
        previous = [[display_path(ws.root, path), "", "", "", "", pick.expert or NO_EXPERT, pick.multiplier]
                    for path, pick in zip(paths, request.picks)]
        table = table_rows(ws.root, paths, previous, pair)
        bases = (str(request.base), str(request.base_high or "")) if isinstance(request, DitMerge) else \
            (gr.skip(), gr.skip())
        options = [getattr(request, name) if hasattr(request, name) else gr.skip() for name in OPTIONS]
        files = gr.update(choices=lora_choices(self.ctx), value=[path.name for path in listed])
        return (files, typed, table, *bases, str(request.out), *options)

    def tick(self, followed: FollowedJob):
        return tick(self.ctx, followed, JOB_KINDS, self.summary)

    def summary(self, outputs: list[str]) -> str:
        return summary_markdown(outputs, merge_summary, self._where)

    def _where(self, out: Path) -> str | None:
        if out.parent.resolve() == merged_folder(self.ctx).resolve():
            return (f"Send to Generate: `{out.name}` is in `outputs/merged/`, which the Generate tab lists in its "
                    f"model choice (refresh it there).")
        if out.parent.resolve() == self.ctx.workspace.loras.resolve():
            return f"`{out.name}` is in `loras/`: the LORAID and Generate tabs list it."
        return None


def build(ctx: AppContext, tab: gr.Tab) -> None:
    panel = MergePanel(ctx)
    gr.Markdown("### Merge\nFold LoRAs into a base transformer at chosen strengths (the merged model needs no "
                "adapter at generation), or combine LoRAs into one LoRA file. LoRAs on disjoint LORAIDs never touch "
                "each other's weights; overlapping ones are refused unless you allow it. Merges run as jobs and "
                "write their file atomically.")
    mode = gr.Radio(MODES, value="dit", label="Merge", elem_id="merge-mode")
    panel.presets.build("dit")  # one line: each mode's own presets
    with gr.Row():
        files = gr.Dropdown(lora_choices(ctx), value=[], multiselect=True, scale=3, elem_id="merge-files",
                            label=f"LoRA files in {ctx.workspace.loras}")
        refresh = gr.Button("Refresh lists", scale=0, min_width=120, elem_id="merge-refresh")
        typed = gr.Textbox("", lines=2, scale=3, elem_id="merge-file-paths",
                           label="Other LoRA files (one path per line, relative to the workspace or absolute)")
    file_message = gr.HTML("", elem_id="merge-file-message")
    table = gr.Dataframe(headers=TABLE_HEADERS, value=[], type="array", interactive=True,
                         static_columns=[0, 1, 2, 3, 4],
                         datatype=["str", "str", "str", "str", "str", "str", "number"], wrap=True,
                         label="Picked LoRAs (edit multiplier; on an A14B pair also expert: high, low or both)",
                         elem_id="merge-table")
    overlap = gr.HTML("", elem_id="merge-overlap")
    form = panel.form
    form.build(["allow_overlap"])
    bases = base_choices(ctx)
    with gr.Group(visible=True) as dit_options:
        with gr.Row():
            base = gr.Dropdown(bases, value=bases[0][1] if bases else None, allow_custom_value=True, scale=3,
                               **shown(MergeSettings, "dit"), elem_id="merge-base")
            base_high = gr.Dropdown(high_choices(ctx), value="", allow_custom_value=True, scale=3,
                                    **shown(MergeSettings, "dit_high_noise"), elem_id="merge-base-high")
        form.build(["dtype", "device"])
    with gr.Group(visible=False) as lora_options:
        form.build(["rank", "precision"])  # the rank unrounded: 2.5 is refused beside the field
    first_output = panel.suggestion("dit", base.value, "", [])
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            out = gr.Textbox(first_output, **shown(MergeSettings, "out", info=PAIR_OUTPUT_HINT), elem_id="merge-out")
            out_slot = problem_slot("merge-out-error")
        with gr.Column(scale=0, min_width=140):
            form.build(["overwrite"])
        outside = gr.Checkbox(False, label=OUTSIDE_LABEL, scale=0, min_width=180, elem_id="merge-outside")
    with gr.Row():
        run_button = gr.Button("Run merge", variant="primary", scale=0, min_width=160, elem_id="merge-run")
        status = gr.Markdown("", elem_id="merge-status")
    progress = gr.HTML("", elem_id="merge-progress")
    summary = gr.Markdown("", elem_id="merge-summary")
    log = gr.Textbox("", label="Job log", lines=8, max_lines=16, interactive=False, autoscroll=True,
                     elem_id="merge-log")
    suggested = gr.State(first_output)
    followed = gr.State(FollowedJob())
    timer = gr.Timer(POLL_SECONDS, active=True)  # the first tick picks up a merge that runs already

    row_inputs = [mode, files, typed, table, base_high]
    review_inputs, review_outputs = [mode, table, base, base_high, out, suggested], [overlap, out, suggested]
    out_inputs = [mode, table, base, base_high, out, outside, *form.inputs]
    files.change(panel.rows, inputs=row_inputs, outputs=[table, file_message], **_GROUP)
    typed.blur(panel.rows, inputs=row_inputs, outputs=[table, file_message], **_GROUP)
    mode.change(panel.on_mode, inputs=mode, outputs=[dit_options, lora_options, out], **_GROUP).then(
        panel.rows, inputs=row_inputs, outputs=[table, file_message], **_GROUP).then(
        panel.review, inputs=review_inputs, outputs=review_outputs, **_GROUP).then(
        panel.check_options, inputs=[mode, *form.inputs], outputs=form.outputs, **_GROUP)
    base.change(panel.on_base, inputs=base, outputs=base_high, **_GROUP).then(
        panel.review, inputs=review_inputs, outputs=review_outputs, **_GROUP)
    base_high.change(panel.rows, inputs=row_inputs, outputs=[table, file_message], **_GROUP)
    table.change(panel.review, inputs=review_inputs, outputs=review_outputs, **_GROUP).then(
        panel.check_out, inputs=out_inputs, outputs=out_slot, **_GROUP)
    gr.on([form.widgets[name].change for name in OPTIONS], panel.check_options, inputs=[mode, *form.inputs],
          outputs=form.outputs, **_GROUP)
    gr.on([out.blur, form.widgets["overwrite"].change, outside.change], panel.check_out, inputs=out_inputs,
          outputs=out_slot, **_GROUP)
    gr.on([refresh.click, tab.select], panel.refresh_files, inputs=files, outputs=[files, base], **_GROUP)
    preset_fields = [files, typed, table, base, base_high, out]
    mode.change(panel.presets.on_kind, inputs=mode, outputs=[panel.presets.picker, panel.presets.message], **_GROUP)
    panel.presets.wire(mode, [*preset_fields, *form.inputs], [*preset_fields, *form.inputs], **_GROUP).then(
        panel.check_out, inputs=out_inputs, outputs=out_slot, **_GROUP)
    run_button.click(panel.run, inputs=[mode, table, base, base_high, out, followed, outside, *form.inputs],
                     outputs=[followed, status, log, summary, progress, timer, *form.outputs, out_slot], **_GROUP)
    timer.tick(panel.tick, inputs=followed, outputs=[followed, status, log, summary, progress, timer], **_GROUP)
