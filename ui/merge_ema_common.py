"""What the Merge and EMA tabs share: following one compose job (status, progress from its events, its log, the
summary of what it wrote; a page that opens while such a job runs picks it up again, since jobs outlive the page),
and an inline error message."""
from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Callable

import gradio as gr

from backend.errors import UserError
from backend.jobs import Job
from backend.output_guard import check_folder
from ui.context import AppContext
from ui.log_view import LogView

ERROR_PREFIX = "error: "


@dataclass
class FollowedJob:
    job_id: str | None = None
    outputs: list[str] = field(default_factory=list)
    events_offset: int = 0
    progress: str = ""


@dataclass(frozen=True)
class JobState:
    status: str  # one line for the page
    log: str
    finished: bool
    succeeded: bool


OUTSIDE_LABEL = "Confirm: write outside the workspace"


def confirm_outside(ctx: AppContext, target: Path, confirmed: bool) -> None:
    """An output outside the workspace is refused (one sentence) until its confirm box is ticked."""
    check_folder(Path(target).parent, ctx.workspace, outside_confirmed=bool(confirmed))


def follow_job(job: Job) -> FollowedJob:
    return FollowedJob(job.id, list(job.settings.get("outputs", [])))


def newest_active(ctx: AppContext, kinds: tuple[str, ...]) -> Job | None:
    return next((job for job in ctx.jobs.list() if job.kind in kinds and not job.is_finished), None)


def failure_sentence(log: str) -> str | None:
    """The one-sentence error a backend command printed (`error: ...`), if any."""
    lines = [line[len(ERROR_PREFIX):] for line in log.splitlines() if line.startswith(ERROR_PREFIX)]
    return lines[-1] if lines else None


def _progress(ctx: AppContext, followed: FollowedJob) -> str:
    events, followed.events_offset = ctx.jobs.read_events(followed.job_id, followed.events_offset)
    for event in events:
        if event.get("event") == "progress" and event.get("total"):
            part = f"{event['part']}: " if event.get("part") and event["part"] != "merge" else ""
            share = event["step"] / event["total"]
            followed.progress = f"{part}{event['step']}/{event['total']} tensors ({share:.0%})"
    return followed.progress


def job_state(ctx: AppContext, followed: FollowedJob) -> JobState:
    """Where the followed job stands now (reads new events; the log is read whole, compose logs are short)."""
    ctx.jobs.refresh()  # starts it if it was queued
    try:
        job = ctx.jobs.get(followed.job_id)
    except UserError as exc:  # deleted in the Jobs tab meanwhile
        return JobState(str(exc), "", True, False)
    view = LogView(job.id)
    view.append(ctx.jobs.read_log(job.id)[0])
    progress = _progress(ctx, followed)
    if not job.is_finished:
        return JobState(f"Job {job.id}: {job.status}… {progress}".rstrip(), view.text, False, False)
    if job.status == "succeeded":
        return JobState(f"Job {job.id} succeeded.", view.text, True, True)
    reason = failure_sentence(view.text) or "its log says why"
    return JobState(f"Job {job.id} ended ({job.status}): {reason}", view.text, True, False)


def error_html(message: str) -> str:
    return f'<p style="color: #c0392b;">{escape(message)}</p>'


def tick(ctx: AppContext, followed: FollowedJob, kinds: tuple[str, ...], summarize: Callable[[list[str]], str]):
    """(followed job, status, log, summary, timer) for a tab's timer; the timer stops once the job has finished."""
    if followed.job_id is None:
        job = newest_active(ctx, kinds)
        if job is None:
            return followed, gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)
        followed = follow_job(job)
    state = job_state(ctx, followed)
    if not state.finished:
        return followed, state.status, state.log, gr.skip(), gr.skip()
    summary = summarize(followed.outputs) if state.succeeded else ""
    return followed, state.status, state.log, summary, gr.Timer(active=False)


def summary_markdown(outputs: list[str], read_summary: Callable[[Path], list[str]],
                     where_note: Callable[[Path], str | None]) -> str:
    """Each output's summary (title in bold, then its lines) and where the app lists it; an unreadable one is a ⚠."""
    parts = []
    for out in map(Path, outputs):
        try:
            lines = read_summary(out)
        except UserError as exc:
            parts.append(f"⚠ {exc}")
            continue
        parts.append("\n".join([f"**{lines[0]}**", *(f"- {line}" for line in lines[1:])]))
        note = where_note(out)
        if note:
            parts.append(note)
    return "\n\n".join(parts)
