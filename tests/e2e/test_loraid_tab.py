"""The LORAID tab in a real browser: two demo LoRAs on disjoint IDs show both owners and no conflict; an
overlapping pair shows the conflict naming the shared block; a wrong allocation value or report option is
refused beside its field; the interference report runs as a job with a bar counting its measurements."""
from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from backend.jobs import JobManager
from backend.models.loading import load_transformer
from tests.demo_files import save_demo_lora
from tests.e2e.conftest import wait_while_moving
from tests.e2e.test_dataset_tab import frozen_at_first_progress

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "screenshot-loraid.png"


def pick_files(page: Page, names: list[str]) -> None:
    dropdown = page.locator("#loraid-files")
    for name in names:
        dropdown.locator("input").click()
        page.get_by_role("option", name=name, exact=True).click()
    page.locator("#loraid-files").locator("input").press("Escape")


def clear_files(page: Page) -> None:
    page.locator("#loraid-files").get_by_role("button", name="Clear").click()  # gradio's "remove all" control


def test_loraid_tab_shows_owners_and_conflicts(demo_workspace_copy: Path, start_app, open_page):
    loras = demo_workspace_copy / "loras"
    model = load_transformer(demo_workspace_copy / "models" / "demo-t2v")
    save_demo_lora(model, loras / "alice.safetensors", loraid=1, blocks_per_loraid=2, seed=1)  # blocks 0-1
    save_demo_lora(model, loras / "bob.safetensors", loraid=3, blocks_per_loraid=2, seed=2)  # blocks 4-5
    save_demo_lora(model, loras / "carol.safetensors", loraid=2, blocks_per_loraid=3, seed=3)  # blocks 3-5
    server = start_app(demo_workspace_copy)

    page = open_page(server)
    page.get_by_role("tab", name="LORAID", exact=True).click()
    grid = page.locator("#loraid-grid")
    # the allocation of the demo T2V: 8 blocks, 2 per ID -> IDs 1-4; block 5 belongs to ID 3
    expect(grid.locator('td[data-block="5"][data-kind="ffn.2"]')).to_have_attribute("data-owners", "ID 3")
    expect(grid.locator(".bm-owner")).to_have_count(4)
    expect(page.locator("#loraid-capacity")).to_contain_text("blocks 6-7")

    page.locator("#loraid-id").locator("input").click()
    page.get_by_role("option", name="3", exact=True).click()
    expect(page.locator("#loraid-network-args")).to_contain_text(r"include_patterns=[r'blocks\.(4|5)\..*']")
    expect(page.locator("#loraid-cli-args textarea")).to_have_value(
        re.compile(r"^--loraid 3 --blocks_per_loraid 2\n--network_args "))

    # a wrong allocation value says why beside its own field, clears the arguments it made stale, and goes when fixed
    blocks, cli = page.locator("#loraid-k input"), page.locator("#loraid-cli-args textarea")
    blocks.fill("9")
    expect(page.locator("#loraid-k-error")).to_have_text(
        "⚠ Blocks per LORAID (blocks_per_loraid) is 9; it must be from 1 to 8 (tiny demo T2V has 8 blocks).")
    expect(cli).to_have_value("")
    expect(page.locator("#loraid-rank-error")).to_be_hidden()
    blocks.fill("2")
    expect(page.locator("#loraid-k-error")).to_be_hidden()
    expect(cli).to_have_value(re.compile(r"^--loraid 3 --blocks_per_loraid 2\n"))

    pick_files(page, ["alice.safetensors", "bob.safetensors"])
    conflicts, file_grid = page.locator("#loraid-conflicts"), page.locator("#loraid-file-grid")
    expect(conflicts).to_contain_text("No conflict")
    expect(file_grid.locator('td[data-block="0"][data-kind="self_attn.q"]')).to_have_attribute(
        "data-owners", "alice.safetensors")
    expect(file_grid.locator('td[data-block="5"][data-kind="ffn.0"]')).to_have_attribute(
        "data-owners", "bob.safetensors")
    expect(file_grid.locator('td[data-block="3"][data-kind="ffn.0"]')).to_have_attribute("data-owners", "")
    expect(file_grid.locator("td.bm-conflict")).to_have_count(0)

    clear_files(page)
    pick_files(page, ["bob.safetensors", "carol.safetensors"])
    expect(conflicts).to_contain_text("CONFLICT: bob.safetensors and carol.safetensors both change blocks 4-5")
    expect(file_grid.locator('td[data-block="4"][data-kind="self_attn.q"]')).to_have_attribute(
        "data-owners", "bob.safetensors|carol.safetensors")
    expect(file_grid.locator('td[data-block="3"][data-kind="self_attn.q"]')).to_have_attribute(
        "data-owners", "carol.safetensors")
    expect(file_grid.locator("td.bm-conflict")).to_have_count(2 * 10)  # blocks 4 and 5, every module kind

    page.locator("#loraid-file-paths textarea").fill("loras/missing.safetensors")
    expect(conflicts).to_contain_text("missing.safetensors does not exist")
    page.locator("#loraid-file-paths textarea").fill("")
    expect(conflicts).to_contain_text("CONFLICT: bob.safetensors and carol.safetensors")

    # a report option the job cannot take is refused beside it, in the page's words, and starts nothing
    probes = page.locator("#loraid-report-probes input")
    probes.fill("0")
    page.locator("#loraid-report-run").click()
    expect(page.locator("#loraid-report-probes-error")).to_have_text("⚠ Probe inputs is 0; it must be at least 1.")
    expect(page.locator("#loraid-report-status")).to_have_text("Not started: fix the report option marked ⚠ above.")
    probes.fill("2")
    expect(page.locator("#loraid-report-probes-error")).to_be_hidden()

    # the report runs as a job whose bar counts its measurements: one per pair in weight space, two in function space
    page.locator("#loraid-report-run").click()
    bar = page.locator("#loraid-report-progress .report-progress")
    with frozen_at_first_progress(demo_workspace_copy / "jobs", total=3) as step:  # however fast the machine
        expect(bar).to_have_attribute("data-step", str(step))
        expect(bar).to_have_attribute("data-total", "3")
        expect(page.locator("#loraid-report-status")).to_contain_text(f"running… {step}/3")
        page.get_by_role("tab", name="Jobs", exact=True).click()  # the Jobs table counts it too
        expect(page.locator("#jobs-table")).to_contain_text(f"{step}/3")
        page.get_by_role("tab", name="LORAID", exact=True).click()
    manager = JobManager(demo_workspace_copy / "jobs")
    report_job = manager.list()[0].id  # the workspace's only job
    wait_while_moving(manager, report_job, lambda: manager.get(report_job).is_finished)  # however busy the machine
    expect(page.locator("#loraid-report-status")).to_contain_text("finished")
    expect(bar).to_have_attribute("data-total", "3")
    expect(bar).to_have_attribute("data-step", "3")
    expect(bar).to_contain_text("3/3 (100%)")
    report = page.locator("#loraid-report textarea")
    expect(report).to_have_value(re.compile(r"bob\.safetensors / carol\.safetensors: 20 shared "
                                                          r"modules in blocks 4-5"))
    expect(report).to_have_value(re.compile("cross-talk on"))
    # the verdict first: the pair that shares weights, and the largest cross-talk judged on the stated bounds
    expect(report).to_have_value(re.compile(r"Verdict\n  1 pair\(s\) change the same weights \(bob\.safetensors / "
                                            r"carol\.safetensors\)"))
    expect(report).to_have_value(re.compile(r"Largest cross-talk: \S+ on \S+, [0-9.e+-]+ \(small under 0\.1, "
                                            r"noticeable under 0\.5, large from 0\.5\): (small|noticeable|large): "))
    page.screenshot(path=str(SCREENSHOT), full_page=True)
