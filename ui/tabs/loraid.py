"""LORAID tab: see a model's allocation as a block map, check LoRA files for overlaps, copy the arguments of an ID,
and run the interference report as a job. All computing is in `backend.loraid`; this module builds widgets."""
from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path

import gradio as gr

from backend.errors import UserError
from backend.jobs import Job
from backend.jobs.progress import read_progress
from backend.loraid.allocation import allocate, allocation_table, default_blocks_per_loraid, describe_units
from backend.loraid.allocation_fields import LABELS, AllocationValues, CheckedAllocation
from backend.loraid.blockmap import allocation_map, files_map
from backend.loraid.capacity import capacity, human_bytes
from backend.loraid.lora_paths import lora_names, resolve_lora_paths
from backend.loraid.model_facts import ModelFacts, facts_for
from backend.loraid.owners import id_label, taken_ids
from backend.loraid.patterns import network_args_command_line, network_args_entries, network_args_toml
from backend.loraid.report_settings import REPORT_FILE, InterferenceSettings
from backend.models.registry import MODEL_KINDS
from backend.system.devices import default_device, device_choices
from ui.blockmap_html import block_map_html
from ui.context import AppContext
from ui.merge_ema_common import problem_slot
from ui.settings_form import SettingsForm, slot_update
from ui.widgets import progress_bar, report_error

DEFAULT_RANK = 32
POLL_SECONDS = 1.0
CAPACITY_HEADERS = ["ID", "owns", "modules", "LoRA params", "fp32 file", "bf16/fp16 file", "of slice", "of model",
                    "taken by"]
CAPACITY_WIDTHS = ["5%", "9%", "8%", "9%", "9%", "10%", "7%", "7%", "36%"]  # fits the page; owners wrap
_GROUP = dict(concurrency_id="loraid-tab", concurrency_limit=1, show_progress="hidden")
REPORT_KIND = "blockmap-report"
REPORT_FIELDS = ["multiplier", "probes", "device"]  # files and model have the tab's own widgets
ALLOCATION_FIELDS = ["model", "blocks_per_loraid", "rank", "loraid"]  # each with its problem slot, in this order


def report_form(start: dict | None = None, choices: dict | None = None) -> SettingsForm:
    return SettingsForm(InterferenceSettings, REPORT_FIELDS, "loraid-report", start, choices)


def report_bar(job: Job) -> str:
    """The report job's count of measurements (done of all, ETA) as a bar, from the progress events it writes."""
    return progress_bar(read_progress(job.events_path), job.status, "report-progress")


def report_text(job: Job) -> str:
    """The report the job wrote into its folder (empty when it wrote none)."""
    path = job.dir / REPORT_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def model_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """(label, value): the workspace's demo checkpoints first, then every model type (architecture only)."""
    demos = [(f"Workspace demo T2V ({ctx.workspace.demo_t2v})", str(ctx.workspace.demo_t2v)),
             (f"Workspace demo A14B pair ({ctx.workspace.demo_a14b})", str(ctx.workspace.demo_a14b))]
    return [d for d in demos if Path(d[1]).exists()] + [(f"{kind.label} ({name})", name)
                                                         for name, kind in MODEL_KINDS.items()]


@dataclass(frozen=True)
class Choice:
    """The allocation settings on the page, once the model and blocks per LORAID are right."""
    facts: ModelFacts
    blocks_per_loraid: int
    expert: str | None
    module_group_split: bool

    @classmethod
    def of(cls, given: CheckedAllocation, expert: str | None, split: bool) -> "Choice":
        facts = given.facts
        return cls(facts, given.blocks_per_loraid, (expert or "both") if facts.experts else None, bool(split))

    def table(self):
        return allocation_table(self.facts.num_blocks, self.blocks_per_loraid, self.expert, self.module_group_split,
                                self.facts.name)


def id_choices(ctx: AppContext, table, stale: int | None = None) -> list[tuple[str, int]]:
    """The ID picker: each ID with its owner (or their count: the capacity table lists them), so a slice in use (also
    by a running run) reads as taken; a picked ID the layout no longer has stays listed as owning no block."""
    taken = taken_ids(ctx.workspace, table)
    choices = [(id_label(a.loraid, taken.get(a.loraid, [])), a.loraid) for a in table]
    return choices + ([(f"{stale} (owns no block)", stale)] if stale is not None else [])


