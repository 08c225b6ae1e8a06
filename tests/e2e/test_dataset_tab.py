"""The Dataset tab in a real browser, on its own copy of the demo workspace with one caption file removed: scan,
see the counts and the missing caption, fix it, preview and apply a trigger word, preview buckets, write the TOML
(a malformed edit is refused first, and a place outside the workspace until confirmed), and cache latents as a job
whose files appear on disk."""
from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import psutil
from playwright.sync_api import Page, expect

from backend.data.dataset_config import load_dataset_config

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "screenshot-dataset.png"
MISSING = "concept_a/images/a_002.png"
COUNTS_SEEN = """() => {  // every distinct count the cache bar shows, in order
  window.cacheCounts = [];
  const record = () => {
    const bar = document.querySelector('#dataset-cache-progress .cache-progress');
    const step = bar && Number(bar.dataset.step);
    if (bar && window.cacheCounts[window.cacheCounts.length - 1] !== step) window.cacheCounts.push(step);
  };
  new MutationObserver(record).observe(document.querySelector('#dataset-cache-progress'),
                                       {subtree: true, childList: true, attributes: true});
}"""


def the_running_job(manager, patience_s: float = 300):
    """The job the page just started, once its folder exists (a busy page may take a while to submit it)."""
    give_up = time.monotonic() + patience_s
    while True:
        running = [job for job in manager.list() if not job.is_finished]
        if running:
            return running[0]
        finished = [f"{job.id} {job.status}" for job in manager.list()]
        assert time.monotonic() < give_up, f"no job running {patience_s:.0f} s after the click; jobs: {finished}"
        time.sleep(0.005)


@contextlib.contextmanager
def frozen_at_first_progress(jobs: Path, total: int):
    """The running job paused (SIGSTOP on its processes) right after its first progress event short of `total`,
    yielding the step it last reported; resumed on exit. The page must show that count while the job cannot move."""
    from backend.jobs import JobManager

    manager = JobManager(jobs)
    job = the_running_job(manager)
    offset, step = 0, 0
    while step == 0:
        events, offset = manager.read_events(job.id, offset)
        step = max([e["step"] for e in events if e["event"] == "progress"], default=0)
        if step == 0 and manager.get(job.id).is_finished:  # one last read: what it wrote before it ended
            events, offset = manager.read_events(job.id, offset)
            assert not events, f"the job ended ({manager.get(job.id).status}) before it could be paused"
            raise AssertionError(f"the job ended ({manager.get(job.id).status}) without reporting progress")
        time.sleep(0.002)
    assert step < total, f"the job reported {step} of {total} before it could be paused"
    process = psutil.Process(manager.get(job.id).pid)
    paused = [process, *process.children(recursive=True)]
    for each in paused:
        each.suspend()
    try:
        events, offset = manager.read_events(job.id, offset)  # what it wrote before the pause landed
        yield max([e["step"] for e in events if e["event"] == "progress"], default=step)
    finally:
        for each in paused:
            each.resume()


def caption_files(dataset: Path) -> dict[str, str]:
    return {str(p.relative_to(dataset)): p.read_text(encoding="utf-8") for p in sorted(dataset.rglob("*.txt"))}


def edit_code(page: Page, elem_id: str, extra: str) -> None:
    """Type at the end of a gr.Code editor, as a user would."""
    editor = page.locator(f"#{elem_id} .cm-content")
    editor.click()
    page.keyboard.press("Control+End")
    page.keyboard.type(extra)


