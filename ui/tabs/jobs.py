"""Jobs tab: every job in the workspace (filtered by kind and status), its live log, settings and events; stop /
re-run / delete, the queue (move a queued job up or down, cancel it), and "Open in Train tab" for a training job
(its settings saved as a user preset and loaded into the Train tab's form, which the page then shows).

All events of this tab share one concurrency group, so a timer tick never interleaves with a click
(a tick that finished after a click could otherwise bring back the previous selection).

elem_ids: jobs-selfcheck, jobs-message, jobs-filter-kind, jobs-filter-status, jobs-table, job-status, job-result,
jobs-stop, jobs-rerun, jobs-delete, jobs-move-up, jobs-move-down, jobs-cancel, jobs-preset-name, jobs-open-preset,
job-folder, job-command, job-log, job-settings, job-events.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import gradio as gr

from backend.config.presets import PresetRef, job_presets
from backend.errors import UserError
from backend.jobs import STATUSES, Job
from backend.jobs.progress import read_progress
from backend.train.settings import TrainSettings
from ui.context import AppContext
from ui.log_view import LogView
from ui.widgets import format_duration, format_moment, report_error

TABLE_HEADERS = ["id", "kind", "title", "status", "progress", "created", "duration", "queue"]
COLUMN_WIDTHS = ["17%", "10%", "26%", "8%", "13%", "12%", "8%", "6%"]  # the table fits the page; titles wrap
ALL = "all"
SHOWN_EVENTS = 200
TRAIN_KIND = "train"
POLL_SECONDS = 1.0
IDLE_SECONDS = 4.0  # when no job is unfinished: each poll costs the page CPU in proportion to its size
SELFCHECK_STEPS = 100
SELFCHECK_INTERVAL_S = 0.6  # a minute in all: long enough to outlast an app restart on a slow machine
_GROUP = dict(concurrency_id="jobs-tab", concurrency_limit=1, show_progress="hidden")


def selfcheck_argv(steps: int, interval_s: float) -> list[str]:
    return [sys.executable, "-m", "backend", "selfcheck", "--steps", str(steps), "--interval", str(interval_s)]


def table_rows(jobs: list[Job], queue: list[str] | None = None) -> list[list[str]]:
    """One row per job; `queue` (ids in start order) numbers the queued ones."""
    place = {job_id: str(index + 1) for index, job_id in enumerate(queue or [])}
    return [[job.id, job.kind, job.title, job.status, progress_cell(job), format_moment(job.created),
             format_duration(job.started, job.ended), place.get(job.id, "")] for job in jobs]


def progress_cell(job: Job) -> str:
    """`12/48 (25%) · ETA 0:36` for a running job, from the tail of its events; nothing for the others."""
    return read_progress(job.events_path).line() if job.status in ("running", "stopping") else ""


def matches(job: Job, kind: str, status: str) -> bool:
    return kind in (ALL, job.kind) and status in (ALL, job.status)


def job_result(job: Job) -> str:
    if not job.is_finished:
        return ""
    parts = [f"exit code {job.returncode}" if job.returncode is not None else "no exit code"]
    if job.outcome:
        parts.insert(0, job.outcome)
    if job.error:
        parts.append(job.error)
    return " — ".join(parts)


@dataclass
class SessionView:
    """What one browser page shows: the selected job's log and events so far, the filters, the rows last sent."""
    log: LogView = field(default_factory=LogView)
    rows: list[list[str]] | None = None
    kind: str = ALL
    status: str = ALL
    events_offset: int = 0
    events: deque = field(default_factory=lambda: deque(maxlen=SHOWN_EVENTS))
    details_shown: bool = False  # settings and events were sent once; later ticks send only new events
    poll_seconds: float = 0.0  # the timer's interval as last set
    delete_asked: str | None = None  # the job whose Delete was pressed once (the next press deletes it)

    @classmethod
    def of(cls, job_id: str | None, like: "SessionView | None" = None) -> "SessionView":
        """A view of another job, keeping the filters of `like`."""
        return cls(LogView(job_id), kind=like.kind if like else ALL, status=like.status if like else ALL)

    @property
    def job_id(self) -> str | None:
        return self.log.job_id