def capacity_rows(ctx: AppContext, choice: Choice, rank: int) -> list[list[str]]:
    table = choice.table()
    taken = taken_ids(ctx.workspace, table)
    rows = []
    for allocation in table:
        cap = capacity(choice.facts.dims, allocation, rank)
        rows.append([str(allocation.loraid), describe_units(allocation), str(cap.modules),
                     f"{cap.lora_parameters:,}", human_bytes(cap.file_bytes["fp32"]),
                     human_bytes(cap.file_bytes["bf16"]), f"{cap.fraction_of_allocated:.2%}",
                     f"{cap.fraction_of_model:.1%}", ", ".join(taken.get(allocation.loraid, [])) or "free"])
    return rows


def id_arguments(choice: Choice, loraid: int) -> tuple[str, str]:
    """(network_args entries + TOML line, CLI arguments) for one ID."""
    allocation = allocate(loraid, choice.facts.num_blocks, choice.blocks_per_loraid, choice.expert,
                          choice.module_group_split, choice.facts.name)
    network_args = "\n".join(network_args_entries(allocation)) + "\n\n" + network_args_toml(allocation)
    cli = f"--loraid {loraid} --blocks_per_loraid {choice.blocks_per_loraid}"
    cli += " --module_group_split" if choice.module_group_split else ""
    return network_args, cli + "\n" + network_args_command_line(allocation)


def conflicts_html(lines: list[str], notes: list[str], count: int) -> str:
    notes_html = "".join(f"<p>Note: {escape(note)}</p>" for note in notes)
    if count < 2:
        return f"<p>Pick two or more LoRA files to check them for overlaps.</p>{notes_html}"
    if not lines:
        return (f'<p class="loraid-ok"><b>No conflict:</b> the {count} files change disjoint blocks, so merging '
                f"one never touches the weights of another.</p>{notes_html}")
    items = "".join(f'<li style="color: #c0392b;">{escape(line)}</li>' for line in lines)
    return f"<ul>{items}</ul>{notes_html}"


