"""Jobs outlive the app: kill the app while a job runs, start it again, and the page shows the same job,
still running, with its complete log; Stop still works."""
from __future__ import annotations

import re

from playwright.sync_api import Page, expect

STEP = re.compile(r"\| (\d+)/100 ")


def field(page: Page, elem_id: str):
    return page.locator(f"#{elem_id}").locator("textarea, input").first


def current_step(page: Page) -> int:
    match = STEP.search(field(page, "job-log").input_value())
    return int(match.group(1)) if match else 0


def wait_for_step_above(page: Page, step: int) -> None:
    page.wait_for_function(
        "([selector, before]) => { const m = document.querySelector(selector).value.match(/\\| (\\d+)\\/100 /);"
        " return m !== null && Number(m[1]) > before; }",
        arg=["#job-log textarea", step])


def test_running_job_survives_an_app_crash_and_restart(page: Page, start_app, demo_workspace_copy):
    first = start_app(demo_workspace_copy)
    page.goto(first.url)
    page.get_by_role("tab", name="Jobs", exact=True).click()
    page.get_by_role("button", name="Run self-check").click()
    expect(field(page, "job-status")).to_have_value("running")
    wait_for_step_above(page, 1)
    log_before = field(page, "job-log").input_value()
    job_folder = field(page, "job-folder").input_value()

    first.kill()
    second = start_app(demo_workspace_copy)
    page.goto(second.url)
    page.get_by_role("tab", name="Jobs", exact=True).click()

    expect(field(page, "job-folder")).to_have_value(job_folder)
    expect(field(page, "job-status")).to_have_value("running")
    wait_for_step_above(page, current_step(page))  # still making progress, unsupervised by the app
    log_after = field(page, "job-log").input_value()
    # Everything shown before the crash is still there (only the progress bar line has moved on).
    assert log_after.startswith(log_before.rsplit("\n", 1)[0])
    assert "selfcheck: job folder" in log_after

    page.get_by_role("button", name="Stop").click()
    expect(field(page, "job-status")).to_have_value("stopped")
