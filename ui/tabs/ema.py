"""EMA tab: post-hoc EMA over the checkpoints a run saved, as a job; the checkpoints and the weight each gets are
shown before running. Discovery, weights, checks and the summary come from `backend.compose` (ema_plan, summaries);
this module builds widgets."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from backend.compose.ema import PRECISIONS
from backend.compose.ema_plan import Discovered, EmaRequest, Rule, discover, list_runs, run_name
from backend.compose.merge_plan import display_path, typed_paths, workspace_path
from backend.compose.output_names import ema_stem, free_path
from backend.compose.summaries import ema_summary
from backend.errors import UserError
from ui.context import AppContext
from ui.merge_ema_common import (OUTSIDE_LABEL, FollowedJob, confirm_outside, error_html, follow_job,
                                 summary_markdown, tick)
from ui.widgets import report_error

CHECKPOINT_HEADERS = ["#", "checkpoint", "step", "weight"]
RULES = [("Power EMA (σ_rel, EDM2)", "power"), ("Beta EMA (musubi's --beta / --beta2)", "beta"),
         ("Plain mean", "uniform")]
SPACES = [("factors: average the stored tensors (fast, musubi-compatible)", "factors"),
          ("delta: average ΔW = B·A exactly, re-factorize to the input rank", "delta")]
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
        return gr.update(visible=rule == "power"), gr.update(visible=rule == "beta"), \
            gr.update(visible=rule == "beta")

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
        """(checkpoint rows with weights, rule message): what the job will compute, before it runs."""
        found = inputs.found
        if found is None:
            return [], ""
        root = self.ctx.workspace.root
        try:
            weights, gamma = Rule(rule, sigma_rel, beta, beta2).weights(found.steps)
        except UserError as exc:
            rows = [[i, display_path(root, p), s, ""] for i, (p, s) in enumerate(zip(found.files, found.steps), 1)]
            return rows, error_html(str(exc))
        rows = [[i, display_path(root, path), step, round(weight, 6)]
                for i, (path, step, weight) in enumerate(zip(found.files, found.steps, weights), 1)]
        message = f"γ = {gamma:.4f}; the weights sum to {sum(weights):.6f}." if gamma is not None else \
            f"The weights sum to {sum(weights):.6f}."
        return rows, message

    def run(self, inputs: Inputs, rule, sigma_rel, beta, beta2, space, precision, out, overwrite, followed,
            outside=False):
        """(followed job, status, log, summary, timer); `outside`: the user confirmed an output outside the
        workspace."""
        try:
            if not out or not str(out).strip():
                raise UserError("The output path is empty; type where the EMA LoRA goes (a .safetensors name).")
            target = workspace_path(self.ctx.workspace.root, out).resolve()
            confirm_outside(self.ctx, target, outside)
            request = EmaRequest(inputs.paths, target, Rule(rule, sigma_rel, beta, beta2), space, precision,
                                 bool(overwrite))
            found = request.check()
            job = self.ctx.jobs.submit(
                [sys.executable, "-m", "backend", *request.arguments()], kind="ema",
                title=f"Post-hoc EMA of {len(found.files)} checkpoints",
                settings={"inputs": [str(p) for p in request.inputs], "rule": rule, "space": space,
                          "outputs": [str(target)]})
        except UserError as exc:
            return followed, f"⚠ {report_error(exc)}", "", "", gr.Timer(active=False)  # no stale results
        return follow_job(job), f"Job {job.id}: {job.status}…", "", "", gr.Timer(active=True)

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
    with gr.Row():
        rule = gr.Radio(RULES, value="power", label="Averaging rule", elem_id="ema-rule", scale=2)
        sigma_rel = gr.Number(0.2, step=0.01, label="σ_rel (0 < σ_rel < 0.2887)", elem_id="ema-sigma-rel", scale=1)
        beta = gr.Number(0.95, step=0.01, label="β (decay at the second checkpoint)", elem_id="ema-beta", scale=1,
                         visible=False)
        beta2 = gr.Number(0.95, step=0.01, label="β2 (decay at the last checkpoint)", elem_id="ema-beta2", scale=1,
                          visible=False)
    table = gr.Dataframe(headers=CHECKPOINT_HEADERS, value=[], interactive=False, wrap=True,
                         label="Checkpoints and the weight each gets", elem_id="ema-checkpoints")
    weight_message = gr.Markdown("", elem_id="ema-weight-message")
    with gr.Row():
        space = gr.Radio(SPACES, value="factors", label="Averaging space", elem_id="ema-space", scale=3)
        precision = gr.Dropdown(list(PRECISIONS), value="same", label="Saved precision", elem_id="ema-precision",
                                scale=1)
    with gr.Row():
        out = gr.Textbox("", scale=4, label="Output LoRA file", elem_id="ema-out")
        overwrite = gr.Checkbox(False, label="Overwrite", scale=0, min_width=120, elem_id="ema-overwrite")
        outside = gr.Checkbox(False, label=OUTSIDE_LABEL, scale=0, min_width=180, elem_id="ema-outside")
    with gr.Row():
        run_button = gr.Button("Run EMA", variant="primary", scale=0, min_width=160, elem_id="ema-run-button")
        status = gr.Markdown("", elem_id="ema-status")
    summary = gr.Markdown("", elem_id="ema-summary")
    log = gr.Textbox("", label="Job log", lines=8, max_lines=16, interactive=False, autoscroll=True,
                     elem_id="ema-log")
    inputs = gr.State(Inputs())
    suggested = gr.State("")
    followed = gr.State(FollowedJob())
    timer = gr.Timer(POLL_SECONDS, active=True)  # the first tick picks up an EMA job that runs already

    rule_inputs = [inputs, rule, sigma_rel, beta, beta2]
    find_args = dict(fn=panel.find, inputs=[run, typed, out, suggested], outputs=[inputs, notes, out, suggested],
                     **_GROUP)
    run.change(**find_args).then(panel.weights, inputs=rule_inputs, outputs=[table, weight_message], **_GROUP)
    typed.blur(**find_args).then(panel.weights, inputs=rule_inputs, outputs=[table, weight_message], **_GROUP)
    rule.change(panel.on_rule, inputs=rule, outputs=[sigma_rel, beta, beta2], **_GROUP)
    for control in (rule, sigma_rel, beta, beta2):
        control.change(panel.weights, inputs=rule_inputs, outputs=[table, weight_message], **_GROUP)
    gr.on([refresh.click, tab.select], panel.refresh, inputs=run, outputs=run, **_GROUP)
    run_button.click(panel.run, inputs=[inputs, rule, sigma_rel, beta, beta2, space, precision, out, overwrite,
                                        followed, outside],
                     outputs=[followed, status, log, summary, timer], **_GROUP)
    timer.tick(panel.tick, inputs=followed, outputs=[followed, status, log, summary, timer], **_GROUP)
