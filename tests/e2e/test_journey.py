"""The user's whole journey in a real browser, on a fresh workspace: scan the demo dataset and fix its missing
caption, write the dataset TOML, cache latents and text; load the LoRA preset, switch to DoRA and watch the
network_args text change; train LORAID 1 on concept A, watch the loss chart, stop, resume and finish; train LORAID 2
on concept B; see both on the LORAID tab without conflict; merge both into the demo DiT; generate a video with both
at 1.0 / 0.7; run post-hoc EMA over the first run's checkpoints. Each tab's screenshot goes to docs/journey-*.png
(the README shows them).

All of it while another training runs on the same machine (a job of a second workspace, started through the
backend before the journey and still running at its end): the journey waits on its jobs' progress, so sharing the
machine makes it slower, not red."""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from playwright.sync_api import Page, expect
from safetensors import safe_open

from backend.jobs import JobManager
from backend.train.command import train_argv, write_run_config
from backend.train.settings import TrainSettings
from backend.workspace import Workspace
from tests.demo_files import cache_concept_a
from tests.e2e.conftest import wait_while_moving

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "docs"
MISSING_CAPTION = "concept_a/images/a_002.txt"
STEPS_A = 240  # long enough that the run outlasts the page noticing step 2 and its Stop landing, on a fast or busy machine
SAVE_EVERY = 20
STEPS_B = 4
OTHER_STEPS = 1_000_000  # the training beside the journey: far more than it can reach, it is stopped at the end


def screenshot(page: Page, number: int, tab: str) -> None:
    for button in page.locator(".toast-close").all():  # warning toasts would cover the tab
        button.click()
    page.evaluate("window.scrollTo(0, 0)")  # the Train tab's run column stays in view: at the top of the picture
    page.screenshot(path=str(SHOTS / f"journey-{number}-{tab}.png"), full_page=True)


def open_tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def pick(page: Page, elem_id: str, option: str | re.Pattern) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=isinstance(option, str)).click()


def pick_many(page: Page, elem_id: str, names: list[str]) -> None:
    """Pick each file of a multiselect (options start with the file name); each shows as chosen before the next."""
    for name in names:
        pick(page, elem_id, re.compile(rf"^{re.escape(name)}\b"))
        expect(page.locator(f"#{elem_id} .token")).to_contain_text([*names[:names.index(name) + 1]])
    page.locator(f"#{elem_id} input").press("Escape")


