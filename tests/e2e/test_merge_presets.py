"""The Merge and EMA tabs' preset rows in a real browser: a merge's picks, strength and output dtype saved as a
preset come back into the form when the preset is loaded after the fields were changed (the preset is a MergeSettings
file in the workspace's presets/merge/ that the settings model reads back); an EMA preset's σ_rel comes back with the
checkpoint weights it gives, and the EMA tab does not offer the merge preset."""
from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from backend.compose.settings import MergeSettings
from backend.models.loading import load_transformer
from tests.demo_files import save_demo_lora
from tests.e2e.test_merge_ema_tabs import edit_cell, pick_files, power_weights_closed_form


def dtype(page: Page, value: str):
    return page.locator("#merge-dtype").get_by_label(value, exact=True)


def test_a_saved_merge_preset_puts_the_changed_fields_back(demo_workspace_copy: Path, start_app, open_page):
    ws = demo_workspace_copy
    loras = ws / "loras"
    model = load_transformer(ws / "models" / "demo-t2v")
    save_demo_lora(model, loras / "alice.safetensors", loraid=1, blocks_per_loraid=2, seed=1)
    save_demo_lora(model, loras / "bob.safetensors", loraid=3, blocks_per_loraid=2, seed=2)
    for step in (10, 20, 40):
        save_demo_lora(model, loras / f"run-step{step:06d}.safetensors", loraid=4, blocks_per_loraid=2, seed=step,
                       step=step)
    page = open_page(start_app(ws))
    page.get_by_role("tab", name="Merge", exact=True).click()

    pick_files(page, ["alice.safetensors", "bob.safetensors"])
    strength = page.locator('#merge-table [data-testid="cell-1-6"]')
    expect(page.locator("#merge-table")).to_contain_text("loras/bob.safetensors")
    edit_cell(page, "#merge-table", 1, 6, "0.7")
    dtype(page, "bf16").check()
    out = page.locator("#merge-out textarea")
    expect(out).not_to_have_value("")
    saved_out = out.input_value()
    page.locator("#merge-preset-name input").fill("soft bob")
    page.locator("#merge-preset-save").click()
    preset = ws / "presets" / "merge" / "soft bob.json"
    expect(page.locator("#merge-preset-message")).to_contain_text(f"Saved user preset soft bob ({preset})")
    settings = MergeSettings.load_file(preset)
    assert (settings.multiplier, settings.dtype) == ([1.0, 0.7], "bf16")

    edit_cell(page, "#merge-table", 1, 6, "1.5")  # the user changes the form after saving
    dtype(page, "fp16").check()
    out.fill(str(ws / "outputs" / "merged" / "other.safetensors"))
    expect(dtype(page, "fp16")).to_be_checked()

    page.locator("#merge-preset input").click()
    page.get_by_role("option", name="soft bob (user)", exact=True).click()
    page.locator("#merge-preset-load").click()
    expect(page.locator("#merge-preset-message")).to_have_text("Loaded preset soft bob.")
    expect(strength).to_contain_text("0.7")
    expect(dtype(page, "bf16")).to_be_checked()
    expect(out).to_have_value(str(Path(saved_out).resolve()))
    expect(page.locator("#merge-table")).to_contain_text("loras/alice.safetensors")

    page.get_by_role("tab", name="EMA", exact=True).click()
    page.locator("#ema-run input").click()
    page.get_by_role("option", name="run: 3 files in loras/").click()
    sigma, last_weight = page.locator("#ema-sigma-rel input"), page.locator('#ema-checkpoints [data-testid="cell-2-3"]')
    sigma.fill("0.1")
    sigma.press("Enter")
    narrow = f"{power_weights_closed_form([10, 20, 40], 0.1)[-1]:.6f}".rstrip("0")
    expect(last_weight).to_have_text(narrow)
    page.locator("#ema-preset-name input").fill("narrow")
    page.locator("#ema-preset-save").click()
    expect(page.locator("#ema-preset-message")).to_contain_text("Saved user preset narrow")
    sigma.fill("0.25")
    sigma.press("Enter")
    expect(last_weight).not_to_have_text(narrow)

    page.locator("#ema-preset input").click()
    expect(page.get_by_role("option", name="narrow (user)", exact=True)).to_be_visible()
    expect(page.get_by_role("option", name="soft bob (user)", exact=True)).to_have_count(0)  # a merge preset
    page.get_by_role("option", name="narrow (user)", exact=True).click()
    page.locator("#ema-preset-load").click()
    expect(page.locator("#ema-preset-message")).to_have_text("Loaded preset narrow.")
    expect(sigma).to_have_value("0.1")
    expect(last_weight).to_have_text(narrow)
