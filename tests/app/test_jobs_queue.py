"""The Jobs tab's queue and history handlers with real job processes: filters, reorder, cancel, a job's settings
and events, and "Open in Train tab" (saved as a preset) for a training job."""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import gradio as gr
import pytest

from backend.config.presets import PresetStore
from backend.jobs import JobManager
from backend.train.settings import TrainSettings
from backend.workspace import Workspace
from ui.context import AppContext
from ui.tabs.jobs import TABLE_HEADERS, JobsPanel, SessionView, selfcheck_argv
from tests.app.toasts import no_toast

OUT = ["view", "table", "status", "result", "folder", "command", "log", "message"]
QUICK = [sys.executable, "-c", "print('quick job')"]


def shown(values: tuple) -> dict:
    return dict(zip(OUT, values, strict=True))


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    return ws


def wait_for(predicate, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not reached within {timeout_s} s")


def test_filters_queue_order_cancel_and_details(workspace):
    manager = JobManager(workspace.jobs, max_concurrent=1)
    panel = JobsPanel(AppContext(workspace, manager))
    blocker = manager.submit(selfcheck_argv(400, 0.05), kind="selfcheck", title="blocker",
                             settings={"steps": 400, "interval": 0.05})
    first = manager.submit(QUICK, kind="quick", title="first")
    second = manager.submit(QUICK, kind="quick", title="second")
    try:
        queued = shown(panel.filter(SessionView(), "quick", "queued"))
        view = queued["view"]
        assert [(row[0], row[TABLE_HEADERS.index("queue")]) for row in queued["table"]] == [(second.id, "2"), (first.id, "1")]
        assert view.job_id == second.id  # the newest shown job is selected

        moved = shown(panel.move_up(view))
        assert moved["message"] == f"Job {second.id} is now number 1 of 2 in the queue."
        assert [(row[0], row[TABLE_HEADERS.index("queue")]) for row in moved["table"]] == [(second.id, "1"), (first.id, "2")]
        with no_toast():  # the message box says it, once
            refused = shown(panel.move_down(SessionView.of(blocker.id)))
        assert refused["message"].startswith(f"Job {blocker.id} is running")
        assert "only queued jobs can be moved" in refused["message"]

        cancelled = shown(panel.cancel(SessionView.of(first.id, view)))
        assert cancelled["message"] == f"Cancelled queued job {first.id}; it will not start."
        assert [row[0] for row in cancelled["table"]] == [second.id]  # still filtered to queued
        assert [row[0] for row in shown(panel.filter(view, "quick", "cancelled"))["table"]] == [first.id]
        assert [row[1] for row in shown(panel.filter(view, "all", "all"))["table"]] == ["quick", "quick",
                                                                                        "selfcheck"]

        wait_for(lambda: '"event": "progress"' in panel.details(SessionView.of(blocker.id))[2])
        page_view = SessionView.of(blocker.id)
        _, settings, events = panel.details(page_view)
        assert json.loads(settings) == {"steps": 400, "interval": 0.05}
        assert all(json.loads(line)["event"] for line in events.splitlines())
        _, settings_again, _ = panel.details(page_view)  # the page shows them already: not sent again
        assert isinstance(settings_again, type(gr.skip()))
    finally:
        manager.stop(blocker.id, grace_s=2)
        wait_for(lambda: manager.get(blocker.id).is_finished)
        wait_for(lambda: manager.get(second.id).is_finished)
    assert manager.get(second.id).status == "succeeded" and manager.get(first.id).started is None


def test_open_a_training_job_as_a_preset(workspace):
    manager = JobManager(workspace.jobs)
    panel = JobsPanel(AppContext(workspace, manager))
    settings = TrainSettings(network_type="dora", loraid=2, max_train_steps=12, output_name="from-job")
    train_job = manager.submit(QUICK, kind="train", title="Train from-job", settings=settings.model_dump(mode="json"))
    other = manager.submit(QUICK, kind="selfcheck", title="not training", settings={"steps": 3})
    wait_for(lambda: manager.get(other.id).is_finished)

    saved = shown(panel.open_as_preset(SessionView.of(train_job.id), ""))
    assert saved["message"].startswith(f"Saved job {train_job.id}'s settings as user preset `job-{train_job.id}`")
    store = PresetStore(workspace.presets, TrainSettings)
    assert store.load(f"user:job-{train_job.id}") == settings
    named = shown(panel.open_as_preset(SessionView.of(train_job.id), "dora slice 2"))
    assert "`dora slice 2`" in named["message"] and store.load("user:dora slice 2") == settings

    with no_toast():  # the message box says it, once
        refused = shown(panel.open_as_preset(SessionView.of(other.id), "x"))
    assert refused["message"] == (f"Job {other.id} is a selfcheck job; only training jobs have settings the Train "
                                  "tab can load.")
    with no_toast():  # the message box says it, once
        assert "already exists" in shown(panel.open_as_preset(SessionView.of(train_job.id), "dora slice 2"))["message"]
    assert sorted(p.name for p in workspace.presets.iterdir()) == ["dora slice 2.json", f"job-{train_job.id}.json"]

    *outputs, opened, tabs = panel.open_in_train(SessionView.of(train_job.id), "")  # again: its own preset replaced
    assert shown(tuple(outputs))["message"] == (f"Opened job {train_job.id}'s settings in the Train tab (saved as "
                                                f"user preset `job-{train_job.id}`).")
    assert (opened["key"], opened["job"]) == (f"user:job-{train_job.id}", train_job.id)
    assert tabs.selected == "train"  # the page switches to the Train tab, whose form loads opened["key"]
    *_, again, _ = panel.open_in_train(SessionView.of(train_job.id), "")
    assert again != opened  # a second open changes the value, so the Train tab loads it again
    with no_toast():  # the message box says it, once
        *outputs, opened, tabs = panel.open_in_train(SessionView.of(other.id), "")
    assert "only training jobs" in shown(tuple(outputs))["message"]
    assert isinstance(opened, type(gr.skip())) and isinstance(tabs, type(gr.skip()))


def test_a_running_job_shows_its_moving_count_in_the_table(workspace):
    manager = JobManager(workspace.jobs)
    panel = JobsPanel(AppContext(workspace, manager))
    job = manager.submit(selfcheck_argv(400, 0.05), kind="selfcheck", title="counting",
                         settings={"steps": 400, "interval": 0.05})
    column = TABLE_HEADERS.index("progress")
    try:
        def count() -> int:
            cell = shown(panel.tick(SessionView())[:-1])["table"][0][column]
            match = re.match(r"(\d+)/400 \(\d+%\)", cell)
            return int(match.group(1)) if match else 0

        first = wait_for(count)
        assert wait_for(lambda: count() > first)  # it moves
    finally:
        manager.stop(job.id, grace_s=2.0)

    def ended() -> bool:
        manager.refresh()
        return manager.get(job.id).is_finished

    wait_for(ended)
    assert shown(panel.tick(SessionView())[:-1])["table"][0][column] == ""  # finished: no count left behind
