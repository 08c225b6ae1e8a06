"""The Merge and EMA tabs in a real browser, on a workspace of their own: an overlapping pick is warned about before
running; two demo LoRAs on disjoint LORAIDs are merged into the demo DiT as a job (one strength edited in the table)
and the file equals a merge done directly through the backend; then post-hoc EMA over a run's three checkpoints runs
as a job, its weights shown before running equal the closed form, and the EMA LoRA appears in loras/. Both tabs show
their job's count in a bar (the merge's while the job is paused), and refuse a bad output name, an empty output and
an out-of-range σ_rel beside the field."""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import torch
from playwright.sync_api import Page, expect
from safetensors import safe_open
from safetensors.torch import load_file

from backend.compose.merge_dit import merge_into_dit
from backend.models.loading import load_transformer
from tests.demo_files import save_demo_lora
from tests.e2e.test_dataset_tab import frozen_at_first_progress
from ui.merge_ema_common import NOT_STARTED

REPO = Path(__file__).resolve().parents[2]
MERGE_SCREENSHOT = REPO / "docs" / "screenshot-merge.png"
EMA_SCREENSHOT = REPO / "docs" / "screenshot-ema.png"
STALL_S = 120  # a job whose count has not moved for this long is stuck (a busy machine is slower, not stuck)


def pick_files(page: Page, names: list[str]) -> None:
    dropdown = page.locator("#merge-files")
    for name in names:
        dropdown.locator("input").click()
        page.get_by_role("option", name=name, exact=True).click()
    dropdown.locator("input").press("Escape")


def edit_cell(page: Page, table: str, row: int, column: int, text: str) -> None:
    cell = page.locator(f'{table} [data-testid="cell-{row}-{column}"]')
    cell.dblclick()
    page.keyboard.press("Control+A")
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    expect(cell).to_contain_text(text)


def wait_for_job(page: Page, status: str, bar: str) -> str:
    """The job's final status line, waited for while the count in its progress bar keeps moving: a busy machine
    makes the wait longer, and only a count that stops moving for STALL_S fails the test."""
    last, since = None, time.monotonic()
    while True:
        text = page.locator(status).inner_text()
        if "succeeded" in text or "ended" in text:
            return text
        shown = page.locator(bar)
        step = shown.get_attribute("data-step") if shown.count() else None
        if step != last:
            last, since = step, time.monotonic()
        assert time.monotonic() - since < STALL_S, f"the job's count stayed at {step} for {STALL_S} s: {text}"
        page.wait_for_timeout(250)


def dismiss_toasts(page: Page) -> None:
    """Close the warning toasts of refused runs, so the screenshot shows the tab."""
    for button in page.locator(".toast-close").all():
        button.click()
    expect(page.locator(".toast-close")).to_have_count(0)


def power_weights_closed_form(steps: list[int], sigma_rel: float) -> list[float]:
    """EDM2: γ is the largest real root of γ³ + 7γ² + (16 − σ⁻²)γ + (12 − σ⁻²); w_i by the segment form."""
    s = sigma_rel ** -2
    low, high = 0.0, 100.0  # the cubic is increasing past its largest root: bisect for it
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if mid ** 3 + 7 * mid ** 2 + (16 - s) * mid + (12 - s) < 0 else (low, mid)
    gamma = low
    last = steps[-1]
    cumulative = [0.0] + [(step / last) ** (gamma + 1) for step in steps]
    return [b - a for a, b in zip(cumulative, cumulative[1:])]