class LoraidPanel:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def on_model(self, model: str):
        """A new model: its default blocks_per_loraid and, for two-expert models, the expert choice."""
        try:
            facts = facts_for(model)
        except UserError:  # said once, beside the model, by the allocation handler that follows
            return gr.skip(), gr.skip()
        return default_blocks_per_loraid(facts.num_blocks), gr.update(visible=bool(facts.experts))

    def allocation(self, model, k, expert, split, rank, loraid):
        """(grid, capacity rows, message, ID picker, network_args, CLI arguments, *problem slots in ALLOCATION_FIELDS
        order): a wrong control says why beside it, and what depends on it is cleared rather than left stale."""
        given = AllocationValues(model, k, split, rank, loraid).check()
        slots = [slot_update(given.problems.get(name)) for name in ALLOCATION_FIELDS]
        if given.facts is None or given.blocks_per_loraid is None:
            return "", [], "", gr.skip(), "", "", *slots
        choice = Choice.of(given, expert, split)
        table = choice.table()
        block_map = allocation_map(table, choice.facts.dims.targets)
        ids = [a.loraid for a in table]
        wrong_id = "loraid" in given.problems
        chosen = None if wrong_id else (given.loraid or ids[0])
        network_args, cli = id_arguments(choice, chosen) if chosen is not None else ("", "")
        rows = capacity_rows(self.ctx, choice, given.rank) if given.rank is not None else []
        unit = "module groups" if choice.module_group_split else "blocks"
        per = " per expert" if choice.facts.experts else ""
        summary = (f"**{choice.facts.label}**: {choice.facts.num_blocks} blocks{per}, {choice.blocks_per_loraid} "
                   f"{unit} per LORAID → IDs 1–{len(ids)}.")
        message = "  \n".join([summary, *[f"⚠ {note}" for note in block_map.notes]])
        picker = gr.update(choices=id_choices(self.ctx, table, loraid if wrong_id else None),
                           value=loraid if wrong_id else chosen)
        return (block_map_html(block_map), rows, message, picker, network_args, cli, *slots)

    def files(self, model, names, typed):
        """(file grid, conflicts)."""
        try:
            facts = facts_for(model)
        except UserError:  # said once, beside the model
            return "", ""
        try:
            paths = resolve_lora_paths(self.ctx.workspace, names, typed)
            if not paths:
                return "", conflicts_html([], [], 0)
            block_map = files_map(paths, facts.num_blocks, facts.experts, facts.dims.targets)
        except UserError as exc:
            message = report_error(exc)
            return "", f'<p style="color: #c0392b;">{escape(message)}</p>'
        return block_map_html(block_map), conflicts_html(block_map.conflict_lines(), list(block_map.notes),
                                                         len(paths))

    def refresh_files(self, names):
        choices = lora_names(self.ctx.workspace)
        return gr.update(choices=choices, value=[n for n in names or [] if n in choices])

    def run_report(self, model, names, typed, *values):
        """(job id, status, bar, report text, timer, *problem slots): start the report job, or say what is wrong
        (a wrong option beside it) and clear the previous report."""
        form = report_form()
        given = form.values(values)
        try:
            paths = resolve_lora_paths(self.ctx.workspace, names, typed)
            if len(paths) < 2:
                raise UserError("The interference report compares LoRAs: pick two or more files first.")
            facts_for(model)  # a bad model is reported here, not minutes later in the job log
        except UserError as exc:
            return None, f"⚠ {report_error(exc)}", "", "", gr.Timer(active=False), *form.slot_updates({})
        settings_values = {"report": [str(p) for p in paths], "model": str(model), **given}
        problems = form.problems(InterferenceSettings, settings_values)
        if problems:
            return (None, "Not started: fix the report option marked ⚠ above.", "", "", gr.Timer(active=False),
                    *form.slot_updates(problems))
        settings = InterferenceSettings(**settings_values)
        try:
            job = self.ctx.jobs.submit(settings.job_argv(), kind=REPORT_KIND, title=settings.job_title(),
                                       settings=settings.model_dump())
        except UserError as exc:
            return None, f"⚠ {report_error(exc)}", "", "", gr.Timer(active=False), *form.slot_updates({})
        return (job.id, self._status(job), report_bar(job), "", gr.Timer(active=True), *form.slot_updates({}))

    def check_report(self, names, typed, *values):
        """Each report option's problem beside it, as the report would see it with the files picked so far (the
        page's check while editing; the files themselves are checked at Run)."""
        form = report_form()
        try:
            paths = [str(path) for path in resolve_lora_paths(self.ctx.workspace, names, typed)]
        except UserError:
            paths = []
        given = {"report": paths if len(paths) >= 2 else ["first", "second"], **form.values(values)}
        return tuple(form.slot_updates(form.problems(InterferenceSettings, given)))

    def _status(self, job: Job) -> str:
        if not job.is_finished:
            count = read_progress(job.events_path).line()
            return f"Interference report job {job.id}: {job.status}…" + (f" {count} measurements" if count else "")
        if job.status == "succeeded":
            return f"Interference report job {job.id} finished."
        return f"Interference report job {job.id} ended ({job.status}); its log below says why."

    def poll_report(self, job_id):
        """(job id, status, bar, report text, timer) for the report job; a page just opened follows one still
        running. The timer stops once it has finished."""
        if not job_id:
            running = next((job for job in self.ctx.jobs.list() if job.kind == REPORT_KIND and not job.is_finished),
                           None)
            if running is None:
                return None, gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)
            job_id = running.id
        try:
            self.ctx.jobs.refresh()  # starts it if it was queued
            job = self.ctx.jobs.get(job_id)
        except UserError as exc:  # deleted in the Jobs tab meanwhile
            return None, str(exc), "", gr.skip(), gr.Timer(active=False)
        if not job.is_finished:
            return job.id, self._status(job), report_bar(job), gr.skip(), gr.skip()
        text = report_text(job) if job.status == "succeeded" else self.ctx.jobs.read_log(job.id)[0]
        return job.id, self._status(job), report_bar(job), text, gr.Timer(active=False)


