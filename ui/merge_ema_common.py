"""What the Merge and EMA tabs share: following one compose job (status, a progress bar with counts and ETA from its
events, its log, the summary of what it wrote; a page that opens while such a job runs picks it up again, since jobs
outlive the page), widgets described by their settings model's fields, a problem shown beside its field, and the
default output name that follows the picks."""
from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Callable

import gradio as gr

from backend.config.settings import Settings
from backend.errors import UserError
from backend.jobs import Job
from backend.jobs.progress import read_progress
from ui.context import AppContext
from ui.log_view import LogView
from ui.widgets import progress_bar

ERROR_PREFIX = "error: "


@dataclass
class FollowedJob:
    job_id: str | None = None
    outputs: list[str] = field(default_factory=list)
    events_offset: int = 0
    part: str = ""  # which part of the job the bar counts (a pair merge counts each expert in turn)


@dataclass(frozen=True)
class JobState:
    status: str  # one line for the page
    log: str
    finished: bool
    succeeded: bool
    bar: str = ""  # the job's progress bar (count, share, ETA)


OUTSIDE_LABEL = "Confirm: write outside the workspace"


def follow_job(job: Job) -> FollowedJob:
    return FollowedJob(job.id, list(job.settings.get("outputs", [])))


def newest_active(ctx: AppContext, kinds: tuple[str, ...]) -> Job | None:
    return next((job for job in ctx.jobs.list() if job.kind in kinds and not job.is_finished), None)


def failure_sentence(log: str) -> str | None:
    """The one-sentence error a backend command printed (`error: ...`), if any."""
    lines = [line[len(ERROR_PREFIX):] for line in log.splitlines() if line.startswith(ERROR_PREFIX)]
    return lines[-1] if lines else None


def _part(ctx: AppContext, followed: FollowedJob) -> str:
    """The part of the job its newest progress event counts (e.g. `high-noise`), from the events read so far."""
    events, followed.events_offset = ctx.jobs.read_events(followed.job_id, followed.events_offset)
    for event in events:
        if event.get("event") == "progress" and event.get("part") not in (None, "merge"):
            followed.part = f"({event['part']})"
    return followed.part


def job_bar(job: Job) -> str:
    """The job's count of what it has done (tensors, modules) as a bar with its ETA, like the Dataset tab's cache
    bar and the Jobs table's progress column."""
    return progress_bar(read_progress(job.events_path), job.status, "compose-progress")


def job_state(ctx: AppContext, followed: FollowedJob) -> JobState:
    """Where the followed job stands now (reads new events; the log is read whole, compose logs are short)."""
    ctx.jobs.refresh()  # starts it if it was queued
    try:
        job = ctx.jobs.get(followed.job_id)
    except UserError as exc:  # deleted in the Jobs tab meanwhile
        return JobState(str(exc), "", True, False)
    view = LogView(job.id)
    view.append(ctx.jobs.read_log(job.id)[0])
    part, bar = _part(ctx, followed), job_bar(job)
    if not job.is_finished:
        return JobState(f"Job {job.id}: {job.status}… {part}".rstrip(), view.text, False, False, bar)
    if job.status == "succeeded":
        return JobState(f"Job {job.id} succeeded.", view.text, True, True, bar)
    reason = failure_sentence(view.text) or "its log says why"
    return JobState(f"Job {job.id} ended ({job.status}): {reason}", view.text, True, False, bar)


def error_html(message: str) -> str:
    return f'<p style="color: #c0392b;">{escape(message)}</p>'


def tick(ctx: AppContext, followed: FollowedJob, kinds: tuple[str, ...], summarize: Callable[[list[str]], str]):
    """(followed job, status, log, summary, progress bar, timer) for a tab's timer; the timer stops once the job has
    finished."""
    if followed.job_id is None:
        job = newest_active(ctx, kinds)
        if job is None:
            return followed, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)
        followed = follow_job(job)
    state = job_state(ctx, followed)
    if not state.finished:
        return followed, state.status, state.log, gr.skip(), state.bar, gr.skip()
    summary = summarize(followed.outputs) if state.succeeded else ""
    return followed, state.status, state.log, summary, state.bar, gr.Timer(active=False)


def refused(followed: FollowedJob, status: str, *slots):
    """A run that did not start: the status says why, and the last run's log, summary and bar are cleared so no old
    result stands beside the new problem; `slots` are the field problems' updates."""
    return (followed, status, "", "", "", gr.Timer(active=False), *slots)


NOT_STARTED = "⚠ Not started: fix the field marked ⚠."


def shown(model: type[Settings], name: str, **overrides) -> dict:
    """A widget's label and hint (the field's help) from the settings model, by field name, for the widgets the
    model cannot describe alone (a picker of the workspace's files, choices with longer names)."""
    info = model.field_info()[name]
    return {"label": info["label"], "info": info["help"], **overrides}


def problem_slot(elem_id: str) -> gr.Markdown:
    """Where a field's problem shows, right under it (hidden while there is none; `slot_update` fills it)."""
    return gr.Markdown("", visible=False, elem_id=elem_id, elem_classes=["field-error"])


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


def output_update(out: str | None, suggested: str, suggestion: str):
    """What the output field becomes when the default output name is recomputed: it follows the suggestion until
    the user types another path. An unchanged suggestion leaves the field alone, because `out` was read when the
    event fired and the user may have typed since."""
    shown = (out or "").strip()
    return gr.skip() if shown and (shown != suggested or suggestion == suggested) else suggestion
