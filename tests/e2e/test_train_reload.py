"""Reload the page while a training runs: the loss chart draws its lines at once (number axes, one point per logged
step, checked while the job is paused so the count cannot move), the form shows the running job's settings, and a
second Start asks before queuing another training. Afterwards the Jobs tab's "Open in Train tab" brings the job's
settings back into an edited form."""
from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from backend.jobs import JobManager
from backend.workspace import Workspace
from tests.demo_files import cache_concept_a
from tests.e2e.conftest import suspended

SHOTS = Path(__file__).resolve().parents[2] / "docs"
STEPS = 400  # far more than the test waits for: it stops the run itself
JOB_MS = 180_000  # a job on a busy machine; every check still has to come true


def pick(page: Page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def fill(page: Page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input:not([type=range])")
    box.fill(value)
    box.press("Tab")


def open_train(page: Page) -> None:
    page.get_by_role("tab", name="Train", exact=True).click()


def wait_for_step(page: Page, at_least: int) -> None:
    bar = page.locator("#train-progress .train-progress")
    page.wait_for_function("([el, n]) => Number(el.dataset.step) >= n", arg=[bar.element_handle(timeout=JOB_MS),
                                                                             at_least], timeout=JOB_MS)


def line_vertices(page: Page) -> list[int]:
    """The vertices of each line the loss chart's SVG draws (one per logged step of each series)."""
    paths = page.locator('#train-loss-chart path[aria-roledescription="line mark"]')
    return [len(re.findall(r"[ML]", d or "")) for d in paths.evaluate_all("ps => ps.map(p => p.getAttribute('d'))")]


def logged_steps(jobs: Path, job_id: str) -> int:
    """How many steps the job has logged (one loss point each)."""
    events, _ = JobManager(jobs).read_events(job_id, 0)
    return sum(1 for event in events if event["event"] == "step")


def clipped_axis_labels(page: Page, chart: str) -> list[str]:
    """The tick labels of a chart that the browser cuts: left of its drawing while the drawing clips, or left of the
    chart's own box."""
    return page.evaluate("""(chart) => {
        const svg = document.querySelector(`${chart} svg.marks`);
        const clips = getComputedStyle(svg).overflow !== "visible";
        const drawing = svg.getBoundingClientRect().left, box = document.querySelector(chart).getBoundingClientRect();
        return [...document.querySelectorAll(`${chart} .role-axis-label text`)].filter(t => {
            const r = t.getBoundingClientRect();
            return (clips && r.left < drawing - 0.5) || r.left < box.left - 0.5 || r.right > box.right + 0.5;
        }).map(t => t.textContent);
    }""", chart)


def test_reload_mid_run_shows_the_chart_and_the_jobs_settings(demo_workspace_copy: Path, start_app, open_page):
    cache_concept_a(Workspace(demo_workspace_copy))
    server = start_app(demo_workspace_copy)
    page = open_page(server)
    open_train(page)
    pick(page, "train-dataset_config", "datasets/demo/concept_a/dataset.toml")
    for group in ("Training", "Saving", "Logging"):
        page.locator(f"#train-group-{group}").get_by_role("button", name=group).click()
    page.locator("#train-output_name input").fill("reloaded-run")
    fill(page, "train-max_train_steps", str(STEPS))
    fill(page, "train-log_every_n_steps", "1")
    expect(page.locator("#train-validation")).not_to_contain_text("⚠")
    page.locator("#train-start").click()
    message = page.locator("#train-run-message")
    expect(message).to_contain_text(re.compile(r"Started training job \S+ "), timeout=JOB_MS)
    job_id = re.search(r"Started training job (\S+) ", message.inner_text()).group(1)
    wait_for_step(page, 2)

    page.reload()  # a fresh page: its chart is built from the page's first value, then fed the run's points
    page.get_by_role("tab", name="Jobs", exact=True).wait_for()
    open_train(page)
    for group in ("Training", "Saving"):
        page.locator(f"#train-group-{group}").get_by_role("button", name=group).click()
    expect(page.locator("#train-output_name input")).to_have_value("reloaded-run")
    expect(page.locator("#train-max_train_steps input:not([type=range])")).to_have_value(str(STEPS))
    expect(page.locator("#train-preset-message")).to_contain_text("the settings of training job")
    wait_for_step(page, 3)
    chart = page.locator("#train-loss-chart")
    expect(chart.locator('path[aria-roledescription="line mark"]')).to_have_count(2)  # loss and its average
    jobs = demo_workspace_copy / "jobs"
    with suspended(jobs, job_id):  # mid-run, held still: the reloaded chart must show every step logged so far
        logged = logged_steps(jobs, job_id)
        assert logged >= 2
        page.wait_for_function(f"""() => [...document.querySelectorAll(
            '#train-loss-chart path[aria-roledescription="line mark"]')].map(p => (p.getAttribute('d') || '')
            .match(/[ML]/g)?.length).join() === '{logged},{logged}'""", timeout=JOB_MS)
        assert line_vertices(page) == [logged, logged]  # a real line with one vertex per logged step, both series

    page.locator("#train-start").click()  # a second training while this one runs: asked first, nothing queued
    expect(page.locator("#train-run-message")).to_contain_text("Queue after it")
    expect(page.locator("#train-queue")).to_be_visible()

    page.locator("#train-stop").click()
    bar = page.locator("#train-progress .train-progress")
    expect(bar).to_have_attribute("data-status", "stopped", timeout=JOB_MS)
    stopped_at = int(bar.get_attribute("data-step"))
    expect(page.locator("#train-queue")).to_be_hidden()  # nothing runs any more: the question goes
    expect(chart).to_contain_text(f"Loss (step {stopped_at} of {STEPS})")
    page.wait_for_function(f"() => document.querySelectorAll('#train-loss-chart [aria-roledescription=\"point\"]')"
                           f".length === {2 * stopped_at}")
    assert line_vertices(page) == [stopped_at, stopped_at]
    expect(page.locator("#train-lr-chart .role-axis-label text").first).to_be_visible()
    assert clipped_axis_labels(page, "#train-lr-chart") == []  # e.g. "100µ" shown whole, not "00µ"
    assert clipped_axis_labels(page, "#train-loss-chart") == []
    page.locator("#train-group-Network").get_by_role("button", name="Network").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "train-run.png"))  # the run stays beside the form being edited
    assert not re.search(r"\d\.\d{5,}", chart.inner_text()), "the y axis lists raw loss values (categorical)"

    fill(page, "train-max_train_steps", "12")  # the form edited; the Jobs tab brings the job's settings back
    page.get_by_role("tab", name="Jobs", exact=True).click()
    newest = page.locator('#jobs-table [data-testid="cell-0-0"]')  # newest first: this workspace's only job
    expect(newest).to_have_text(job_id, timeout=JOB_MS)
    newest.click()
    expect(page.locator("#job-status input, #job-status textarea")).to_have_value("stopped", timeout=JOB_MS)
    page.locator("#jobs-open-preset").click()
    expect(page.get_by_role("tab", name="Train", exact=True)).to_have_attribute("aria-selected", "true",
                                                                              timeout=JOB_MS)  # the page switched
    expect(page.locator("#train-preset-message")).to_contain_text(f"The form shows the settings of job {job_id}",
                                                                  timeout=JOB_MS)
    expect(page.locator("#train-max_train_steps input:not([type=range])")).to_have_value(str(STEPS))
    expect(page.locator("#train-output_name input")).to_have_value("reloaded-run")


def test_bad_input_is_refused_next_to_its_field(page: Page):
    open_train(page)
    for group in ("Training", "Saving"):
        page.locator(f"#train-group-{group}").get_by_role("button", name=group).click()
    name = page.locator("#train-output_name input")
    name.fill("my lora/with*bad:chars")
    name.blur()
    expect(page.locator("#train-output_name-error")).to_contain_text("cannot hold path separators")
    fill(page, "train-max_train_steps", "2.5")
    expect(page.locator("#train-max_train_steps-error")).to_contain_text("2.5 is not a whole number")
    expect(page.locator("#train-validation")).to_contain_text("2 setting(s) need attention")
    name.fill("my-lora")
    name.blur()
    fill(page, "train-max_train_steps", "30")
    expect(page.locator("#train-output_name-error")).to_be_hidden()
    expect(page.locator("#train-max_train_steps-error")).to_be_hidden()
