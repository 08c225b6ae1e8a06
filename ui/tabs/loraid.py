"""LORAID tab: see a model's allocation as a block map, check LoRA files for overlaps, copy the arguments of an ID,
and run the interference report as a job. All computing is in `backend.loraid`; this module builds widgets."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from html import escape
from pathlib import Path

import gradio as gr

from backend.errors import UserError
from backend.loraid.allocation import allocate, allocation_table, default_blocks_per_loraid, describe_units
from backend.loraid.blockmap import allocation_map, files_map
from backend.loraid.capacity import capacity, human_bytes
from backend.loraid.model_facts import ModelFacts, facts_for
from backend.loraid.patterns import network_args_command_line, network_args_entries, network_args_toml
from backend.loraid.registry import LoraidRegistry
from backend.models.registry import MODEL_KINDS
from backend.train.outputs import running_owners
from ui.blockmap_html import block_map_html
from ui.context import AppContext
from ui.widgets import report_error

DEFAULT_RANK = 32
POLL_SECONDS = 1.0
CAPACITY_HEADERS = ["ID", "owns", "modules", "LoRA params", "fp32 file", "bf16/fp16 file", "of slice", "of model",
                    "taken by"]
_GROUP = dict(concurrency_id="loraid-tab", concurrency_limit=1, show_progress="hidden")


def model_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """(label, value): the workspace's demo checkpoints first, then every model type (architecture only)."""
    demos = [(f"Workspace demo T2V ({ctx.workspace.demo_t2v})", str(ctx.workspace.demo_t2v)),
             (f"Workspace demo A14B pair ({ctx.workspace.demo_a14b})", str(ctx.workspace.demo_a14b))]
    return [d for d in demos if Path(d[1]).exists()] + [(f"{kind.label} ({name})", name)
                                                         for name, kind in MODEL_KINDS.items()]


def lora_choices(ctx: AppContext) -> list[str]:
    folder = ctx.workspace.loras
    return sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def resolve_lora_paths(ctx: AppContext, names: list[str] | None, typed: str | None) -> list[Path]:
    """Dropdown names (in the workspace's loras/) plus typed paths (one per line; relative to the workspace)."""
    paths = [ctx.workspace.loras / name for name in names or []]
    for line in (typed or "").splitlines():
        text = line.strip().strip('"')
        if text:
            path = Path(text).expanduser()
            paths.append(path if path.is_absolute() else ctx.workspace.root / path)
    for path in paths:
        if not path.is_file():
            raise UserError(f"The LoRA file {path} does not exist; pick a file from the list or check the path.")
        if path.suffix != ".safetensors":
            raise UserError(f"{path.name} is not a .safetensors file; LoRA files are read from .safetensors only.")
    return list(dict.fromkeys(p.resolve() for p in paths))


@dataclass(frozen=True)
class Choice:
    """The allocation settings on the page, checked against the model."""
    facts: ModelFacts
    blocks_per_loraid: int
    expert: str | None
    module_group_split: bool

    @classmethod
    def read(cls, model: str, k: float | None, expert: str | None, split: bool) -> "Choice":
        if not model:
            raise UserError("Pick a model first (a demo model, a model type, or a checkpoint path).")
        facts = facts_for(model)
        blocks = default_blocks_per_loraid(facts.num_blocks) if k in (None, "") else int(k)
        return cls(facts, blocks, (expert or "both") if facts.experts else None, bool(split))

    def table(self):
        return allocation_table(self.facts.num_blocks, self.blocks_per_loraid, self.expert, self.module_group_split,
                                self.facts.name)


def slice_owners(ctx: AppContext, allocation) -> list[str]:
    """Who holds a slice: runs training it now (their reservation), then the registered LoRA files."""
    registry = LoraidRegistry.for_workspace(ctx.workspace)
    return [*running_owners(allocation, [ctx.workspace.loras]), *(e.name for e in registry.owners(allocation))]


def id_choices(ctx: AppContext, table) -> list[tuple[str, int]]:
    """The ID picker: each ID with its owners, so a slice in use (also by a running run) reads as taken."""
    choices = []
    for allocation in table:
        owners = slice_owners(ctx, allocation)
        choices.append((f"{allocation.loraid} (taken by {', '.join(owners)})" if owners else str(allocation.loraid),
                        allocation.loraid))
    return choices