def fill_number(page: Page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input:not([type=range])")
    box.fill(value)
    box.press("Tab")


def open_group(page: Page, name: str) -> None:
    page.locator(f"#train-group-{name}").get_by_role("button", name=name).click()


def started_job(page: Page, message: str) -> str:
    """The id of the job the run message names once it starts with `message` (an earlier message does not count)."""
    shown = page.locator("#train-run-message")
    expect(shown).to_contain_text(re.compile(rf"{re.escape(message)}.*job \d{{8}}-\d{{6}}-\w+"))
    return re.search(r"job (\d{8}-\d{6}-\w+)", shown.inner_text().split(message, 1)[1]).group(1)


def newest_job(manager: JobManager) -> str:
    """The id of the newest job: the one the page just said it started."""
    manager.refresh()
    return manager.list()[0].id


def wait_for_status(manager: JobManager, job_id: str, status: str) -> None:
    """Wait for the job to end (while it moves), then check how it ended."""
    def ended() -> bool:
        manager.refresh()
        return manager.get(job_id).is_finished

    wait_while_moving(manager, job_id, ended)
    manager.refresh()
    job = manager.get(job_id)
    assert job.status == status, f"job {job_id} ended {job.status}, not {status}: {job.error}"


def line_vertices(page: Page, elem_id: str) -> list[int]:
    """The vertices of each line a chart's SVG draws."""
    paths = page.locator(f'#{elem_id} path[aria-roledescription="line mark"]')
    return [len(re.findall(r"[ML]", d or "")) for d in paths.evaluate_all("ps => ps.map(p => p.getAttribute('d'))")]


def prepare_dataset(page: Page, manager: JobManager, dataset: Path) -> None:
    open_tab(page, "Dataset")
    expect(page.locator("#dataset-folder input")).to_have_value(str(dataset))
    page.locator("#dataset-scan").click()
    summary = page.locator("#dataset-summary")
    expect(summary).to_contain_text("12 images and 6 videos in 4 folders; 1 without a caption, 0 unreadable.")
    expect(page.locator("#dataset-problems")).to_contain_text(MISSING_CAPTION.replace(".txt", ".png"))
    expect(page.locator("#dataset-item-info")).to_contain_text("(missing)")  # the file to fix is selected first
    page.locator("#dataset-caption textarea").fill("loraidA, a red ball in the shade")
    page.locator("#dataset-caption-save").click()
    expect(page.locator("#dataset-caption-message")).to_have_text("Saved a_002.txt.")
    expect(summary).to_contain_text("0 without a caption")
    assert (dataset / MISSING_CAPTION).read_text(encoding="utf-8") == "loraidA, a red ball in the shade\n"

    page.locator("#dataset-toml-generate").click()
    page.locator("#dataset-toml-write").click()
    toml_file = dataset / "dataset.toml"
    expect(page.locator("#dataset-toml-message")).to_have_text(f"Wrote {toml_file}: 4 [[datasets]] entries, valid.")

    page.locator("#dataset-cache-device").get_by_label("cpu").check()
    status = page.locator("#dataset-cache-status")
    page.locator("#dataset-cache-latents").click()
    expect(status).to_contain_text(re.compile(r"Cache latents job \S+: (queued|running)"))
    wait_for_status(manager, newest_job(manager), "succeeded")
    expect(status).to_contain_text("succeeded: 24 latent file(s) and 0 text file(s) in 4 cache folders.")
    page.locator("#dataset-cache-text").click()
    expect(status).to_contain_text(re.compile(r"Cache text job \S+: (queued|running)"))
    wait_for_status(manager, newest_job(manager), "succeeded")
    expect(status).to_contain_text(re.compile(r"succeeded: \d+ latent file\(s\) and 18 text file\(s\)"))
    screenshot(page, 1, "dataset")


def set_run(page: Page, dataset_toml: str, loraid_option: str, output_name: str, steps: int,
            save_every: str) -> None:
    pick(page, "train-dataset_config", dataset_toml)
    pick(page, "train-loraid", loraid_option)
    page.locator("#train-output_name input").fill(output_name)
    fill_number(page, "train-max_train_steps", str(steps))
    fill_number(page, "train-save_every_n_steps", save_every)
    fill_number(page, "train-log_every_n_steps", "1")
    expect(page.locator("#train-validation")).not_to_contain_text("⚠")


def train_concept_a(page: Page, manager: JobManager, ws: Path) -> None:
    open_tab(page, "Train")
    pick(page, "train-preset", "lora (shipped)")
    page.locator("#train-preset-load").click()
    expect(page.locator("#train-preset-message")).to_contain_text("Loaded preset lora.")
    network_args = page.locator("#train-network-args")
    expect(network_args).not_to_contain_text("use_dora")
    pick(page, "train-net-recipe", "DoRA")
    expect(page.locator("#train-network_type input")).to_have_value("dora")
    expect(network_args).to_contain_text("use_dora=True")

    for group in ("Training", "Saving", "Logging"):
        open_group(page, group)
    set_run(page, "datasets/demo/concept_a/dataset.toml", "1: blocks 0-1 (free)", "concept-a", STEPS_A,
            str(SAVE_EVERY))
    rank = page.locator("#train-network_dim input")
    rank.fill("0")
    rank.blur()
    expect(page.locator("#train-network_dim-error")).to_contain_text("Rank (network_dim) is 0")
    rank.fill("16")
    rank.blur()
    expect(page.locator("#train-network_dim-error")).to_be_hidden()
    expect(page.locator("#train-loraid-allocation")).to_contain_text("LORAID 1 owns blocks 0-1")
    expect(network_args).to_contain_text(r"include_patterns=[r'blocks\.(0|1)\..*']")

    page.locator("#train-start").click()
    first = started_job(page, "Started training")
    progress = page.locator("#train-progress .train-progress")
    wait_while_moving(manager, first, lambda: int(progress.get_attribute("data-step") or 0) >= 2)
    chart = page.locator("#train-loss-chart")
    expect(chart).to_contain_text(re.compile(rf"Loss \(step [1-9]\d* of {STEPS_A}\)"))
    page.locator("#train-stop").click()
    expect(page.locator("#train-run-message")).to_contain_text("saves it with its training state")
    wait_for_status(manager, first, "stopped")
    expect(progress).to_have_attribute("data-status", "stopped")
    stopped_at = int(progress.get_attribute("data-step"))
    assert 2 <= stopped_at < STEPS_A
    expect(chart).to_contain_text(f"Loss (step {stopped_at} of {STEPS_A})")

    page.locator("#train-resume-run").click()
    second = started_job(page, f"Resumed from concept-a-step{stopped_at:06d}-state as")
    assert second != first
    wait_for_status(manager, second, "succeeded")
    expect(progress).to_have_attribute("data-status", "succeeded")
    expect(progress).to_have_attribute("data-step", str(STEPS_A))
    expect(chart).to_contain_text(f"Loss (step {STEPS_A} of {STEPS_A})")
    expect(chart.locator('[aria-roledescription="point"]')).to_have_count(2 * STEPS_A)  # loss and its average
    assert line_vertices(page, "train-loss-chart") == [STEPS_A, STEPS_A]  # two lines, a vertex per logged step
    expect(page.locator("#train-log textarea")).to_have_value(re.compile(r"saved .*concept-a\.safetensors"))
    with safe_open(str(ws / "loras" / "concept-a.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_loraid"] == "1" and json.loads(metadata["ss_network_args"])["algo"] == "dora"
    screenshot(page, 2, "train")


def train_concept_b(page: Page, manager: JobManager) -> None:
    set_run(page, "datasets/demo/concept_b/dataset.toml", "2: blocks 2-3 (free)", "concept-b", STEPS_B, "")
    page.locator("#train-start").click()
    job = started_job(page, "Started training")
    wait_for_status(manager, job, "succeeded")
    expect(page.locator("#train-job")).to_contain_text(job)
    expect(page.locator("#train-progress .train-progress")).to_have_attribute("data-step", str(STEPS_B))


def check_loraid_map(page: Page) -> None:
    open_tab(page, "LORAID")
    pick_many(page, "loraid-files", ["concept-a.safetensors", "concept-b.safetensors"])
    expect(page.locator("#loraid-conflicts")).to_contain_text("No conflict")
    grid = page.locator("#loraid-file-grid")
    expect(grid.locator('td[data-block="1"][data-kind="self_attn.q"]')).to_have_attribute(
        "data-owners", "concept-a.safetensors")
    expect(grid.locator('td[data-block="2"][data-kind="ffn.0"]')).to_have_attribute(
        "data-owners", "concept-b.safetensors")
    expect(grid.locator("td.bm-conflict")).to_have_count(0)
    expect(page.locator("#loraid-capacity")).to_contain_text("concept-b.safetensors")  # ID 2 now taken
    screenshot(page, 3, "loraid")


def merge_both(page: Page, manager: JobManager, ws: Path) -> None:
    open_tab(page, "Merge")
    pick_many(page, "merge-files", ["concept-a.safetensors", "concept-b.safetensors"])
    expect(page.locator("#merge-overlap")).to_contain_text("No overlap")
    out = ws / "outputs" / "merged" / "demo-t2v+concept-a+concept-b.safetensors"
    expect(page.locator("#merge-out textarea")).to_have_value(str(out))
    page.locator("#merge-run").click()
    expect(page.locator("#merge-status")).to_contain_text(re.compile("queued|running|succeeded"))
    wait_for_status(manager, newest_job(manager), "succeeded")
    expect(page.locator("#merge-status")).to_contain_text("succeeded")
    expect(page.locator("#merge-summary")).to_contain_text("LORAIDs: 1, 2")
    assert out.is_file()
    screenshot(page, 4, "merge")


def generate_with_both(page: Page, manager: JobManager, ws: Path) -> None:
    open_tab(page, "Generate")
    pick_many(page, "gen-loras", ["concept-a.safetensors", "concept-b.safetensors"])
    expect(page.locator("#gen-lora-conflicts")).to_contain_text("No conflict")
    fill_number(page, "gen-lora-multiplier-1", "0.7")
    page.locator("#gen-prompt textarea").fill("loraidA and loraidB, a red ball next to a blue cube")
    for elem_id, value in (("gen-frames", "5"), ("gen-width", "32"), ("gen-height", "32"), ("gen-steps", "2"),
                           ("gen-seed", "11")):
        fill_number(page, elem_id, value)
    page.locator("#gen-run").click()
    expect(page.locator("#gen-status")).to_contain_text(re.compile("queued|running|succeeded"))
    wait_for_status(manager, newest_job(manager), "succeeded")
    expect(page.locator("#gen-status")).to_contain_text(re.compile(r"succeeded: wrote \S+_11\.mp4"))
    expect(page.locator("#gen-gallery video[controls]")).to_have_attribute("src", re.compile(r"_11\.mp4$"))
    record = json.loads(next((ws / "outputs").glob("*_11.json")).read_text())
    assert [(Path(item["path"]).name, item["multiplier"]) for item in record["loras"]] == [
        ("concept-a.safetensors", 1.0), ("concept-b.safetensors", 0.7)]
    screenshot(page, 5, "generate")


def ema_over_run_a(page: Page, manager: JobManager, ws: Path) -> None:
    open_tab(page, "EMA")
    pick(page, "ema-run", re.compile(r"^concept-a: \d+ files in loras"))
    expect(page.locator('#ema-checkpoints [data-testid="cell-1-2"]')).to_have_text(re.compile(r"^\s*\d+\s*$"))
    page.locator("#ema-run-button").click()
    expect(page.locator("#ema-status")).to_contain_text(re.compile("queued|running|succeeded"))
    wait_for_status(manager, newest_job(manager), "succeeded")
    expect(page.locator("#ema-status")).to_contain_text("succeeded")
    expect(page.locator("#ema-summary")).to_contain_text("concept-a-ema.safetensors is in loras/")
    with safe_open(str(ws / "loras" / "concept-a-ema.safetensors"), "pt") as handle:
        record = json.loads(handle.metadata()["loraid_studio.ema"])
    steps = [c["step"] for c in record["checkpoints"]]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] == STEPS_A
    assert abs(sum(c["weight"] for c in record["checkpoints"]) - 1.0) < 1e-9
    screenshot(page, 6, "ema")


def start_other_training(source: Path, folder: Path) -> tuple[JobManager, str]:
    """A long training of concept A in a workspace of its own (a copy of `source`), submitted as the Train tab
    submits one; returns its job manager and job id once it has logged its first step."""
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("jobs"))
    ws = Workspace(folder)
    cache_concept_a(ws)
    settings = TrainSettings.from_mapping({
        "dataset_config": "{workspace}/datasets/demo/concept_a/dataset.toml", "output_name": "beside-the-journey",
        "max_train_steps": OTHER_STEPS, "log_every_n_steps": 1})
    manager = JobManager(ws.jobs)
    job = manager.submit(train_argv(write_run_config(settings, ws), ws), kind="train", title="Beside the journey",
                         settings=settings.model_dump(mode="json"))
    wait_while_moving(manager, job.id, lambda: logged_step(manager, job.id) > 0 or manager.get(job.id).is_finished)
    assert not manager.get(job.id).is_finished, f"the other training ended: {manager.get(job.id).error}"
    return manager, job.id