def test_dataset_tab_scans_fixes_a_caption_writes_the_toml_and_caches(demo_workspace_copy: Path, start_app,
                                                                       open_page):
    dataset = demo_workspace_copy / "datasets" / "demo"
    (dataset / MISSING).with_suffix(".txt").unlink()
    server = start_app(demo_workspace_copy)

    page = open_page(server)
    page.get_by_role("tab", name="Dataset", exact=True).click()
    page.locator("#dataset-scan").click()
    summary = page.locator("#dataset-summary")
    expect(summary).to_contain_text("12 images and 6 videos in 4 folders; 1 without a caption, 0 unreadable.")
    expect(summary).to_contain_text("Image sizes: 64x64 ×8, 96x64 ×2, 64x96 ×2")
    expect(page.locator("#dataset-problems")).to_contain_text(MISSING)
    expect(page.locator("#dataset-items")).to_contain_text("— no caption —")
    expect(page.locator("#dataset-gallery img")).to_have_count(18)

    # the file without a caption is selected first; write its caption
    expect(page.locator("#dataset-item-info")).to_contain_text(f"{MISSING} — image, 64x64")
    expect(page.locator("#dataset-item-info")).to_contain_text("(missing)")
    page.locator("#dataset-caption textarea").fill("loraidA, a red ball in the shade")
    page.locator("#dataset-caption-save").click()
    expect(page.locator("#dataset-caption-message")).to_have_text("Saved a_002.txt.")
    assert (dataset / MISSING).with_suffix(".txt").read_text(encoding="utf-8") == "loraidA, a red ball in the shade\n"
    expect(summary).to_contain_text("0 without a caption")
    expect(page.locator("#dataset-item-info")).not_to_contain_text("(missing)")

    # a trigger word: previewed (nothing written), applied on confirm
    before = caption_files(dataset)
    page.locator("#dataset-bulk-text textarea").fill("sks")
    page.locator("#dataset-bulk-preview").click()
    expect(page.locator("#dataset-bulk-message")).to_contain_text("18 of 18 captions would change (add trigger "
                                                                  "word sks at the start)")
    expect(page.locator("#dataset-bulk-changes")).to_contain_text("sks, loraidA, a red ball in the shade")
    assert caption_files(dataset) == before
    page.locator("#dataset-bulk-apply").click()
    expect(page.locator("#dataset-bulk-message")).to_have_text("Wrote 18 caption file(s).")
    assert caption_files(dataset) == {name: f"sks, {text}" for name, text in before.items()}

    # buckets: a bad width is one sentence beside the field (no flag, no key), the demo's 64x64 gives three buckets
    width = page.locator("#dataset-form-resolution_width input")
    width.fill("100")
    width_problem = page.locator("#dataset-form-resolution_width-error")
    expect(width_problem).to_have_text("⚠ Width is 100, not a multiple of 16; use 96 or 112.")
    page.locator("#dataset-buckets-run").click()
    expect(page.locator("#dataset-buckets-message")).to_have_text("⚠ Fix the setting marked ⚠ under Settings first.")
    expect(page.get_by_text("not a multiple of 16")).to_have_count(1)  # one message for one problem
    width.fill("64")
    expect(width_problem).to_be_hidden()
    page.locator("#dataset-buckets-run").click()
    expect(page.locator("#dataset-buckets-message")).to_have_text("At 64x64: 3 buckets, 18 item(s) kept, "
                                                                  "0 dropped.")
    buckets = page.locator("#dataset-buckets")
    for bucket in ("48x80", "64x64", "80x48"):
        expect(buckets).to_contain_text(bucket)
    expect(page.locator("#dataset-frames")).to_contain_text("0: 0-16")  # full / head 17 of a 17-frame clip

    # the TOML: a malformed edit is refused and changes nothing; the generated one is written and loads
    toml_file = dataset / "dataset.toml"
    original = toml_file.read_bytes()
    page.locator("#dataset-toml-generate").click()
    expect(page.locator("#dataset-toml-message")).to_contain_text("nothing is written until you click Write TOML")
    edit_code(page, "dataset-toml", "\nnum_repaets = 2\n")
    page.locator("#dataset-toml-write").click()
    expect(page.locator("#dataset-toml-message")).to_contain_text(
        "[[datasets]] #4: unknown key num_repaets; did you mean num_repeats?")
    expect(page.locator("#dataset-toml-message")).to_contain_text("Nothing was written.")
    assert toml_file.read_bytes() == original
    page.locator("#dataset-toml-generate").click()
    expect(page.locator("#dataset-toml-message")).to_contain_text("nothing is written until you click Write TOML")

    # outside the workspace the TOML is written only once that is confirmed; the check stands beside the path
    elsewhere = demo_workspace_copy.parent / "elsewhere"
    elsewhere.mkdir()
    path_box = page.locator("#dataset-toml-path textarea, #dataset-toml-path input").first
    path_box.fill(str(elsewhere / "dataset.toml"))
    page.locator("#dataset-toml-write").click()
    path_error, outside = page.locator("#dataset-toml-path-error"), page.locator("#dataset-toml-outside input")
    expect(path_error).to_contain_text(f"{elsewhere} is outside the workspace")
    expect(path_error).to_contain_text("confirm writing there, or choose a folder inside the workspace.")
    expect(page.locator("#dataset-toml-message")).to_have_text("⚠ Not written: fix the TOML file marked ⚠ above.")
    assert list(elsewhere.iterdir()) == []
    outside.check()
    expect(path_error).to_be_hidden()
    page.locator("#dataset-toml-write").click()
    expect(page.locator("#dataset-toml-message")).to_have_text(f"Wrote {elsewhere / 'dataset.toml'}: 4 [[datasets]] "
                                                               "entries, valid.")
    outside.uncheck()
    path_box.fill(str(toml_file))
    path_box.press("Tab")
    expect(path_error).to_be_hidden()

    page.locator("#dataset-toml-write").click()
    expect(page.locator("#dataset-toml-message")).to_have_text(f"Wrote {toml_file}: 4 [[datasets]] entries, "
                                                               "valid.")
    resolved = load_dataset_config(toml_file).resolved()
    assert [d.source for d in resolved] == [dataset / f"concept_{c}" / kind for c in "ab"
                                            for kind in ("images", "videos")]

    # a cache option the job cannot take is refused beside it and starts nothing
    jobs_before = sorted((demo_workspace_copy / "jobs").glob("*/job.json"))
    cache_batch = page.locator("#dataset-cache-batch-size input")
    cache_batch.fill("2.5")
    page.locator("#dataset-cache-latents").click()
    expect(page.locator("#dataset-cache-batch-size-error")).to_have_text(
        "⚠ Encode batch size is 2.5, not a whole number; enter a whole number such as 2.")
    expect(page.locator("#dataset-cache-status")).to_have_text("Not started: fix the cache option marked ⚠ above.")
    assert sorted((demo_workspace_copy / "jobs").glob("*/job.json")) == jobs_before
    cache_batch.fill("1")
    expect(page.locator("#dataset-cache-batch-size-error")).to_be_hidden()

    # cache latents as a job; its files appear in each dataset's cache folder
    page.locator("#dataset-cache-device").get_by_label("cpu").check()
    page.evaluate(COUNTS_SEEN)
    page.locator("#dataset-cache-latents").click()
    status = page.locator("#dataset-cache-status")
    expect(status).to_contain_text(re.compile(r"Cache latents job \S+: (queued|running)"))
    bar = page.locator("#dataset-cache-progress .cache-progress")
    with frozen_at_first_progress(demo_workspace_copy / "jobs", total=24) as step:  # however fast the machine
        expect(bar).to_have_attribute("data-step", str(step))
    expect(status).to_contain_text("succeeded: 24 latent file(s) and 0 text file(s) in 4 cache folders.",
                                   timeout=120_000)
    expect(bar).to_have_attribute("data-step", "24")
    seen = page.evaluate("() => window.cacheCounts")
    assert seen == sorted(seen) and seen[-1] == 24 and step in seen, (step, seen)
    log = page.locator("#dataset-cache-log textarea")
    expect(log).to_have_value(re.compile("cache latents done"))
    assert re.search(r"cache latents: \d+/24 \(\d+%\)", log.input_value())
    latents = [len(list(d.cache_directory.glob("*_wan.safetensors"))) for d in resolved]
    assert latents == [6, 6, 6, 6]  # 6 images; 3 clips x 2 windows (target_frames 1 and 17)
    assert all((d.cache_directory / "cache_manifest.json").is_file() for d in resolved)
    page.locator("#dataset-caption textarea").scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOT), full_page=True)