def build(ctx: AppContext, tab: gr.Tab) -> None:
    panel = LoraidPanel(ctx)
    gr.Markdown("### LORAID block map\nEach LORAID owns its own slice of the transformer blocks (`LORAID n` owns "
                "blocks `[(n-1)·k, n·k)` for `blocks_per_loraid = k`), so LoRAs trained on different IDs never "
                "change the same weights. Pick a model to see its slices; pick LoRA files to check them for "
                "overlaps.")
    choices = model_choices(ctx)
    first = choices[0][1]
    first_facts = facts_for(first)
    slot = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            model = gr.Dropdown(choices, value=first, allow_custom_value=True, elem_id="loraid-model",
                                label=f"{LABELS['model']} (a demo model, a model type, or type a checkpoint path)")
            slot["model"] = problem_slot("loraid-model-error")
        with gr.Column(scale=1, min_width=160):  # no rounding or bounds in the page: the check says what is wrong
            blocks = gr.Number(default_blocks_per_loraid(first_facts.num_blocks), label=LABELS["blocks_per_loraid"],
                               elem_id="loraid-k")
            slot["blocks_per_loraid"] = problem_slot("loraid-k-error")
        expert = gr.Radio(["high", "low", "both"], value="both", label="Expert (A14B)", scale=1,
                          visible=bool(first_facts.experts), elem_id="loraid-expert")
        split = gr.Checkbox(False, label="Split blocks into module groups (3× more IDs)", scale=1,
                            elem_id="loraid-split")
        with gr.Column(scale=1, min_width=160):
            rank = gr.Number(DEFAULT_RANK, label=LABELS["rank"], elem_id="loraid-rank")
            slot["rank"] = problem_slot("loraid-rank-error")
    shown = panel.allocation(first, blocks.value, expert.value, False, DEFAULT_RANK, None)
    message = gr.Markdown(shown[2], elem_id="loraid-message")
    grid = gr.HTML(shown[0], elem_id="loraid-grid", label="Allocation")
    capacity_table = gr.Dataframe(shown[1], headers=CAPACITY_HEADERS, interactive=False, wrap=True,
                                  column_widths=CAPACITY_WIDTHS,
                                  label="Capacity per LORAID", elem_id="loraid-capacity")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=220):
            loraid = gr.Dropdown(shown[3]["choices"], value=shown[3]["value"], label=LABELS["loraid"],
                                 elem_id="loraid-id")  # "3 (taken by NAME)"; several owners are counted
            slot["loraid"] = problem_slot("loraid-id-error")
        network_args = gr.Code(shown[4], language=None, label="network_args entries and TOML line (this app or "
                                                          "musubi-tuner)", elem_id="loraid-network-args", scale=3,
                               wrap_lines=True)
        cli = gr.Textbox(shown[5], label="Training arguments (this app; the second line also works for musubi-tuner)",
                         lines=2, interactive=False, buttons=["copy"], elem_id="loraid-cli-args", scale=3)

    gr.Markdown("#### LoRA files: who changes which block")
    with gr.Row():
        files = gr.Dropdown(lora_names(ctx.workspace), value=[], multiselect=True, scale=3, elem_id="loraid-files",
                            label=f"LoRA files in {ctx.workspace.loras}")
        refresh = gr.Button("Refresh list", scale=0, min_width=120, elem_id="loraid-files-refresh")
        typed = gr.Textbox("", lines=2, scale=3, elem_id="loraid-file-paths",
                           label="Other LoRA files (one path per line)")
    conflicts = gr.HTML("", elem_id="loraid-conflicts")
    file_grid = gr.HTML("", elem_id="loraid-file-grid")
    options = report_form(start={"device": default_device()}, choices={"device": device_choices()})
    options.build(per_row=3)
    with gr.Row():
        report_button = gr.Button("Run interference report", variant="primary", scale=0,
                                  min_width=220, elem_id="loraid-report-run")
        report_status = gr.Markdown("", elem_id="loraid-report-status")
    report_progress = gr.HTML("", elem_id="loraid-report-progress")
    report = gr.Textbox("", label="Interference report", lines=14, max_lines=30, interactive=False,
                        buttons=["copy"], elem_id="loraid-report")
    report_job = gr.State(None)
    timer = gr.Timer(POLL_SECONDS)  # its first tick follows a report job still running (a reloaded page)

    settings = [model, blocks, expert, split, rank, loraid]
    allocation_outputs = [grid, capacity_table, message, loraid, network_args, cli,
                          *(slot[name] for name in ALLOCATION_FIELDS)]
    file_inputs, file_outputs = [model, files, typed], [file_grid, conflicts]
    model.change(panel.on_model, inputs=model, outputs=[blocks, expert], **_GROUP).then(
        panel.allocation, inputs=settings, outputs=allocation_outputs, **_GROUP).then(
        panel.files, inputs=file_inputs, outputs=file_outputs, **_GROUP)
    for control in (blocks, expert, split, rank, loraid):
        control.change(panel.allocation, inputs=settings, outputs=allocation_outputs, **_GROUP)
    for control in (files, typed):
        control.change(panel.files, inputs=file_inputs, outputs=file_outputs, **_GROUP)
    gr.on([refresh.click, tab.select], panel.refresh_files, inputs=files, outputs=files, **_GROUP).then(
        panel.allocation, inputs=settings, outputs=allocation_outputs, **_GROUP)  # "taken by" follows new files
    report_outputs = [report_job, report_status, report_progress, report, timer]
    report_button.click(panel.run_report, inputs=[*file_inputs, *options.inputs],
                        outputs=[*report_outputs, *options.outputs], **_GROUP)
    for name in REPORT_FIELDS:
        options.widgets[name].change(panel.check_report, inputs=[files, typed, *options.inputs],
                                     outputs=options.outputs, **_GROUP)
    timer.tick(panel.poll_report, inputs=report_job, outputs=report_outputs, **_GROUP)
