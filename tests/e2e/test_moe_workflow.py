"""The LoRA-MoE workflow in a real browser: on the Train tab's LoRA-MoE mode, stage 1 trains a LoRA with
per-projection ranks on the last blocks of the demo A14B pair, the merge folds it into both experts, stage 2 trains
two experts (red / blue, labelled by the captions' tags) with a hint-supervised router; on the Generate tab the
expert picker shows the routing the router would choose for the prompt ("Show routing", before a run), then forces
"blue" on the merged pair and the result shows the routing it used. Waits on job progress."""
from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

JOB_MS = 240_000  # a job on a busy 2-core machine; the checks below still have to come true


def cache_demo_dataset(workspace: Path) -> None:
    from backend.data import encoders
    from backend.data.cache import cache_latents, cache_text
    from backend.data.dataset_config import load_dataset_config
    from backend.workspace import Workspace

    ws = Workspace(workspace)
    config = load_dataset_config(ws.demo_dataset / "dataset.toml")
    cache_latents(config, encoders.load_vae(ws.vae), model_id=encoders.model_fingerprint(ws.vae), log=lambda *_: None)
    tokenizer, text_encoder = encoders.load_text_encoder(ws.text_encoder, ws.tokenizer)
    cache_text(config, tokenizer, text_encoder, model_id=encoders.model_fingerprint(ws.text_encoder, ws.tokenizer),
               log=lambda *_: None)


def expected_routing(workspace: Path, prompt: str, steps: int) -> dict[str, str]:
    """`moe route` on the stage-2 file, computed here: per noise expert the mean gates as the picker prints them."""
    from backend.data import encoders
    from backend.moe.files import load_moe
    from backend.moe.route import denoising_timesteps, prompt_embedding, route_prompt
    from backend.workspace import Workspace

    ws = Workspace(workspace)
    tokenizer, text_encoder = encoders.load_text_encoder(ws.text_encoder, ws.tokenizer)
    routing = route_prompt(load_moe(ws.loras / "moe.safetensors"), prompt_embedding(text_encoder, tokenizer, prompt),
                           denoising_timesteps("unipc", 3.0, steps))
    return {label: ", ".join(f"{name} {value:.2f}" for name, value in part["mean"].items())
            for label, part in routing["transformers"].items()}


def wait_for_stage(page: Page, stage: str) -> None:
    bar = page.locator(f'#moe-progress div[data-stage="{stage}"]')
    expect(bar).to_have_attribute("data-status", re.compile("succeeded|failed|stopped"), timeout=JOB_MS)
    expect(bar).to_have_attribute("data-status", "succeeded")


def pick(page: Page, elem_id: str, option: str | re.Pattern) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=isinstance(option, str)).click()


def fill_number(page: Page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Tab")


def test_stage1_merge_stage2_and_a_hinted_generation(demo_workspace_copy: Path, start_app, open_page):
    cache_demo_dataset(demo_workspace_copy)
    server = start_app(demo_workspace_copy)
    page = open_page(server)
    page.get_by_role("tab", name="Train", exact=True).click()
    page.locator("#moe-panel").get_by_role("button", name="LoRA-MoE (two stages)").click()
    expect(page.locator("#moe-s1-blocks textarea, #moe-s1-blocks input").first).to_have_value("last 4")

    page.locator("#moe-s1-start").click()
    wait_for_stage(page, "stage1")
    lora = page.locator("#moe-merge-lora textarea, #moe-merge-lora input").first
    expect(lora).to_have_value(re.compile(r"moe-stage1-low_noise\.safetensors$"))

    page.locator("#moe-merge-start").click()
    wait_for_stage(page, "merge")
    merged = page.locator("#moe-s2-merged textarea, #moe-s2-merged input").first
    expect(merged).to_have_value(re.compile(r"moe-stage1-high_noise\.safetensors \| .*moe-stage1-low_noise\."))
    merged_dir = demo_workspace_copy / "outputs" / "merged"
    assert (merged_dir / "moe-stage1-high_noise.safetensors").is_file()
    assert (merged_dir / "moe-stage1-low_noise.safetensors").is_file()

    fill_number(page, "moe-s2-steps", "30")
    page.locator("#moe-s2-start").click()
    wait_for_stage(page, "stage2")
    expect(page.locator("#moe-status")).to_contain_text(re.compile(r"router agreement on \d+ held-out items"))
    expect(page.locator("#moe-status")).to_contain_text("moe.safetensors")
    assert (demo_workspace_copy / "loras" / "moe.safetensors").is_file()

    page.get_by_role("tab", name="Generate", exact=True).click()
    pick(page, "gen-model", re.compile(r"^Merged A14B pair: moe-stage1"))
    page.locator("#gen-moe").get_by_role("button", name="LoRA-MoE experts").click()
    box = page.locator("#gen-moe-file input")  # the file's path, typed (the option list re-renders as it opens)
    box.fill(str(demo_workspace_copy / "loras" / "moe.safetensors"))
    box.press("Enter")
    expect(page.locator("#gen-moe-experts")).to_contain_text("2 experts (red, blue)", timeout=JOB_MS)
    page.locator("#gen-prompt textarea").fill("loraidA, a red ball")
    for elem_id, value in (("gen-frames", "1"), ("gen-width", "32"), ("gen-height", "32"), ("gen-steps", "2"),
                           ("gen-seed", "5")):
        fill_number(page, elem_id, value)

    # before a run: the gates the router would choose for the prompt, as `moe route` computes them
    page.locator("#gen-moe-show-routing").click()
    route = page.locator("#gen-moe-route")
    expect(route).to_contain_text("the router would choose", timeout=JOB_MS)
    for label, line in expected_routing(demo_workspace_copy, "loraidA, a red ball", steps=2).items():
        expect(route).to_contain_text(f"{label}: {line}")
    pick(page, "gen-moe-hint", "blue")
    page.locator("#gen-moe-show-routing").click()
    expect(route).to_contain_text("forced to blue", timeout=JOB_MS)
    expect(route).to_contain_text("high: red 0.00, blue 1.00")
    expect(route).to_contain_text("low: red 0.00, blue 1.00")
    page.locator("#gen-run").click()
    expect(page.locator("#gen-status")).to_contain_text("succeeded", timeout=JOB_MS)
    routing = page.locator("#gen-moe-routing")  # filled once the new result is selected (a later event)
    expect(routing).to_contain_text("forced to blue", timeout=JOB_MS)
    expect(routing).to_contain_text("high: blue 1.00, red 0.00")
    expect(routing).to_contain_text("low: blue 1.00, red 0.00")