def capacity_rows(ctx: AppContext, choice: Choice, rank: int) -> list[list[str]]:
    rows = []
    for allocation in choice.table():
        cap = capacity(choice.facts.dims, allocation, rank)
        taken = ", ".join(slice_owners(ctx, allocation)) or "free"
        rows.append([str(allocation.loraid), describe_units(allocation), str(cap.modules),
                     f"{cap.lora_parameters:,}", human_bytes(cap.file_bytes["fp32"]),
                     human_bytes(cap.file_bytes["bf16"]), f"{cap.fraction_of_allocated:.2%}",
                     f"{cap.fraction_of_model:.1%}", taken])
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
        except UserError as exc:
            report_error(exc)
            return gr.skip(), gr.skip()
        return default_blocks_per_loraid(facts.num_blocks), gr.update(visible=bool(facts.experts))

    def allocation(self, model, k, expert, split, rank, loraid):
        """(grid, capacity rows, message, ID dropdown, network_args, CLI arguments)."""
        try:
            choice = Choice.read(model, k, expert, split)
            rank = int(rank or DEFAULT_RANK)
            if rank < 1:
                raise UserError(f"The rank must be at least 1, got {rank}.")
            table = choice.table()
            block_map = allocation_map(table, choice.facts.dims.targets)
            ids = [a.loraid for a in table]
            chosen = int(loraid) if loraid and int(loraid) in ids else ids[0]
            network_args, cli = id_arguments(choice, chosen)
        except UserError as exc:
            message = report_error(exc)
            return "", [], message, gr.skip(), "", ""
        unit = "module groups" if choice.module_group_split else "blocks"
        per = " per expert" if choice.facts.experts else ""
        summary = (f"**{choice.facts.label}**: {choice.facts.num_blocks} blocks{per}, {choice.blocks_per_loraid} "
                   f"{unit} per LORAID → IDs 1–{len(ids)}.")
        message = "  \n".join([summary, *[f"⚠ {note}" for note in block_map.notes]])
        return (block_map_html(block_map), capacity_rows(self.ctx, choice, rank), message,
                gr.update(choices=id_choices(self.ctx, table), value=chosen), network_args, cli)

    def files(self, model, names, typed):
        """(file grid, conflicts)."""
        try:
            paths = resolve_lora_paths(self.ctx, names, typed)
            if not paths:
                return "", conflicts_html([], [], 0)
            facts = facts_for(model)
            block_map = files_map(paths, facts.num_blocks, facts.experts, facts.dims.targets)
        except UserError as exc:
            message = report_error(exc)
            return "", f'<p style="color: #c0392b;">{escape(message)}</p>'
        return block_map_html(block_map), conflicts_html(block_map.conflict_lines(), list(block_map.notes),
                                                         len(paths))

    def refresh_files(self, names):
        choices = lora_choices(self.ctx)
        return gr.update(choices=choices, value=[n for n in names or [] if n in choices])

    def run_report(self, model, names, typed):
        """(job id, status, report text, timer)."""
        try:
            paths = resolve_lora_paths(self.ctx, names, typed)
            if len(paths) < 2:
                raise UserError("The interference report compares LoRAs: pick two or more files first.")
            facts_for(model)  # a bad model is reported here, not minutes later in the job log
            argv = [sys.executable, "-m", "backend", "blockmap", "--report", *map(str, paths), "--model", str(model)]
            job = self.ctx.jobs.submit(argv, kind="blockmap-report", title="Interference report",
                                       settings={"files": [str(p) for p in paths], "model": str(model)})
        except UserError as exc:
            return None, report_error(exc), gr.skip(), gr.Timer(active=False)
        return job.id, f"Interference report job {job.id}: {job.status}…", "", gr.Timer(active=True)

    def poll_report(self, job_id):
        """(status, report text, timer) for the report job; the timer stops once it has finished."""
        if not job_id:
            return gr.skip(), gr.skip(), gr.Timer(active=False)
        try:
            self.ctx.jobs.refresh()  # starts it if it was queued
            job = self.ctx.jobs.get(job_id)
        except UserError as exc:  # deleted in the Jobs tab meanwhile
            return str(exc), gr.skip(), gr.Timer(active=False)
        if not job.is_finished:
            return f"Interference report job {job.id}: {job.status}…", gr.skip(), gr.skip()
        log, _ = self.ctx.jobs.read_log(job.id)
        if job.status == "succeeded":
            return f"Interference report job {job.id} finished.", log, gr.Timer(active=False)
        return (f"Interference report job {job.id} ended ({job.status}); its log says why.", log,
                gr.Timer(active=False))


