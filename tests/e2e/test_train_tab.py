"""The Train tab in a real browser, on its own workspace: load the LoRA preset, switch to DoRA and see the
network_args lines change, train LORAID 1 for a few steps, watch the loss chart get points, and find the LoRA file
in loras/ when the job has finished."""
from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "screenshot-train.png"
STEPS = 4
SLOW = 20_000  # ms: the machine may be busy; every check below still has to come true


def cache_concept_a(workspace: Path) -> None:
    """What the Dataset tab's cache jobs do, in-process: VAE latents and text outputs of concept A."""
    from backend.data import encoders
    from backend.data.cache import cache_latents, cache_text
    from backend.data.dataset_config import load_dataset_config
    from backend.workspace import Workspace

    ws = Workspace(workspace)
    config = load_dataset_config(ws.demo_dataset / "concept_a" / "dataset.toml")
    cache_latents(config, encoders.load_vae(ws.vae), model_id=encoders.model_fingerprint(ws.vae), log=lambda *_: None)
    tokenizer, text_encoder = encoders.load_text_encoder(ws.text_encoder, ws.tokenizer)
    cache_text(config, tokenizer, text_encoder, model_id=encoders.model_fingerprint(ws.text_encoder, ws.tokenizer),
               log=lambda *_: None)


def pick(page: Page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def open_group(page: Page, name: str) -> None:
    page.locator(f"#train-group-{name}").get_by_role("button", name=name).click()


def test_train_tab_preset_dora_and_a_short_run(demo_workspace_copy: Path, start_app, browser):
    cache_concept_a(demo_workspace_copy)
    server = start_app(demo_workspace_copy)
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(server.url)
        page.get_by_role("tab", name="Train", exact=True).click()
        pick(page, "train-preset", "lora (shipped)")
        page.locator("#train-preset-load").click()
        expect(page.locator("#train-preset-message")).to_contain_text("Loaded preset lora.", timeout=SLOW)
        expect(page.locator("#train-network_type input")).to_have_value("lora", timeout=SLOW)
        network_args = page.locator("#train-network-args")
        expect(network_args).not_to_contain_text("use_dora", timeout=SLOW)

        pick(page, "train-net-recipe", "DoRA")
        expect(page.locator("#train-network_type input")).to_have_value("dora", timeout=SLOW)
        expect(network_args).to_contain_text("use_dora=True", timeout=SLOW)

        pick(page, "train-loraid", "1: blocks 0-1 (free)")
        allocation = page.locator("#train-loraid-allocation")
        expect(allocation).to_contain_text("LORAID 1 owns blocks 0-1", timeout=SLOW)
        expect(network_args).to_contain_text(r"include_patterns=[r'blocks\.(0|1)\..*']", timeout=SLOW)
        open_group(page, "Training")
        page.locator("#train-max_train_steps input").fill(str(STEPS))
        open_group(page, "Logging")
        page.locator("#train-log_every_n_steps input").fill("1")
        page.locator("#train-network_dim input").fill("0")
        page.locator("#train-network_dim input").blur()
        rank_error = page.locator("#train-network_dim-error")
        expect(rank_error).to_contain_text("Rank (network_dim) is 0", timeout=SLOW)
        page.locator("#train-network_dim input").fill("16")

        page.locator("#train-start").click()
        expect(page.locator("#train-run-message")).to_contain_text("Started training job", timeout=SLOW)
        expect(page.locator("#train-loss-chart")).to_contain_text(re.compile(r"Loss \([1-9]\d* steps\)"),
                                                                  timeout=60_000)
        progress = page.locator("#train-progress .train-progress")
        expect(progress).to_have_attribute("data-status", "succeeded", timeout=60_000)
        expect(progress).to_have_attribute("data-step", str(STEPS), timeout=SLOW)
        chart = page.locator("#train-loss-chart")
        expect(chart).to_contain_text(f"Loss ({STEPS} steps)", timeout=SLOW)
        expect(chart.locator('[aria-roledescription="point"]')).to_have_count(2 * STEPS, timeout=SLOW)  # loss, avg
        saved = re.compile(r"saved .*lora\.safetensors")
        expect(page.locator("#train-log textarea")).to_have_value(saved, timeout=SLOW)
        lora = demo_workspace_copy / "loras" / "lora.safetensors"
        assert lora.is_file()
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    finally:
        context.close()
