"""The newcomer's first look, in a real browser: seven tabs, a self-check job that streams its log and stops."""
from __future__ import annotations

import re

from playwright.sync_api import Page, expect

TAB_LABELS = ["Dataset", "Train", "LORAID", "Merge", "EMA", "Generate", "Jobs"]
PROGRESS_BAR = re.compile(r"selfcheck +\d+%\|[# ]*\| (\d+)/(\d+)")  # backend.jobs.selfcheck.progress_bar


def field(page: Page, elem_id: str):
    return page.locator(f"#{elem_id}").locator("textarea, input").first


def test_tabs_self_check_streams_and_stops(page: Page, app_server, screenshot_path):
    tabs = page.get_by_role("tab")
    expect(tabs).to_have_text(TAB_LABELS)
    expect(page.locator("#system-status")).to_contain_text("RAM")

    page.get_by_role("tab", name="Jobs", exact=True).click()
    page.get_by_role("button", name="Run self-check").click()

    status, log = field(page, "job-status"), field(page, "job-log")
    expect(status).to_have_value("running")
    expect(log).to_have_value(PROGRESS_BAR)
    first_step = int(PROGRESS_BAR.search(log.input_value()).group(1))
    page.wait_for_function(
        "([selector, before]) => { const m = document.querySelector(selector).value.match(/\\| (\\d+)\\/\\d+/);"
        " return m !== null && Number(m[1]) > before; }",
        arg=["#job-log textarea", first_step])
    # the bar is redrawn with \r every step: the log shows only its latest state, on one line
    assert len(PROGRESS_BAR.findall(log.input_value())) == 1
    job_folder = field(page, "job-folder").input_value()
    assert job_folder.startswith(str(app_server.workspace / "jobs"))

    page.get_by_role("button", name="Stop").click()
    expect(status).to_have_value("stopped")
    expect(log).to_have_value(re.compile(r"selfcheck: stopped at step \d+ of 100"))  # cooperative stop, not a kill
    expect(page.locator("#jobs-table")).to_contain_text("stopped")

    page.screenshot(path=str(screenshot_path), full_page=True)
