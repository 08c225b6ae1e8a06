"""EMA tab: post-hoc EMA over the checkpoints a run saved, as a job; the checkpoints and the weight each gets are
shown before running. The options' labels, hints, starting values and choices come from `EmaSettings`; discovery,
weights, checks and the summary from `backend.compose` (ema_plan, summaries); this module builds widgets."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from backend.compose.ema_plan import (Discovered, check_request, discover, list_runs, rule_problems, rule_weights,
                                     run_name)
from backend.compose.merge_plan import display_path, typed_paths, workspace_path
from backend.compose.output_names import ema_stem, free_path
from backend.compose.settings import RULE_VALUES, EmaSettings
from backend.compose.summaries import ema_summary
from backend.errors import UserError
from backend.output_guard import output_message
from ui.context import AppContext
from ui.merge_ema_common import (NOT_STARTED, OUTSIDE_LABEL, FollowedJob, error_html, follow_job, job_bar,
                                 option, problem_slot, refused, shown, start, summary_markdown, tick)
from ui.settings_form import slot_update

CHECKPOINT_HEADERS = ["#", "checkpoint", "step", "weight"]
RULE_NAMES = {"power": "Power EMA (σ_rel, EDM2)", "beta": "Beta EMA (musubi's β / β2)", "uniform": "Plain mean"}
RULE_FIELDS = ("sigma_rel", "beta", "beta2")  # each has its problem slot; the chosen rule's are checked
FIELDS = EmaSettings.field_info()
JOB_KINDS = ("ema",)
POLL_SECONDS = 1.0
_GROUP = dict(concurrency_id="ema-tab", concurrency_limit=1, show_progress="hidden")


@dataclass
class Inputs:
    """What the page found for the chosen run / typed paths (kept between events; holds no weights)."""
    paths: list[Path] = field(default_factory=list)
    found: Discovered | None = None


def run_choices(ctx: AppContext) -> list[tuple[str, str]]:
    root = ctx.workspace.root
    return [(run.label(root), run.key(root)) for run in list_runs(ctx.workspace.loras)]


def notes_markdown(found: Discovered) -> str:
    order = "by the training step in their metadata" if found.steps_known else "by modification time (evenly spaced)"
    lines = [f"{len(found.files)} {found.algo} checkpoints, ordered {order}."]
    lines += [f"⚠ {note.removeprefix('warning: ')}" if note.startswith("warning:") else f"Note: {note}"
              for note in found.notes]
    return "  \n".join(lines)


class EmaPanel:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def on_rule(self, rule):
        """Show the chosen rule's values only (their columns), and no problem of the values no longer used."""
        shown_now = [gr.update(visible=name in RULE_VALUES.get(rule, ())) for name in RULE_FIELDS]
        return *shown_now, *(gr.update(visible=False) for _ in RULE_FIELDS)

    def refresh(self, run):
        choices = run_choices(self.ctx)
        return gr.update(choices=choices, value=run if run in [value for _, value in choices] else None)

    def _inputs(self, run: str | None, typed: str | None) -> list[Path]:
        root = self.ctx.workspace.root
        paths: list[Path] = []
        if run:
            match = next((r for r in list_runs(self.ctx.workspace.loras) if r.key(root) == run), None)
            if match is None:
                raise UserError(f"The run {run} is no longer in {self.ctx.workspace.loras}; click Refresh and pick "
                                f"it again.")
            paths += match.files
        return list(dict.fromkeys(paths + typed_paths(root, typed)))

    def find(self, run, typed, out, suggested):
        """(inputs, notes, output, suggested output) for the chosen run and typed paths."""
        try:
            paths = self._inputs(run, typed)
            if not paths:
                return Inputs(), "Pick a run or type a run folder or checkpoint files.", gr.skip(), gr.skip()
            found = discover(paths)
        except UserError as exc:
            return Inputs(), error_html(str(exc)), gr.skip(), gr.skip()
        suggestion = str(free_path(self.ctx.workspace.loras, ema_stem(run_name(found.files if run else paths))))
        keep_typed = out and out.strip() and out.strip() != suggested
        return Inputs(paths, found), notes_markdown(found), gr.skip() if keep_typed else suggestion, suggestion

    def weights(self, inputs: Inputs, rule, sigma_rel, beta, beta2):
        """(checkpoint rows with weights, rule message, σ_rel / β / β2 problems): what the job will compute, before
        it runs; a wrong value of the chosen rule is shown beside its field."""
        problems = rule_problems(rule, sigma_rel, beta, beta2)
        slots = [slot_update(problems.get(name)) for name in RULE_FIELDS]
        found = inputs.found
        if found is None:
            return [], "", *slots
        root = self.ctx.workspace.root
        if problems:
            rows = [[i, display_path(root, p), s, ""] for i, (p, s) in enumerate(zip(found.files, found.steps), 1)]
            return rows, "", *slots
        weights, gamma = rule_weights(self.settings(inputs, rule, sigma_rel, beta, beta2), found.steps)
        rows = [[i, display_path(root, path), step, round(weight, 6)]
                for i, (path, step, weight) in enumerate(zip(found.files, found.steps, weights), 1)]
        message = f"γ = {gamma:.4f}; the weights sum to {sum(weights):.6f}." if gamma is not None else \
            f"The weights sum to {sum(weights):.6f}."
        return rows, message, *slots

    def settings(self, inputs: Inputs, rule, sigma_rel, beta, beta2, space=FIELDS["space"]["default"],
                 precision=FIELDS["precision"]["default"], out="", overwrite=False) -> EmaSettings:
        """The job's settings from the form, by field name (only the chosen rule's values are kept)."""
        values = {"rule": rule, "sigma_rel": sigma_rel, "beta": beta, "beta2": beta2}
        used = {name: value for name, value in values.items() if name == "rule" or name in RULE_VALUES[rule]}
        return EmaSettings.from_mapping({"inputs": [str(p) for p in inputs.paths], "out": out, "space": space,
                                         "precision": precision, "overwrite": bool(overwrite),
                                         **{k: v for k, v in used.items() if v is not None}}, "The EMA")

    def out_problem(self, inputs: Inputs, out, overwrite, outside) -> str | None:
        """The output field's problem (empty, not a name, an input, an existing file without Overwrite, outside the
        workspace without the confirm box), worded for this form."""
        if not out or not str(out).strip():
            return "The output path is empty; type where the EMA LoRA goes (a .safetensors name)."
        files = inputs.found.files if inputs.found else inputs.paths
        return output_message(out, workspace=self.ctx.workspace, inputs=files, overwrite=bool(overwrite),
                              outside_confirmed=bool(outside), lora_output=True)

    def check_out(self, inputs: Inputs, out, overwrite, outside):
        return slot_update(self.out_problem(inputs, out, overwrite, outside) if out and str(out).strip() else None)

    def run(self, inputs: Inputs, rule, sigma_rel, beta, beta2, space, precision, out, overwrite, followed,
            outside=False):
        """(followed job, status, log, summary, bar, timer, σ_rel / β / β2 / output problems); `outside`: the user
        confirmed an output outside the workspace. Every wrong field is shown beside it, the rule's values first."""
        problems = rule_problems(rule, sigma_rel, beta, beta2)
        out_problem = self.out_problem(inputs, out, overwrite, outside)
        slots = [*(slot_update(problems.get(name)) for name in RULE_FIELDS), slot_update(out_problem)]
        if problems or out_problem:
            return refused(followed, NOT_STARTED, *slots)
        try:
            target = workspace_path(self.ctx.workspace.root, out).resolve()
            settings = self.settings(inputs, rule, sigma_rel, beta, beta2, space, precision, str(target), overwrite)
            found = check_request(settings)
            job = self.ctx.jobs.submit(
                [sys.executable, "-m", "backend", *settings.arguments()], kind="ema",
                title=f"Post-hoc EMA of {len(found.files)} checkpoints",
                settings={"inputs": settings.inputs, "rule": rule, "space": space, "outputs": [str(target)]})
        except UserError as exc:
            return refused(followed, f"⚠ {exc}", *slots)
        return (follow_job(job), f"Job {job.id}: {job.status}…", "", "", job_bar(job), gr.Timer(active=True),
                *slots)

    def tick(self, followed: FollowedJob):
        return tick(self.ctx, followed, JOB_KINDS, self.summary)

    def summary(self, outputs: list[str]) -> str:
        return summary_markdown(outputs, ema_summary, self._where)

    def _where(self, out: Path) -> str | None:
        if out.parent.resolve() == self.ctx.workspace.loras.resolve():
            return f"`{out.name}` is in `loras/`: the LORAID tab lists it (click Refresh list there)."
        return None