class JobsPanel:
    """The handlers; each returns values for OUTPUTS (view, table, status, result, folder, command, log, message)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def _outputs(self, view: SessionView, message: str | None, *, log_changed: bool,
                 jobs: list[Job] | None = None) -> tuple:
        manager = self.ctx.jobs
        jobs = manager.list() if jobs is None else jobs  # list() refreshes: records ended jobs, starts queued ones
        shown = [j for j in jobs if matches(j, view.kind, view.status)]
        if view.job_id is None and shown:  # nothing selected yet: follow the newest job
            view, log_changed = SessionView.of(shown[0].id, view), True
        job = next((j for j in jobs if j.id == view.job_id), None)
        if view.job_id is not None and job is None:  # deleted from another page
            view, log_changed = SessionView.of(None, view), True
        if job is not None:
            chunk, view.log.offset = manager.read_log(job.id, view.log.offset)
            if chunk:
                view.log.append(chunk)
                log_changed = True
        queue = [j.id for j in manager.queued()] if any(j.status == "queued" for j in jobs) else []
        rows = table_rows(shown, queue)
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
        """The outputs, then the timer: polled every second while a job is unfinished, else every IDLE_SECONDS."""
        jobs = self.ctx.jobs.list()
        shown = self._outputs(view, None, log_changed=False, jobs=jobs)
        seconds = POLL_SECONDS if any(not job.is_finished for job in jobs) else IDLE_SECONDS
        pace = gr.skip() if view.poll_seconds == seconds else gr.Timer(seconds, active=True)
        shown[0].poll_seconds = seconds
        return (*shown, pace)

    def details(self, view: SessionView) -> tuple:
        """(view, settings JSON, events) of the selected job; events are read by offset, the newest kept."""
        if view.job_id is None:
            return view, "", ""
        try:
            job = self.ctx.jobs.get(view.job_id)
            events, view.events_offset = self.ctx.jobs.read_events(job.id, view.events_offset)
        except UserError:
            return view, "", ""
        view.events.extend(events)
        if view.details_shown and not events:
            return view, gr.skip(), gr.skip()  # re-sending unchanged editors every second costs the page CPU
        lines = [json.dumps(event, ensure_ascii=False) for event in view.events]
        settings = gr.skip() if view.details_shown else json.dumps(job.settings, indent=1, ensure_ascii=False)
        view.details_shown = True
        return view, settings, "\n".join(lines)

    def filter(self, view: SessionView, kind: str, status: str) -> tuple:
        chosen = SessionView.of(view.job_id) if view.job_id else SessionView()
        chosen.kind, chosen.status = kind or ALL, status or ALL
        return self._outputs(chosen, "", log_changed=True)

    def select(self, view: SessionView, event: gr.SelectData) -> tuple:
        row = event.row_value or []
        job_id = str(row[0]) if row else None
        return self._outputs(SessionView.of(job_id, view) if job_id else view, "", log_changed=True)

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
        def action(current: SessionView):
            job = self.ctx.jobs.submit(
                selfcheck_argv(SELFCHECK_STEPS, SELFCHECK_INTERVAL_S), kind="selfcheck", title="Self-check",
                settings={"steps": SELFCHECK_STEPS, "interval": SELFCHECK_INTERVAL_S})
            return SessionView.of(job.id, current), f"Started self-check job {job.id}."
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
            return SessionView.of(job.id, current), f"Started job {job.id} with the same command and settings."
        return self._act(view, action)

    def move(self, view: SessionView, offset: int) -> tuple:
        def action(current: SessionView):
            job_id = self._require_selection(current)
            queue = self.ctx.jobs.move(job_id, offset)
            place = [job.id for job in queue].index(job_id) + 1
            return current, f"Job {job_id} is now number {place} of {len(queue)} in the queue."
        return self._act(view, action)

    def move_up(self, view: SessionView) -> tuple:
        return self.move(view, -1)

    def move_down(self, view: SessionView) -> tuple:
        return self.move(view, +1)

    def cancel(self, view: SessionView) -> tuple:
        def action(current: SessionView):
            job_id = self._require_selection(current)
            self.ctx.jobs.cancel(job_id)
            return current, f"Cancelled queued job {job_id}; it will not start."
        return self._act(view, action)

    def _save_preset(self, view: SessionView, name: str) -> tuple[Job, PresetRef]:
        """A training job's settings as a user preset: `name`, or `job-<id>` (replaced: it is the same job's)."""
        job = self.ctx.jobs.get(self._require_selection(view))
        if job.kind != TRAIN_KIND:
            raise UserError(f"Job {job.id} is a {job.kind} job; only training jobs have settings the Train tab "
                            "can load.")
        settings = TrainSettings.from_mapping(job.settings, f"job {job.id}'s settings")
        store = job_presets(self.ctx.workspace.presets, "train")
        typed = (name or "").strip()
        return job, store.save(typed or f"job-{job.id}", settings, replace=not typed)

    def open_as_preset(self, view: SessionView, name: str) -> tuple:
        """Save a training job's settings as a user preset (the Train tab's preset list then offers it)."""
        def action(current: SessionView):
            job, ref = self._save_preset(current, name)
            return current, (f"Saved job {job.id}'s settings as user preset `{ref.name}`; pick it in the Train tab's "
                             "preset list and press Load.")
        return self._act(view, action)

    def open_in_train(self, view: SessionView, name: str) -> tuple:
        """`open_as_preset`, then the preset to open in the Train tab and that tab shown: OUTPUTS + (opened, tabs)."""
        try:
            job, ref = self._save_preset(view, name)
        except UserError as exc:
            return (*self._outputs(view, report_error(exc), log_changed=False), gr.skip(), gr.skip())
        message = f"Opened job {job.id}'s settings in the Train tab (saved as user preset `{ref.name}`)."
        opened = {"key": ref.key, "job": job.id, "at": time.time()}  # a new value each time: the Train tab reacts
        return (*self._outputs(view, message, log_changed=False), opened, gr.Tabs(selected="train"))

    def delete(self, view: SessionView) -> tuple:
        """Two presses: the first asks (a running job is refused at once), the second deletes."""
        def action(current: SessionView):
            job_id = self._require_selection(current)
            if current.delete_asked != job_id and not self.ctx.jobs.get(job_id).is_finished:
                self.ctx.jobs.delete(job_id)  # refuses, saying how to stop it first
            if current.delete_asked != job_id:
                current.delete_asked = job_id
                return current, (f"Press **Delete** again to delete job {job_id} and its folder (log, events and "
                                 f"settings; files it wrote elsewhere stay).")
            self.ctx.jobs.delete(job_id)
            return SessionView.of(None, current), f"Deleted job {job_id} and its folder."
        return self._act(view, action)


def kind_choices(ctx: AppContext) -> list[str]:
    return [ALL, *sorted({job.kind for job in ctx.jobs.list()} | {TRAIN_KIND, "selfcheck"})]


def build(ctx: AppContext, tab: gr.Tab) -> None:
    panel = JobsPanel(ctx)
    gr.Markdown("### Jobs\nEvery heavy action runs as a separate process with its own folder, log and events. "
                "Jobs keep running when you close the page or restart the app; queued jobs start in the order of "
                "the queue column. **Run self-check** starts a short job that proves the job runner, live log and "
                "stop work.")
    view = gr.State(SessionView())
    with gr.Row():
        selfcheck_button = gr.Button("Run self-check", variant="primary", elem_id="jobs-selfcheck", scale=0)
        message = gr.Markdown("", elem_id="jobs-message")
    with gr.Row():
        kind_filter = gr.Dropdown(kind_choices(ctx), value=ALL, label="Kind", scale=1, elem_id="jobs-filter-kind")
        status_filter = gr.Dropdown([ALL, *STATUSES], value=ALL, label="Status", scale=1,
                                    elem_id="jobs-filter-status")
    table = gr.Dataframe(headers=TABLE_HEADERS, value=[], interactive=False, wrap=True, max_height=420,
                         column_widths=COLUMN_WIDTHS,
                         label="Jobs (newest first) — click a row to show its log", elem_id="jobs-table")
    with gr.Group():
        with gr.Row(equal_height=True):
            status = gr.Textbox(label="Status", interactive=False, elem_id="job-status", scale=1)
            result = gr.Textbox(label="Result", interactive=False, elem_id="job-result", scale=2, max_lines=8)
            stop_button = gr.Button("Stop", variant="stop", elem_id="jobs-stop", scale=0, min_width=90)
            rerun_button = gr.Button("Re-run", elem_id="jobs-rerun", scale=0, min_width=90)
            delete_button = gr.Button("Delete", elem_id="jobs-delete", scale=0, min_width=90)
        with gr.Row(equal_height=True):
            up_button = gr.Button("Move up in queue", elem_id="jobs-move-up", scale=0, min_width=150)
            down_button = gr.Button("Move down in queue", elem_id="jobs-move-down", scale=0, min_width=150)
            cancel_button = gr.Button("Cancel queued job", elem_id="jobs-cancel", scale=0, min_width=150)
            preset_name = gr.Textbox("", label="Save as preset (empty: job-<id>)", scale=2, elem_id="jobs-preset-name")
            preset_button = gr.Button("Open in Train tab", elem_id="jobs-open-preset", scale=0, min_width=150)
        folder = gr.Textbox(label="Job folder", interactive=False, elem_id="job-folder")
        command = gr.Textbox(label="Command", interactive=False, elem_id="job-command")
        log = gr.Textbox(label="Log", lines=16, max_lines=16, autoscroll=True, interactive=False,
                         elem_id="job-log", buttons=["copy"])
        with gr.Row():
            settings = gr.Code("", language="json", label="Settings", elem_id="job-settings")
            events = gr.Code("", language=None, label=f"Events (the newest {SHOWN_EVENTS})", elem_id="job-events",
                             wrap_lines=True)

    outputs = [view, table, status, result, folder, command, log, message]
    details = dict(fn=panel.details, inputs=view, outputs=[view, settings, events], **_GROUP)
    timer = gr.Timer(POLL_SECONDS)
    timer.tick(panel.tick, inputs=view, outputs=[*outputs, timer], **_GROUP).then(**details)
    table.select(panel.select, inputs=view, outputs=outputs, **_GROUP).then(**details)
    for control in (kind_filter, status_filter):
        control.input(panel.filter, inputs=[view, kind_filter, status_filter], outputs=outputs, **_GROUP)
    kind_filter.focus(lambda: gr.update(choices=kind_choices(ctx)), outputs=kind_filter, **_GROUP)
    selfcheck_button.click(panel.run_selfcheck, inputs=view, outputs=outputs, **_GROUP).then(**details)
    stop_button.click(panel.stop, inputs=view, outputs=outputs, **_GROUP)
    rerun_button.click(panel.rerun, inputs=view, outputs=outputs, **_GROUP).then(**details)
    delete_button.click(panel.delete, inputs=view, outputs=outputs, **_GROUP).then(**details)
    up_button.click(panel.move_up, inputs=view, outputs=outputs, **_GROUP)
    down_button.click(panel.move_down, inputs=view, outputs=outputs, **_GROUP)
    cancel_button.click(panel.cancel, inputs=view, outputs=outputs, **_GROUP)
    opened = ctx.links["train:opened-preset"]  # the Train tab (built first) loads the preset this holds
    preset_button.click(panel.open_in_train, inputs=[view, preset_name], outputs=[*outputs, opened, ctx.links["tabs"]],
                        **_GROUP)