def logged_step(manager: JobManager, job_id: str) -> int:
    """The last step a training job has logged."""
    events, _ = manager.read_events(job_id, 0)
    return max([e["step"] for e in events if e["event"] == "step"], default=0)


def test_the_whole_journey(demo_workspace_copy: Path, start_app, open_page, tmp_path: Path):
    ws = demo_workspace_copy
    dataset = ws / "datasets" / "demo"
    other, other_job = start_other_training(ws, tmp_path / "other-workspace")
    (dataset / MISSING_CAPTION).unlink()
    manager = JobManager(ws / "jobs")
    server = start_app(ws)
    page = open_page(server)
    try:
        other_from = logged_step(other, other_job)
        for phase, args in ((prepare_dataset, (page, manager, dataset)), (train_concept_a, (page, manager, ws)),
                            (train_concept_b, (page, manager)), (check_loraid_map, (page,)),
                            (merge_both, (page, manager, ws)), (generate_with_both, (page, manager, ws)),
                            (ema_over_run_a, (page, manager, ws))):
            started = time.monotonic()
            phase(*args)
            print(f"journey: {phase.__name__} {time.monotonic() - started:.1f} s")
        other.refresh()
        beside = other.get(other_job)
        assert beside.status == "running", (f"the other training ended ({beside.status}) before the journey did: "
                                            f"{beside.error or other.read_log(other_job)[0][-500:]}")
        other_to = logged_step(other, other_job)
        assert other_to > other_from, "the other training made no progress while the journey ran"
        print(f"journey: the other training went from step {other_from} to {other_to} meanwhile")
    finally:
        other.stop(other_job, grace_s=5.0)
        wait_while_moving(other, other_job, lambda: other.get(other_job).is_finished)