def build(ctx: AppContext, tab: gr.Tab) -> None:
    panel = LoraidPanel(ctx)
    gr.Markdown("### LORAID block map\nEach LORAID owns its own slice of the transformer blocks (`LORAID n` owns "
                "blocks `[(n-1)·k, n·k)` for `blocks_per_loraid = k`), so LoRAs trained on different IDs never "
                "change the same weights. Pick a model to see its slices; pick LoRA files to check them for "
                "overlaps.")
    choices = model_choices(ctx)
    first = choices[0][1]
    first_facts = facts_for(first)
    with gr.Row():
        model = gr.Dropdown(choices, value=first, allow_custom_value=True, scale=3, elem_id="loraid-model",
                            label="Model (a demo model, a model type, or type a checkpoint path)")
        blocks = gr.Number(default_blocks_per_loraid(first_facts.num_blocks), precision=0, minimum=1, scale=1,
                           label="blocks_per_loraid", elem_id="loraid-k")
        expert = gr.Radio(["high", "low", "both"], value="both", label="Expert (A14B)", scale=1,
                          visible=bool(first_facts.experts), elem_id="loraid-expert")
        split = gr.Checkbox(False, label="Split blocks into module groups (3× more IDs)", scale=1,
                            elem_id="loraid-split")
        rank = gr.Number(DEFAULT_RANK, precision=0, minimum=1, label="Rank (capacity)", scale=1,
                         elem_id="loraid-rank")
    shown = panel.allocation(first, blocks.value, expert.value, False, DEFAULT_RANK, None)
    message = gr.Markdown(shown[2], elem_id="loraid-message")
    grid = gr.HTML(shown[0], elem_id="loraid-grid", label="Allocation")
    capacity_table = gr.Dataframe(shown[1], headers=CAPACITY_HEADERS, interactive=False, wrap=True,
                                  label="Capacity per LORAID", elem_id="loraid-capacity")
    with gr.Row():
        loraid = gr.Dropdown(shown[3]["choices"], value=shown[3]["value"], label="LORAID", scale=0, min_width=220,
                             elem_id="loraid-id")
        network_args = gr.Code(shown[4], language=None, label="network_args entries and TOML line (this app or "
                                                          "musubi-tuner)", elem_id="loraid-network-args", scale=3)
        cli = gr.Textbox(shown[5], label="Training arguments (this app; the second line also works for musubi-tuner)",
                         lines=2, interactive=False, buttons=["copy"], elem_id="loraid-cli-args", scale=3)

    gr.Markdown("#### LoRA files: who changes which block")
    with gr.Row():
        files = gr.Dropdown(lora_choices(ctx), value=[], multiselect=True, scale=3, elem_id="loraid-files",
                            label=f"LoRA files in {ctx.workspace.loras}")
        refresh = gr.Button("Refresh list", scale=0, min_width=120, elem_id="loraid-files-refresh")
        typed = gr.Textbox("", lines=2, scale=3, elem_id="loraid-file-paths",
                           label="Other LoRA files (one path per line)")
    conflicts = gr.HTML("", elem_id="loraid-conflicts")
    file_grid = gr.HTML("", elem_id="loraid-file-grid")
    with gr.Row():
        report_button = gr.Button("Run interference report", variant="primary", scale=0,
                                  min_width=220, elem_id="loraid-report-run")
        report_status = gr.Markdown("", elem_id="loraid-report-status")
    report = gr.Textbox("", label="Interference report", lines=14, max_lines=30, interactive=False,
                        buttons=["copy"], elem_id="loraid-report")
    report_job = gr.State(None)
    timer = gr.Timer(POLL_SECONDS, active=False)

    settings = [model, blocks, expert, split, rank, loraid]
    allocation_outputs = [grid, capacity_table, message, loraid, network_args, cli]
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
    report_button.click(panel.run_report, inputs=file_inputs, outputs=[report_job, report_status, report, timer],
                        **_GROUP)
    timer.tick(panel.poll_report, inputs=report_job, outputs=[report_status, report, timer], **_GROUP)
