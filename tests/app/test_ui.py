"""The page's structure and the Jobs tab's handlers, driven with real job processes (no browser)."""
from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pytest

from backend.jobs import JobManager
from backend.workspace import Workspace
from ui.app import build_app
from ui.context import AppContext
from ui.tabs.jobs import JobsPanel, SessionView
from tests.app.toasts import no_toast

TABS = [("Dataset", "tab-dataset"), ("Train", "tab-train"), ("LORAID", "tab-loraid"), ("Merge", "tab-merge"),
        ("EMA", "tab-ema"), ("Generate", "tab-generate"), ("Jobs", "tab-jobs")]
OUT = ["view", "table", "status", "result", "folder", "command", "log", "message"]


def descendants(block) -> list:
    found = []
    for child in getattr(block, "children", []):
        found.append(child)
        found.extend(descendants(child))
    return found


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    return ws


def test_seven_tabs_in_order_and_placeholder_tabs_have_no_buttons(workspace):
    blocks = build_app(workspace, JobManager(workspace.jobs))
    tabs = [block for block in blocks.blocks.values() if isinstance(block, gr.Tab)]
    assert [(tab.label, tab.elem_id) for tab in tabs] == TABS
    for tab in tabs:
        texts = [str(block.value) for block in descendants(tab) if isinstance(block, gr.Markdown)]
        is_placeholder = any("Not available in this version yet" in text for text in texts)
        buttons = [block.value for block in descendants(tab) if isinstance(block, gr.Button)]
        if tab.label == "Jobs":
            assert buttons[:4] == ["Run self-check", "Stop", "Re-run", "Delete"]
        elif is_placeholder:
            assert buttons == [], f"{tab.label} has buttons that do nothing yet"
        else:
            assert buttons, f"{tab.label} is neither a placeholder nor has any action"


def test_every_element_id_names_one_element(workspace):
    """Browser tests and users' scripts find widgets by id; two widgets with one id make both unreachable."""
    from collections import Counter

    blocks = build_app(workspace, JobManager(workspace.jobs))
    counts = Counter(block.elem_id for block in blocks.blocks.values() if getattr(block, "elem_id", None))
    assert [elem_id for elem_id, count in counts.items() if count > 1] == []


def outputs(values: tuple) -> dict:
    assert len(values) == len(OUT)
    return dict(zip(OUT, values))


def tick_until(panel: JobsPanel, view: SessionView, condition, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        shown = outputs(panel.tick(view)[:-1])  # the last value paces the timer
        if condition(shown):
            return shown
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout_s} s; last status {shown['status']!r}")


def log_of(view: SessionView) -> str:
    return view.log.text


def test_jobs_panel_runs_stops_reruns_and_deletes_a_real_job(workspace):
    panel = JobsPanel(AppContext(workspace, JobManager(workspace.jobs)))
    started = outputs(panel.run_selfcheck(SessionView()))
    view = started["view"]
    job_id = view.job_id
    assert started["message"] == f"Started self-check job {job_id}."
    assert started["folder"] == str(workspace.jobs / job_id)
    assert [row[0] for row in started["table"]] == [job_id]

    tick_until(panel, view, lambda shown: "| 2/100" in log_of(view))
    with no_toast():  # the message box says it, once
        refused = outputs(panel.delete(view))
    assert refused["message"].startswith(f"Job {job_id} is running;") and refused["view"] is view
    assert (workspace.jobs / job_id).is_dir()

    outputs(panel.stop(view))
    stopped = tick_until(panel, view, lambda shown: shown["status"] == "stopped")
    assert stopped["result"] == "exit code 0"
    assert "selfcheck: stopped at step" in log_of(view)

    # A new page (or a restarted app: a new manager) re-attaches and shows the complete log.
    fresh = JobsPanel(AppContext(workspace, JobManager(workspace.jobs)))
    reattached = outputs(fresh.tick(SessionView())[:-1])
    assert reattached["view"].job_id == job_id and reattached["status"] == "stopped"
    assert reattached["log"] == log_of(view)

    rerun = outputs(panel.rerun(view))
    assert rerun["view"].job_id != job_id and rerun["status"] in ("queued", "running")
    outputs(panel.stop(rerun["view"]))
    tick_until(panel, rerun["view"], lambda shown: shown["status"] == "stopped")

    asked = outputs(panel.delete(view))  # the first press asks
    assert asked["message"].startswith(f"Press **Delete** again to delete job {job_id}")
    assert (workspace.jobs / job_id).is_dir()
    deleted = outputs(panel.delete(asked["view"]))
    assert deleted["message"] == f"Deleted job {job_id} and its folder."
    assert not (workspace.jobs / job_id).exists()
    assert [row[0] for row in deleted["table"]] == [rerun["view"].job_id]


def test_actions_without_a_selection_explain_what_to_do(workspace):
    panel = JobsPanel(AppContext(workspace, JobManager(workspace.jobs)))
    for action in (panel.stop, panel.rerun, panel.delete):
        with no_toast():  # the message box says it, once
            shown = outputs(action(SessionView()))
        assert shown["message"] == "No job is selected; click a row in the jobs table first."
