"""Jobs tab: every job in the workspace, its live log, and stop / re-run / delete.

All events of this tab share one concurrency group, so a timer tick never interleaves with a click
(a tick that finished after a click could otherwise bring back the previous selection).
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field

import gradio as gr

from backend.errors import UserError
from backend.jobs import Job
from ui.context import AppContext
from ui.log_view import LogView
from ui.widgets import format_duration, format_moment, report_error

TABLE_HEADERS = ["id", "kind", "title", "status", "created", "duration"]
POLL_SECONDS = 1.0
SELFCHECK_STEPS = 100
SELFCHECK_INTERVAL_S = 0.25
_GROUP = dict(concurrency_id="jobs-tab", concurrency_limit=1, show_progress="hidden")


def selfcheck_argv(steps: int, interval_s: float) -> list[str]:
    return [sys.executable, "-m", "backend", "selfcheck", "--steps", str(steps), "--interval", str(interval_s)]


def table_rows(jobs: list[Job]) -> list[list[str]]:
    return [[job.id, job.kind, job.title, job.status, format_moment(job.created),
             format_duration(job.started, job.ended)] for job in jobs]


def job_result(job: Job) -> str:
    if not job.is_finished:
        return ""
    parts = [f"exit code {job.returncode}" if job.returncode is not None else "no exit code"]
    if job.error:
        parts.append(job.error)
    return " — ".join(parts)


@dataclass
class SessionView:
    """What one browser page shows: the selected job's log so far and the table rows last sent."""
    log: LogView = field(default_factory=LogView)
    rows: list[list[str]] | None = None

    @classmethod
    def of(cls, job_id: str | None) -> "SessionView":
        return cls(LogView(job_id))

    @property
    def job_id(self) -> str | None:
        return self.log.job_id


class JobsPanel:
    """The handlers; each returns values for OUTPUTS (view, table, status, result, folder, command, log, message)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def _outputs(self, view: SessionView, message: str | None, *, log_changed: bool) -> tuple:
        manager = self.ctx.jobs
        jobs = manager.list()  # refreshes: records ended jobs and starts queued ones
        if view.job_id is None and jobs:  # nothing selected yet: follow the newest job
            view, log_changed = SessionView.of(jobs[0].id), True
        job = next((j for j in jobs if j.id == view.job_id), None)
        if view.job_id is not None and job is None:  # deleted from another page
            view, log_changed = SessionView(), True
        if job is not None:
            chunk, view.log.offset = manager.read_log(job.id, view.log.offset)
            if chunk:
                view.log.append(chunk)
                log_changed = True
        rows = table_rows(jobs)
        table_update = gr.skip() if rows == view.rows else rows
        view.rows = rows
        return (
            view,
            table_update,
            job.status if job else "",
            job_result(job) if job else "",
            str(job.dir) if job else "",
            shlex.join(job.argv) if job else "",
            view.log.text if log_changed else gr.skip(),
            message if message is not None else gr.skip(),
        )

    def tick(self, view: SessionView) -> tuple:
        return self._outputs(view, None, log_changed=False)

    def select(self, view: SessionView, event: gr.SelectData) -> tuple:
        row = event.row_value or []
        job_id = str(row[0]) if row else None
        return self._outputs(SessionView.of(job_id) if job_id else view, "", log_changed=True)

    def _act(self, view: SessionView, action) -> tuple:
        try:
            new_view, message = action(view)
        except UserError as exc:
            return self._outputs(view, report_error(exc), log_changed=False)
        return self._outputs(new_view, message, log_changed=new_view is not view)

    def _require_selection(self, view: SessionView) -> str:
        if view.job_id is None:
            raise UserError("No job is selected; click a row in the jobs table first.")
        return view.job_id

    def run_selfcheck(self, view: SessionView) -> tuple:
        def action(_: SessionView):
            job = self.ctx.jobs.submit(
                selfcheck_argv(SELFCHECK_STEPS, SELFCHECK_INTERVAL_S), kind="selfcheck", title="Self-check",
                settings={"steps": SELFCHECK_STEPS, "interval": SELFCHECK_INTERVAL_S})
            return SessionView.of(job.id), f"Started self-check job {job.id}."
        return self._act(view, action)

    def stop(self, view: SessionView) -> tuple:
        def action(current: SessionView):
            job_id = self._require_selection(current)
            self.ctx.jobs.stop(job_id)
            return current, f"Asked job {job_id} to stop; it saves and exits at its next step."
        return self._act(view, action)

    def rerun(self, view: SessionView) -> tuple:
        def action(current: SessionView):
            job = self.ctx.jobs.rerun(self._require_selection(current))
            return SessionView.of(job.id), f"Started job {job.id} with the same command and settings."
        return self._act(view, action)

    def delete(self, view: SessionView) -> tuple:
        def action(current: SessionView):
            job_id = self._require_selection(current)
            self.ctx.jobs.delete(job_id)
            return SessionView(), f"Deleted job {job_id} and its folder."
        return self._act(view, action)


def build(ctx: AppContext) -> None:
    panel = JobsPanel(ctx)
    gr.Markdown("### Jobs\nEvery heavy action runs as a separate process with its own folder, log and events. "
                "Jobs keep running when you close the page or restart the app. "
                "**Run self-check** starts a short job that proves the job runner, live log and stop work.")
    view = gr.State(SessionView())
    with gr.Row():
        selfcheck_button = gr.Button("Run self-check", variant="primary", elem_id="jobs-selfcheck", scale=0)
        message = gr.Markdown("", elem_id="jobs-message")
    table = gr.Dataframe(headers=TABLE_HEADERS, value=[], interactive=False, wrap=True, max_height=260,
                         label="Jobs (newest first) — click a row to show its log", elem_id="jobs-table")
    with gr.Group():
        with gr.Row(equal_height=True):
            status = gr.Textbox(label="Status", interactive=False, elem_id="job-status", scale=1)
            result = gr.Textbox(label="Result", interactive=False, elem_id="job-result", scale=2, max_lines=8)
            stop_button = gr.Button("Stop", variant="stop", elem_id="jobs-stop", scale=0, min_width=90)
            rerun_button = gr.Button("Re-run", elem_id="jobs-rerun", scale=0, min_width=90)
            delete_button = gr.Button("Delete", elem_id="jobs-delete", scale=0, min_width=90)
        folder = gr.Textbox(label="Job folder", interactive=False, elem_id="job-folder")
        command = gr.Textbox(label="Command", interactive=False, elem_id="job-command")
        log = gr.Textbox(label="Log", lines=16, max_lines=16, autoscroll=True, interactive=False,
                         elem_id="job-log", buttons=["copy"])

    outputs = [view, table, status, result, folder, command, log, message]
    gr.Timer(POLL_SECONDS).tick(panel.tick, inputs=view, outputs=outputs, **_GROUP)
    table.select(panel.select, inputs=view, outputs=outputs, **_GROUP)
    selfcheck_button.click(panel.run_selfcheck, inputs=view, outputs=outputs, **_GROUP)
    stop_button.click(panel.stop, inputs=view, outputs=outputs, **_GROUP)
    rerun_button.click(panel.rerun, inputs=view, outputs=outputs, **_GROUP)
    delete_button.click(panel.delete, inputs=view, outputs=outputs, **_GROUP)