def build(ctx: AppContext, tab: gr.Tab) -> None:
    panel = EmaPanel(ctx)
    gr.Markdown("### EMA\nBuild an exponential-moving-average LoRA after training from the checkpoints a run saved, "
                "choosing the averaging width (`sigma_rel`) without retraining. Checkpoints are ordered by the "
                "training step in their metadata and weighted by the real step spacing; the first one keeps its "
                "weight. Runs as a job and writes a new LoRA file (by default to `loras/`).")
    with gr.Row():
        run = gr.Dropdown(run_choices(ctx), value=None, scale=3, elem_id="ema-run",
                          label=f"Run (checkpoints saved in {ctx.workspace.loras})")
        refresh = gr.Button("Refresh", scale=0, min_width=110, elem_id="ema-refresh")
        typed = gr.Textbox("", lines=2, scale=3, elem_id="ema-paths",
                           label="Or a run folder / checkpoint files (one per line, relative to the workspace)")
    notes = gr.Markdown("Pick a run or type a run folder or checkpoint files.", elem_id="ema-notes")
    with gr.Row(equal_height=False):
        rule = gr.Radio([(RULE_NAMES[choice], choice) for choice in FIELDS["rule"]["choices"]],
                        value=start(EmaSettings, "rule"), **shown(EmaSettings, "rule"), elem_id="ema-rule", scale=2)
        rule_widgets, rule_slots, rule_columns = {}, {}, []
        for name in RULE_FIELDS:  # only the chosen rule's values are shown
            with gr.Column(scale=1, min_width=160, visible=name in RULE_VALUES[rule.value]) as column:
                rule_widgets[name] = option(EmaSettings, name, f"ema-{name.replace('_', '-')}")
                rule_slots[name] = problem_slot(f"ema-{name.replace('_', '-')}-error")
            rule_columns.append(column)
    sigma_rel, beta, beta2 = (rule_widgets[name] for name in RULE_FIELDS)
    table = gr.Dataframe(headers=CHECKPOINT_HEADERS, value=[], interactive=False, wrap=True,
                         label="Checkpoints and the weight each gets", elem_id="ema-checkpoints")
    weight_message = gr.Markdown("", elem_id="ema-weight-message")
    with gr.Row():
        space = option(EmaSettings, "space", "ema-space")
        precision = option(EmaSettings, "precision", "ema-precision")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            out = gr.Textbox("", **shown(EmaSettings, "out"), elem_id="ema-out")
            out_slot = problem_slot("ema-out-error")
        with gr.Column(scale=0, min_width=120):
            overwrite = option(EmaSettings, "overwrite", "ema-overwrite")
        outside = gr.Checkbox(False, label=OUTSIDE_LABEL, scale=0, min_width=180, elem_id="ema-outside")
    with gr.Row():
        run_button = gr.Button("Run EMA", variant="primary", scale=0, min_width=160, elem_id="ema-run-button")
        status = gr.Markdown("", elem_id="ema-status")
    progress = gr.HTML("", elem_id="ema-progress")
    summary = gr.Markdown("", elem_id="ema-summary")
    log = gr.Textbox("", label="Job log", lines=8, max_lines=16, interactive=False, autoscroll=True,
                     elem_id="ema-log")
    inputs = gr.State(Inputs())
    suggested = gr.State("")
    followed = gr.State(FollowedJob())
    timer = gr.Timer(POLL_SECONDS, active=True)  # the first tick picks up an EMA job that runs already

    rule_inputs = [inputs, rule, sigma_rel, beta, beta2]
    slots = [rule_slots[name] for name in RULE_FIELDS]
    weight_outputs = [table, weight_message, *slots]
    out_inputs = [inputs, out, overwrite, outside]
    find_args = dict(fn=panel.find, inputs=[run, typed, out, suggested], outputs=[inputs, notes, out, suggested],
                     **_GROUP)
    run.change(**find_args).then(panel.weights, inputs=rule_inputs, outputs=weight_outputs, **_GROUP).then(
        panel.check_out, inputs=out_inputs, outputs=out_slot, **_GROUP)
    typed.blur(**find_args).then(panel.weights, inputs=rule_inputs, outputs=weight_outputs, **_GROUP).then(
        panel.check_out, inputs=out_inputs, outputs=out_slot, **_GROUP)
    rule.change(panel.on_rule, inputs=rule, outputs=[*rule_columns, *slots], **_GROUP)
    for control in (rule, sigma_rel, beta, beta2):
        control.change(panel.weights, inputs=rule_inputs, outputs=weight_outputs, **_GROUP)
    gr.on([out.blur, overwrite.change, outside.change], panel.check_out, inputs=out_inputs, outputs=out_slot,
          **_GROUP)
    gr.on([refresh.click, tab.select], panel.refresh, inputs=run, outputs=run, **_GROUP)
    run_button.click(panel.run, inputs=[inputs, rule, sigma_rel, beta, beta2, space, precision, out, overwrite,
                                        followed, outside],
                     outputs=[followed, status, log, summary, progress, timer, *slots, out_slot], **_GROUP)
    timer.tick(panel.tick, inputs=followed, outputs=[followed, status, log, summary, progress, timer], **_GROUP)
