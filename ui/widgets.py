"""Small pieces the tabs share: the "coming later" panel, one-sentence error reporting, time formatting."""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import gradio as gr


def coming_soon(description_markdown: str, where: Path) -> None:
    """A tab whose features arrive later: it says what it will do and where its files live, with no controls."""
    gr.Markdown(description_markdown)
    gr.Markdown(f"*Not available in this version yet. Its files will live in `{where}`.*",
                elem_classes=["loraid-muted"])


def report_error(exc: Exception) -> str:
    """A user error as the one sentence its message box shows (one message per problem: no toast beside the box)."""
    return str(exc).strip() or exc.__class__.__name__


def toast_error(exc: Exception) -> str:
    """A user error as a toast, for a handler that has no message box of its own to show it in."""
    message = report_error(exc)
    gr.Warning(message)
    return message


def as_datetime(moment: float | str | datetime | None) -> datetime | None:
    if moment is None or moment == "":
        return None
    if isinstance(moment, datetime):
        return moment
    if isinstance(moment, (int, float)):
        return datetime.fromtimestamp(moment)
    return datetime.fromisoformat(str(moment))


def format_moment(moment: float | str | datetime | None) -> str:
    when = as_datetime(moment)
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S") if when else ""


def format_duration(start: float | str | datetime | None, end: float | str | datetime | None) -> str:
    began = as_datetime(start)
    if began is None:
        return ""
    finished = as_datetime(end)
    if finished is None:
        seconds = time.time() - began.timestamp()
    else:
        seconds = finished.timestamp() - began.timestamp()
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_bar(progress, status: str, elem_class: str = "job-progress") -> str:
    """A JobProgress as a bar with its count and ETA; data-step / data-total / data-status are what browser tests
    wait on (a moving count, not a clock)."""
    import html

    total = progress.total or 0
    return (f'<div class="{elem_class}" data-step="{progress.step}" data-total="{total}" '
            f'data-status="{html.escape(status)}"><progress value="{progress.step}" max="{max(total, 1)}" '
            f'style="width:100%"></progress> <span>{html.escape(progress.line(status != "running"))}</span></div>')