def test_merge_and_ema_tabs_run_jobs(demo_workspace_copy: Path, start_app, open_page):
    ws = demo_workspace_copy
    loras = ws / "loras"
    base = ws / "models" / "demo-t2v" / "transformer.safetensors"
    model = load_transformer(ws / "models" / "demo-t2v")
    save_demo_lora(model, loras / "alice.safetensors", loraid=1, blocks_per_loraid=2, seed=1)  # blocks 0-1
    save_demo_lora(model, loras / "bob.safetensors", loraid=3, blocks_per_loraid=2, seed=2)  # blocks 4-5
    save_demo_lora(model, loras / "carol.safetensors", loraid=2, blocks_per_loraid=3, seed=3)  # blocks 3-5
    steps = [10, 20, 40]
    for step in steps:
        save_demo_lora(model, loras / f"run-step{step:06d}.safetensors", loraid=4, blocks_per_loraid=2,
                       seed=100 + step, step=step)
    server = start_app(ws)

    page = open_page(server)
    page.get_by_role("tab", name="Merge", exact=True).click()
    pick_files(page, ["bob.safetensors", "carol.safetensors"])
    overlap = page.locator("#merge-overlap")
    expect(overlap).to_contain_text("bob.safetensors and carol.safetensors both change blocks 4-5")
    page.locator("#merge-run").click()
    expect(page.locator("#merge-status")).to_contain_text("tick “Allow overlap” to merge them anyway")
    assert not (ws / "outputs" / "merged").exists()

    page.locator("#merge-files").get_by_role("button", name="Clear").click()
    pick_files(page, ["alice.safetensors", "bob.safetensors"])
    table = page.locator("#merge-table")
    expect(page.locator('#merge-table [data-testid="cell-0-4"]')).to_contain_text("blocks 0-1")
    expect(page.locator('#merge-table [data-testid="cell-1-3"]')).to_contain_text("3")
    expect(table).to_contain_text("loras/bob.safetensors")
    expect(overlap).to_contain_text("No overlap")
    edit_cell(page, "#merge-table", 1, 6, "0.7")
    out = ws / "outputs" / "merged" / "demo-t2v+alice+bob.safetensors"
    out_box = page.locator("#merge-out textarea")
    expect(out_box).to_have_value(str(out))
    out_box.fill(str(out.with_name("bad*name.safetensors")))  # a name no system takes is refused at the field
    out_box.blur()
    expect(page.locator("#merge-out-error")).to_contain_text("The output file name bad*name contains *")
    page.locator("#merge-run").click()
    expect(page.locator("#merge-status")).to_have_text(NOT_STARTED)
    out_box.fill(str(out))
    out_box.blur()
    expect(page.locator("#merge-out-error")).to_be_hidden()
    page.locator("#merge-run").click()
    expect(page.locator("#merge-status")).to_contain_text(re.compile(r"Job \S+: (queued|running)"))
    bar = page.locator("#merge-progress .compose-progress")
    with frozen_at_first_progress(ws / "jobs", total=10 ** 6) as step:  # the count shows while the job cannot move
        expect(bar).to_have_attribute("data-step", str(step))
    assert "succeeded" in wait_for_job(page, "#merge-status", "#merge-progress .compose-progress")
    total = bar.get_attribute("data-total")
    assert int(total) > step
    expect(bar).to_have_attribute("data-step", total)
    summary = page.locator("#merge-summary")
    expect(summary).to_contain_text("Merged 2 LoRAs into transformer.safetensors")
    expect(summary).to_contain_text("bob.safetensors × 0.7: LORAID 3")
    expect(summary).to_contain_text("LORAIDs: 1, 3")
    expect(summary).to_contain_text("which the Generate tab lists in its model choice")
    dismiss_toasts(page)
    page.screenshot(path=str(MERGE_SCREENSHOT), full_page=True)

    merged, original = load_file(out), load_file(base)
    independent = ws / "independent.safetensors"
    merge_into_dit(base, [loras / "alice.safetensors", loras / "bob.safetensors"], [1.0, 0.7], independent)
    reference = load_file(independent)
    assert merged.keys() == original.keys() == reference.keys()
    for key in original:
        assert torch.equal(merged[key], reference[key]), key
        touched = key.startswith(("blocks.0.", "blocks.1.", "blocks.4.", "blocks.5.")) and \
            key.split(".")[2] in ("self_attn", "cross_attn", "ffn") and key.endswith(".weight") and \
            not key.split(".")[3].startswith("norm")
        assert torch.equal(merged[key], original[key]) != touched, key

    page.get_by_role("tab", name="EMA", exact=True).click()
    page.locator("#ema-run input").click()
    page.get_by_role("option", name="run: 3 files in loras/").click()
    checkpoints = page.locator("#ema-checkpoints")
    expected = power_weights_closed_form(steps, 0.2)
    for row, (step, weight) in enumerate(zip(steps, expected)):
        expect(checkpoints.locator(f'[data-testid="cell-{row}-2"]')).to_have_text(str(step))
        expect(checkpoints.locator(f'[data-testid="cell-{row}-3"]')).to_have_text(f"{weight:.6f}".rstrip("0"))
    ema_out = loras / "run-ema.safetensors"
    expect(page.locator("#ema-out textarea")).to_have_value(str(ema_out))
    # an out-of-range σ_rel and an empty output: each said beside its field, σ_rel's as soon as it is typed
    sigma = page.locator("#ema-sigma-rel input")
    sigma.fill("0.5")
    sigma.press("Enter")
    expect(page.locator("#ema-sigma-rel-error")).to_contain_text("σ_rel (sigma_rel) must be between 0 and 1/√12")
    page.locator("#ema-out textarea").fill("")
    page.locator("#ema-run-button").click()
    expect(page.locator("#ema-status")).to_have_text(NOT_STARTED)
    expect(page.locator("#ema-out-error")).to_contain_text("The output path is empty")
    expect(page.locator("#ema-sigma-rel-error")).to_contain_text("must be between 0 and 1/√12")
    assert "--" not in page.locator("#ema-out-error").inner_text() + page.locator("#ema-status").inner_text()
    sigma.fill("0.2")
    sigma.press("Enter")
    expect(page.locator("#ema-sigma-rel-error")).to_be_hidden()
    page.locator("#ema-out textarea").fill(str(ema_out))
    page.locator("#ema-space").get_by_label("delta").check()
    page.locator("#ema-run-button").click()
    assert "succeeded" in wait_for_job(page, "#ema-status", "#ema-progress .compose-progress")
    ema_bar = page.locator("#ema-progress .compose-progress")
    expect(ema_bar).to_have_attribute("data-status", "succeeded")
    assert int(ema_bar.get_attribute("data-total")) > 0
    expect(ema_bar).to_have_attribute("data-step", ema_bar.get_attribute("data-total"))
    ema_summary = page.locator("#ema-summary")
    expect(ema_summary).to_contain_text("Post-hoc EMA of 3 checkpoints: power EMA, σ_rel 0.2")
    expect(ema_summary).to_contain_text("delta space")
    expect(ema_summary).to_contain_text("Largest relative truncation error")
    expect(ema_summary).to_contain_text("run-ema.safetensors is in loras/")
    dismiss_toasts(page)
    page.screenshot(path=str(EMA_SCREENSHOT), full_page=True)
    with safe_open(str(ema_out), "pt") as handle:
        record = json.loads(handle.metadata()["loraid_studio.ema"])
    assert [c["step"] for c in record["checkpoints"]] == steps
    assert all(math.isclose(c["weight"], w, abs_tol=1e-9) for c, w in zip(record["checkpoints"], expected))
