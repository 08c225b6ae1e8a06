"""The Generate tab in a real browser: two demo LoRAs on disjoint LORAIDs at multipliers 1.0 and 0.7 show no conflict,
a plain LoRA picked as the LoRA-MoE file and wrong settings are refused under their own fields (once, no toast), Run makes a demo video as a job, the gallery plays it (an H.264 mp4 the page loads), its settings record names both
LoRAs, and "Reuse these settings" brings back the prompt, the seed and the multipliers."""
from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import Page, expect

from backend.models.loading import load_transformer
from tests.demo_files import save_demo_lora

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "screenshot-generate.png"
PROMPT = "loraidA, a red ball bouncing on a wooden floor"


def pick_loras(page: Page, names: list[str]) -> None:
    picker = page.locator("#gen-loras")
    for name in names:
        picker.locator("input").click()
        page.get_by_role("option", name=re.compile(rf"^{re.escape(name)} ")).click()
    picker.locator("input").press("Escape")


def set_number(page: Page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Tab")


def test_generate_tab_makes_a_video_with_two_loraids_and_reuses_its_settings(demo_workspace_copy: Path, start_app,
                                                                           open_page):
    loras = demo_workspace_copy / "loras"
    model = load_transformer(demo_workspace_copy / "models" / "demo-t2v")
    save_demo_lora(model, loras / "alice.safetensors", loraid=1, seed=1)  # blocks 0-1
    save_demo_lora(model, loras / "bob.safetensors", loraid=3, seed=2)  # blocks 4-5
    server = start_app(demo_workspace_copy)

    page = open_page(server)
    page.get_by_role("tab", name="Generate", exact=True).click()
    expect(page.locator("#gen-model input")).to_have_value("Demo T2V (tiny demo T2V)")

    pick_loras(page, ["alice.safetensors", "bob.safetensors"])
    alice, bob = page.locator("#gen-lora-multiplier-0"), page.locator("#gen-lora-multiplier-1")
    expect(alice).to_contain_text("alice.safetensors multiplier")
    expect(alice).to_contain_text("LORAID 1 · blocks 0-1")
    expect(bob).to_contain_text("LORAID 3 · blocks 4-5")
    expect(page.locator("#gen-lora-multiplier-2")).to_be_hidden()
    expect(page.locator("#gen-lora-conflicts")).to_contain_text("No conflict: the 2 LoRAs change disjoint weights")
    set_number(page, "gen-lora-multiplier-1", "0.7")

    # the LoRA-MoE picker's fields are the settings model's, checked beside them: a plain LoRA is no LoRA-MoE file
    page.locator("#gen-moe").get_by_role("button", name="LoRA-MoE experts").click()
    moe_file, moe_error = page.locator("#gen-moe-file input"), page.locator("#gen-moe-file-error")
    moe_file.fill("loras/alice.safetensors")
    moe_file.press("Enter")
    expect(moe_error).to_have_text("⚠ alice.safetensors is not a LoRA-MoE file (no loraid_studio.lora_moe header); "
                                   "load it as an ordinary LoRA among the LoRA files (lora) instead.")
    moe_file.click()
    page.get_by_role("option", name="(no LoRA-MoE)", exact=True).click()
    expect(moe_error).to_be_hidden()

    page.locator("#gen-prompt textarea").fill(PROMPT)
    set_number(page, "gen-frames", "6")
    set_number(page, "gen-width", "32.5")
    frames_error, width_error = page.locator("#gen-frames-error"), page.locator("#gen-width-error")
    expect(frames_error).to_have_text("⚠ Frames (frames) = 6 is not 4n+1 (1, 5, 9, ..., 81); use 5 or 9.")
    expect(width_error).to_have_text("⚠ Width (width) must be a whole number, not 32.5.")  # not rounded to 32
    page.locator("#gen-run").click()  # refused: each problem stays said once, under its field
    expect(page.locator("#gen-status")).to_have_text("⚠ Not started: 2 settings need attention; each says why "
                                                     "beside it.")
    expect(page.get_by_text("is not 4n+1")).to_have_count(1)
    expect(page.locator(".toast-body")).to_have_count(0)
    for elem_id, value in (("gen-frames", "5"), ("gen-width", "32"), ("gen-height", "32"), ("gen-steps", "2"),
                           ("gen-seed", "7")):
        set_number(page, elem_id, value)
    expect(frames_error).to_be_hidden()
    expect(width_error).to_be_hidden()

    page.locator("#gen-run").click()
    status = page.locator("#gen-status")
    expect(status).to_contain_text(re.compile(r"Job \S+ succeeded: wrote \S+_7\.mp4"), timeout=90_000)
    expect(page.locator("#gen-progress progress")).to_have_attribute("data-step", "2")

    video = page.locator("#gen-gallery video[controls]")  # the gallery's preview player of the new result
    expect(video).to_have_attribute("src", re.compile(r"_7\.mp4$"))
    page.wait_for_function("v => v.readyState >= 1 && v.duration > 0", arg=video.element_handle())
    assert abs(video.evaluate("v => v.duration") - 5 / 16) < 0.05  # 5 frames at 16 fps
    served = page.request.get(video.get_attribute("src"))
    assert served.ok and served.headers["content-type"] == "video/mp4"
    assert served.body()[4:8] == b"ftyp"

    shown = page.locator("#gen-result-settings")
    expect(shown).to_contain_text(PROMPT)
    sidecar = next((demo_workspace_copy / "outputs").glob("*_7.json"))
    record = json.loads(sidecar.read_text())
    assert [(Path(item["path"]).name, item["multiplier"]) for item in record["loras"]] == [
        ("alice.safetensors", 1.0), ("bob.safetensors", 0.7)]
    assert (record["seed"], record["settings"]["frames"], record["lora_mode"]) == (7, 5, "merged")
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    page.locator("#gen-prompt textarea").fill("something else entirely")
    set_number(page, "gen-seed", "99")
    set_number(page, "gen-lora-multiplier-1", "0.2")
    page.locator("#gen-reuse").click()
    expect(page.locator("#gen-reuse-message")).to_contain_text("Filled the form with the settings of")
    expect(page.locator("#gen-prompt textarea")).to_have_value(PROMPT)
    expect(page.locator("#gen-seed input")).to_have_value("7")
    expect(page.locator("#gen-frames input")).to_have_value("5")
    expect(page.locator("#gen-lora-multiplier-1 input[type=number]")).to_have_value("0.7")
