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
from backend.config.field_checks import checked, label_of
from backend.config.presets import job_presets
from backend.errors import UserError
from backend.output_guard import output_message
from ui.context import AppContext
from ui.merge_ema_common import (NOT_STARTED, OUTSIDE_LABEL, FollowedJob, error_html, follow_job, job_bar,
                                 output_update, problem_slot, refused, shown, summary_markdown, tick)
from ui.preset_row import PresetRow
from ui.settings_form import SettingsForm, slot_update

CHECKPOINT_HEADERS = ["#", "checkpoint", "step", "weight"]
RULE_FIELDS = ("sigma_rel", "beta", "beta2")  # the rules' values: only the chosen rule's are shown and checked
OPTIONS = ["rule", *RULE_FIELDS, "space", "precision", "overwrite"]  # the form's option fields
JOB_KINDS = ("ema",)
PRESET_FIELDS = ("run", "typed paths", "output")  # then the options
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
        self.form = SettingsForm(EmaSettings, OPTIONS, "ema")
        self.presets = PresetRow({"ema": job_presets(ctx.workspace.presets, "ema")}, "ema", self.preset_settings,
                                 self.preset_fill, len(PRESET_FIELDS) + len(OPTIONS))

    def on_rule(self, rule):
        """Show the chosen rule's values only, and no problem of the values no longer used."""
        shown_now = [gr.update(visible=name in RULE_VALUES.get(rule, ())) for name in RULE_FIELDS]
        return *shown_now, *(gr.update(visible=False) for _ in RULE_FIELDS)

    def used(self, options: dict) -> dict:
        """The options the job takes: the chosen rule's values, not the other rules'."""
        rule = options.get("rule")
        return {name: value for name, value in options.items()
                if name not in RULE_FIELDS or name in RULE_VALUES.get(rule, ())}

    def option_problems(self, options: dict) -> dict[str, str]:
        """{field: sentence} for the options, from the model's checks; the rule's values in their own words (an
        empty σ_rel says what to type, an out-of-range one its range)."""
        problems = self.form.problems(EmaSettings, self.used(options))
        if options.get("rule") in RULE_VALUES:
            problems.update(rule_problems(options["rule"], options.get("sigma_rel"), options.get("beta"),
                                          options.get("beta2")))
        return problems

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
        return Inputs(paths, found), notes_markdown(found), output_update(out, suggested, suggestion), suggestion

    def weights(self, inputs: Inputs, *values):
        """(checkpoint rows with weights, rule message, each option's problem): what the job will compute, before it
        runs; `values`: the option widgets' values in OPTIONS order; a wrong value is shown beside its field."""
        options = self.form.values(values)
        problems = self.option_problems(options)
        slots = self.form.slot_updates(problems)
        found = inputs.found
        if found is None:
            return [], "", *slots
        root = self.ctx.workspace.root
        if problems:
            rows = [[i, display_path(root, p), s, ""] for i, (p, s) in enumerate(zip(found.files, found.steps), 1)]
            return rows, "", *slots
        weights, gamma = rule_weights(self.settings(inputs, options), found.steps)
        rows = [[i, display_path(root, path), step, round(weight, 6)]
                for i, (path, step, weight) in enumerate(zip(found.files, found.steps, weights), 1)]
        message = f"γ = {gamma:.4f}; the weights sum to {sum(weights):.6f}." if gamma is not None else \
            f"The weights sum to {sum(weights):.6f}."
        return rows, message, *slots

    def settings(self, inputs: Inputs, options: dict, out: str = "") -> EmaSettings:
        """The job's settings from the form, by field name (only the chosen rule's values are kept)."""
        given = {name: value for name, value in self.used(options).items() if value is not None}
        return checked(EmaSettings, {"inputs": [str(p) for p in inputs.paths], "out": out, **given},
                       label_of(EmaSettings))

    def out_problem(self, inputs: Inputs, out, overwrite, outside) -> str | None:
        """The output field's problem (empty, not a name, an input, an existing file without Overwrite, outside the
        workspace without the confirm box), worded for this form."""
        if not out or not str(out).strip():
            return "The output path is empty; type where the EMA LoRA goes (a .safetensors name)."
        files = inputs.found.files if inputs.found else inputs.paths
        return output_message(out, workspace=self.ctx.workspace, inputs=files, overwrite=bool(overwrite),
                              outside_confirmed=bool(outside), lora_output=True)

    def check_out(self, inputs: Inputs, out, outside, *values):
        overwrite = self.form.values(values)["overwrite"]
        return slot_update(self.out_problem(inputs, out, overwrite, outside) if out and str(out).strip() else None)

    def run(self, inputs: Inputs, out, followed, outside, *values):
        """(followed job, status, log, summary, bar, timer, each option's problem, the output's problem); `values`:
        the option widgets' values in OPTIONS order; `outside`: the user confirmed an output outside the workspace.
        Every wrong field is shown beside it (an out-of-range σ_rel as well as an empty output)."""
        options = self.form.values(values)
        problems = self.option_problems(options)
        out_problem = self.out_problem(inputs, out, options["overwrite"], outside)
        slots = [*self.form.slot_updates(problems), slot_update(out_problem)]
        if problems or out_problem:
            return refused(followed, NOT_STARTED, *slots)
        try:
            target = workspace_path(self.ctx.workspace.root, out).resolve()
            settings = self.settings(inputs, options, str(target))
            found = check_request(settings)
            job = self.ctx.jobs.submit(
                [sys.executable, "-m", "backend", *settings.arguments()], kind="ema",
                title=f"Post-hoc EMA of {len(found.files)} checkpoints",
                settings={"inputs": settings.inputs, "rule": settings.rule, "space": settings.space,
                          "outputs": [str(target)]})
        except UserError as exc:
            return refused(followed, f"⚠ {exc}", *slots)
        return (follow_job(job), f"Job {job.id}: {job.status}…", "", "", job_bar(job), gr.Timer(active=True),
                *slots)

    def preset_settings(self, kind, inputs: Inputs, out, *values) -> EmaSettings:
        """The form as EmaSettings, for a preset: the rule and its values, the output options, and the checkpoints
        and output when they are chosen (a preset of the options alone leaves them to the form)."""
        options = self.form.values(values)
        problems = self.option_problems(options)
        if problems:
            raise UserError(f"Fix the form first: {next(iter(problems.values()))}")
        target = str(workspace_path(self.ctx.workspace.root, out).resolve()) if out and str(out).strip() else ""
        return self.settings(inputs or Inputs(), options, target)

    def preset_fill(self, kind, settings: EmaSettings, inputs, out, *values) -> tuple:
        """Updates for (run, typed paths, output, each option) that show `settings`: its checkpoints as the run they
        are, else as typed paths; a checkpoint that is gone is a UserError (nothing changes)."""
        root = self.ctx.workspace.root
        paths = [Path(path).expanduser().resolve() for path in settings.inputs]
        gone = next((path for path in paths if not path.exists()), None)
        if gone is not None:
            raise UserError(f"The preset's checkpoint {gone} does not exist any more; pick the run again, or save the "
                            "preset again without it.")
        run, typed = gr.skip(), gr.skip()
        if paths:
            match = next((found for found in list_runs(self.ctx.workspace.loras)
                          if {Path(file).resolve() for file in found.files} == set(paths)), None)
            run = match.key(root) if match else None
            typed = "" if match else "\n".join(display_path(root, path) for path in paths)
        options = [getattr(settings, name) for name in OPTIONS]
        return (gr.update(choices=run_choices(self.ctx), value=run) if paths else run, typed,
                settings.out or gr.skip(), *options)

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
    kind = gr.State("ema")
    panel.presets.build("ema")  # one line: EMA presets (the rule, its values, the checkpoints, the output)
    with gr.Row():
        run = gr.Dropdown(run_choices(ctx), value=None, scale=3, elem_id="ema-run",
                          label=f"Run (checkpoints saved in {ctx.workspace.loras})")
        refresh = gr.Button("Refresh", scale=0, min_width=110, elem_id="ema-refresh")
        typed = gr.Textbox("", lines=2, scale=3, elem_id="ema-paths",
                           label="Or a run folder / checkpoint files (one per line, relative to the workspace)")
    notes = gr.Markdown("Pick a run or type a run folder or checkpoint files.", elem_id="ema-notes")
    form = panel.form
    form.build(["rule", *RULE_FIELDS])  # the chosen rule's values show (on_rule)
    for name in RULE_FIELDS:
        form.widgets[name].visible = name in RULE_VALUES[form.start["rule"]]
    table = gr.Dataframe(headers=CHECKPOINT_HEADERS, value=[], interactive=False, wrap=True,
                         label="Checkpoints and the weight each gets", elem_id="ema-checkpoints")
    weight_message = gr.Markdown("", elem_id="ema-weight-message")
    form.build(["space", "precision"])
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            out = gr.Textbox("", **shown(EmaSettings, "out"), elem_id="ema-out")
            out_slot = problem_slot("ema-out-error")
        with gr.Column(scale=0, min_width=140):
            form.build(["overwrite"])
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

    option_inputs = [inputs, *form.inputs]
    weight_outputs = [table, weight_message, *form.outputs]
    out_inputs = [inputs, out, outside, *form.inputs]
    rule_widgets = [form.widgets[name] for name in RULE_FIELDS]
    rule_slots = [form.slots[name] for name in RULE_FIELDS]
    find_args = dict(fn=panel.find, inputs=[run, typed, out, suggested], outputs=[inputs, notes, out, suggested],
                     **_GROUP)
    run.change(**find_args).then(panel.weights, inputs=option_inputs, outputs=weight_outputs, **_GROUP).then(
        panel.check_out, inputs=out_inputs, outputs=out_slot, **_GROUP)
    typed.blur(**find_args).then(panel.weights, inputs=option_inputs, outputs=weight_outputs, **_GROUP).then(
        panel.check_out, inputs=out_inputs, outputs=out_slot, **_GROUP)
    form.widgets["rule"].change(panel.on_rule, inputs=form.widgets["rule"], outputs=[*rule_widgets, *rule_slots],
                                **_GROUP).then(panel.weights, inputs=option_inputs, outputs=weight_outputs, **_GROUP)
    gr.on([form.widgets[name].change for name in OPTIONS if name != "rule"], panel.weights, inputs=option_inputs,
          outputs=weight_outputs, **_GROUP)
    gr.on([out.blur, form.widgets["overwrite"].change, outside.change], panel.check_out, inputs=out_inputs,
          outputs=out_slot, **_GROUP)
    gr.on([refresh.click, tab.select], panel.refresh, inputs=run, outputs=run, **_GROUP)
    panel.presets.wire(kind, [inputs, out, *form.inputs], [run, typed, out, *form.inputs], **_GROUP).then(
        **find_args).then(panel.weights, inputs=option_inputs, outputs=weight_outputs, **_GROUP).then(
        panel.check_out, inputs=out_inputs, outputs=out_slot, **_GROUP)
    run_button.click(panel.run, inputs=[inputs, out, followed, outside, *form.inputs],
                     outputs=[followed, status, log, summary, progress, timer, *form.outputs, out_slot], **_GROUP)
    timer.tick(panel.tick, inputs=followed, outputs=[followed, status, log, summary, progress, timer], **_GROUP)
