"""The Dataset tab's handlers without a browser, on a copy of the demo dataset: bad input gives one sentence and
changes nothing on disk; good input scans, edits captions, previews and writes the TOML."""
from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from backend.data.dataset_config import load_dataset_config
from backend.data.dataset_form import DatasetForm
from backend.data.sample_dataset import write_sample_dataset
from backend.jobs import JobManager
from backend.workspace import Workspace
from ui.context import AppContext
from ui.dataset_panel import ALL_FOLDERS, CACHE_FIELDS, FIX_THE_PATH, FORM_FIELDS, DatasetPanel, form_values
from ui.tabs.dataset import wire
from tests.app.toasts import no_toast

MISSING = "concept_a/images/a_002.png"


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo") / "demo"
    write_sample_dataset(folder)
    return folder


@pytest.fixture
def workspace(tmp_path, demo_dataset) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    shutil.copytree(demo_dataset, ws.demo_dataset)
    (ws.demo_dataset / MISSING).with_suffix(".txt").unlink()
    return ws


@pytest.fixture
def panel(workspace) -> DatasetPanel:
    return DatasetPanel(AppContext(workspace, JobManager(workspace.jobs)))


def page_form(**changes) -> list:
    """The form's values in input order, as the page holds them (the demo's settings)."""
    values = form_values(DatasetForm(resolution_width=64, resolution_height=64, target_frames=[1, 17],
                                     source_fps=16.0))
    values.update({f"form.{key}": value for key, value in changes.items()})
    return [values[f"form.{name}"] for name in FORM_FIELDS]


def cache_options(**changes) -> list:
    """The cache options in input order, as the page starts them on a machine without a GPU."""
    values = {"device": "cpu", "dtype": "auto", "batch_size": 1, "skip_existing": True, "i2v": False,
              "vae_tiling": False, "max_sequence_length": 512, "model_kind": None, "vae": "", "text_encoder": "",
              "tokenizer": "", **changes}
    return [values[name] for name in CACHE_FIELDS]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def scanned(panel, workspace):
    shown = panel.scan(str(workspace.demo_dataset), None, *page_form())
    return shown["scan"], shown


@pytest.mark.parametrize("typed, sentence", [
    ("", "No dataset folder is given; type or pick the folder that holds your images and videos."),
    ("datasets/nowhere", "does not exist; check the path (relative paths start at"),
    ("datasets/demo/dataset.toml", "is a file, not a folder; choose the folder that holds your images and videos."),
    ("models", "No images or videos were found in"),
])
def test_a_bad_folder_gives_one_sentence_and_keeps_the_scan(panel, workspace, typed, sentence):
    (workspace.models).mkdir(exist_ok=True)
    with no_toast():  # the message box says it, once
        shown = panel.scan(typed, None, *page_form())
    assert set(shown) == {"summary"}  # nothing else on the page changes, the previous scan state included
    assert shown["summary"].startswith("⚠ ") and sentence in shown["summary"]
    assert shown["summary"].count(". ") == 0  # one sentence
    last, _ = scanned(panel, workspace)
    with no_toast():  # the message box says it, once
        after_a_scan = panel.scan(typed, last, *page_form())
    assert set(after_a_scan) == {"summary"}
    error, kept = after_a_scan["summary"].split("  \n")  # the error, then whose files the page still shows
    assert error == shown["summary"] and kept == f"The files below are still those of the last scan ({last.root})."


def test_scanning_the_demo_shows_counts_the_missing_caption_and_a_valid_toml(panel, workspace):
    scan, shown = scanned(panel, workspace)
    assert "12 images and 6 videos in 4 folders; **1 without a caption**, **0 unreadable**" in shown["summary"]
    assert "Image sizes: 64x64 ×8, 96x64 ×2, 64x96 ×2" in shown["summary"]
    assert f"`{MISSING}`" in shown["problems"]
    assert shown["item"]["value"] == MISSING
    assert (f"{MISSING} (no caption)", MISSING) in shown["item"]["choices"]
    assert [row[0] for row in shown["items"]].index(MISSING) == 2 and shown["items"][2][-1] == "— no caption —"
    clip_row = next(row for row in shown["items"] if row[0] == "concept_b/videos/b_clip_002.mp4")
    assert clip_row[1:4] == ["video", "64x64", "17 @ 16 fps, 1.06 s"]
    assert len(shown["gallery"]) == 18
    assert [caption for _, caption in shown["gallery"]] == [row[0].rsplit("/", 1)[1] for row in shown["items"]]
    assert shown["scope"]["choices"] == [ALL_FOLDERS, "concept_a/images (images)", "concept_a/videos (videos)",
                                         "concept_b/images (images)", "concept_b/videos (videos)"]
    assert shown["form.resolution_width"] == 64 and shown["form.target_frames"] == "1, 17"
    assert [row[0] for row in shown["buckets"]] == ["48x80", "64x64", "80x48"]
    assert shown["frames_message"].startswith("concept_a/videos/a_clip_000.mp4: 17 frames")
    assert len(tomllib.loads(shown["toml"])["datasets"]) == 4
    assert shown["toml_path"] == str(workspace.demo_dataset / "dataset.toml")


def test_fixing_the_missing_caption_writes_only_that_file(panel, workspace):
    scan, _ = scanned(panel, workspace)
    before = snapshot(workspace.demo_dataset)
    with no_toast():  # the message box says it, once
        refused = panel.save_caption(scan, MISSING, "  ")
    assert refused == {"caption_message": "⚠ The caption for a_002.png is empty; type a caption before saving."}
    assert snapshot(workspace.demo_dataset) == before

    saved = panel.save_caption(scan, MISSING, "loraidA, a red ball in the shade")
    assert saved["caption_message"] == "Saved a_002.txt."
    assert saved["item_info"].endswith("Caption file: `a_002.txt`.")
    after = snapshot(workspace.demo_dataset)
    assert after.pop("concept_a/images/a_002.txt") == b"loraidA, a red ball in the shade\n"
    assert after == before
    assert "**0 without a caption**" in saved["summary"]
    assert saved["problems"] == "Every file is readable and has a caption."
    assert panel.next_missing(saved["scan"], MISSING) == {"caption_message": "Every file has a caption."}


def test_a_trigger_word_is_previewed_then_applied_on_confirm(panel, workspace):
    scan, _ = scanned(panel, workspace)
    before = snapshot(workspace.demo_dataset)
    with no_toast():  # the message box says it, once
        assert panel.bulk_apply(scan, None, None)["bulk_message"].startswith("⚠ There is no previewed edit to apply")
    preview = panel.bulk_preview(scan, "trigger word", ALL_FOLDERS, "sks", "", "end", False, True)
    assert preview["bulk_message"] == ("17 of 17 captions would change (add trigger word `sks` at the end); 1 file(s) "
                                       "without a caption are left alone. Click Apply to write them.")
    first = (workspace.demo_dataset / "concept_a/images/a_000.txt").read_text(encoding="utf-8").strip()
    assert preview["changes"][0] == ["concept_a/images/a_000.png", first, f"{first}, sks"]
    assert snapshot(workspace.demo_dataset) == before  # a preview writes nothing

    only_b = panel.bulk_preview(scan, "trigger word", "concept_b/videos (videos)", "loraidB", "", "start", False, True)
    assert only_b["bulk_message"].startswith("0 of 3 captions would change")

    applied = panel.bulk_apply(scan, preview["plan"], "concept_a/images/a_000.png")
    assert applied["bulk_message"] == "Wrote 17 caption file(s)."
    assert applied["plan"] is None and applied["caption"] == f"{first}, sks"
    captions = [p.read_text(encoding="utf-8") for p in workspace.demo_dataset.rglob("*.txt")]
    assert len(captions) == 17 and all(text.endswith(", sks\n") for text in captions)


def shown_problems(out: dict) -> dict[str, str]:
    """The settings' problem slots that show something, by field name."""
    return {name.removeprefix("form_problem."): update["value"] for name, update in out.items()
            if name.startswith("form_problem.") and update["visible"]}


def test_bad_resolution_and_frame_settings_are_shown_beside_the_field_once(panel, workspace):
    scan, _ = scanned(panel, workspace)
    shown = panel.buckets(scan, *page_form(resolution_width=100))  # no toast: the field says it
    assert shown["buckets_message"] == "⚠ Fix the setting marked ⚠ under Settings first."
    assert shown_problems(shown) == {"resolution_width": "⚠ Width is 100, not a multiple of 16; use 96 or 112."}
    assert shown["buckets"] == [] and shown["dropped"] == []  # no stale table beside the problem
    fixed = panel.buckets(scan, *page_form())
    assert fixed["buckets_message"].startswith("At 64x64") and shown_problems(fixed) == {}
    shown = panel.frames(scan, "concept_a/videos/a_clip_000.mp4", *page_form(target_frames="1, 18"))
    assert shown["frames_message"].endswith("target_frames are rounded down to 4n+1 as musubi-tuner does (18 -> 17).")
    shown = panel.frames(scan, "concept_a/videos/a_clip_000.mp4", *page_form(target_frames="1, 0", batch_size=0))
    assert shown_problems(shown) == {
        "batch_size": "⚠ Batch size is 0; it must be at least 1.",
        "target_frames": "⚠ Clip lengths holds 0, which is not a frame count; use 1 or more (1, 17, 33, ...)."}
    assert shown["frames"] == [] and shown["frames_strip"] == ""
    assert shown_problems(panel.check_form(*page_form(caption_extension="txt"))) == {
        "caption_extension": "⚠ Caption extension is 'txt'; it must start with a dot, e.g. .txt."}
    with no_toast():  # the message box says it, once
        shown = panel.frames(scan, "concept_a/images/a_000.png", *page_form())
    assert "is an image; frame extraction applies to videos only" in shown["frames_message"]
    with no_toast():  # the message box says it, once
        assert panel.buckets(None, *page_form())["buckets_message"].startswith("⚠ No folder has been scanned yet")
    frames = panel.frames(scan, "concept_a/videos/a_clip_000.mp4", *page_form(frame_extraction="slide",
                                                                                frame_stride=8, target_frames="9"))
    assert frames["frames"][2] == ["slide", 2, "0: 0-8; 8: 8-16"]
    assert frames["frames_strip"].count('<tr data-start=') == 2


@pytest.mark.parametrize("edit, sentence", [
    (lambda t: t.replace("[general]", "[general"), "dataset.toml is not valid TOML"),
    (lambda t: t.replace("batch_size", "batch_sise"),
     "[general]: unknown key `batch_sise`; did you mean `batch_size`?"),
    (lambda t: t.replace("frame_extraction = \"head\"", "frame_extraction = \"tail\"", 1),
     "[[datasets]] #2: frame_extraction 'tail' is not a mode"),
    (lambda t: t.replace("concept_a/images", "concept_z/images", 1), "concept_z/images does not exist"),
])
def test_a_malformed_toml_edit_is_refused_and_the_file_is_unchanged(panel, workspace, edit, sentence):
    scan, shown = scanned(panel, workspace)
    path = workspace.demo_dataset / "dataset.toml"
    before = snapshot(workspace.demo_dataset)
    with no_toast():  # the message box says it, once
        refused = panel.write_toml(str(path), edit(shown["toml"]), False)
    assert refused["toml_message"].startswith("⚠ ") and sentence in refused["toml_message"]
    assert refused["toml_message"].endswith("Nothing was written.")
    assert snapshot(workspace.demo_dataset) == before


def test_writing_the_generated_toml_gives_a_file_the_loader_reads(panel, workspace):
    scan, _ = scanned(panel, workspace)
    generated = panel.generate_toml(scan, "datasets/demo/studio.toml", *page_form(num_repeats=3))
    assert "nothing is written until you click Write TOML" in generated["toml_message"]
    path = workspace.demo_dataset / "studio.toml"
    assert not path.exists()
    assert panel.write_toml("datasets/demo/studio.toml", generated["toml"], False)["toml_message"] == (
        f"Wrote {path}: 4 [[datasets]] entries, valid.")
    config = load_dataset_config(path)
    assert config.general.num_repeats == 3
    assert config.resolved()[0].source == workspace.demo_dataset / "concept_a" / "images"
    assert panel.load_toml(str(path)) == {"toml": generated["toml"], "toml_message": f"Loaded {path}."}
    with no_toast():  # the message box says it, once
        refused = panel.write_toml("datasets/demo/studio.txt", generated["toml"], False)
    assert "does not end in .toml" in refused["toml_path_problem"]["value"]  # beside the path, not in the message
    assert refused["toml_message"] == FIX_THE_PATH and not (workspace.demo_dataset / "studio.txt").exists()


def test_a_toml_outside_the_workspace_is_written_only_once_confirmed(panel, workspace, tmp_path):
    scan, shown = scanned(panel, workspace)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    path = outside / "dataset.toml"
    sentence = (f"⚠ {outside} is outside the workspace {workspace.root}; confirm writing there, or choose a folder "
                "inside the workspace.")
    before = snapshot(workspace.root)
    with no_toast():  # said once, beside the path
        refused = panel.write_toml(str(path), shown["toml"], False)
    assert refused["toml_path_problem"]["value"] == sentence and refused["toml_path_problem"]["visible"]
    assert refused["toml_message"] == FIX_THE_PATH  # no "Wrote ..." of an earlier write left beside the refusal
    assert list(outside.iterdir()) == [] and snapshot(workspace.root) == before  # nothing written anywhere
    assert panel.check_toml_path(str(path), False)["toml_path_problem"]["value"] == sentence  # the field's own check
    cleared = panel.check_toml_path(str(path), True)["toml_path_problem"]  # ticking the box clears it
    assert cleared["visible"] is False and cleared["value"] == ""
    written = panel.write_toml(str(path), shown["toml"], True)
    assert written["toml_message"] == f"Wrote {path}: 4 [[datasets]] entries, valid."
    assert written["toml_path_problem"]["visible"] is False
    assert len(load_dataset_config(path).datasets) == 4  # the loader reads what was written there
    inside = panel.check_toml_path("datasets/demo/dataset.toml", False)["toml_path_problem"]
    assert inside["visible"] is False  # inside the workspace no confirmation is asked


def test_caching_starts_only_from_the_written_toml(panel, workspace):
    scan, shown = scanned(panel, workspace)
    path = workspace.demo_dataset / "fresh.toml"
    with no_toast():  # the message box says it, once
        refused = panel.start_cache("latents", str(path), shown["toml"], *cache_options())
    assert refused == {"cache_status": f"⚠ {path} has not been written yet; click Write TOML before caching."}
    panel.write_toml(str(path), shown["toml"], False)
    with no_toast():  # the message box says it, once
        refused = panel.start_cache("latents", str(path), shown["toml"].replace("64, 64", "96, 96"),
                                    *cache_options())
    assert "differs from fresh.toml on disk; click Write TOML first" in refused["cache_status"]
    assert panel.ctx.jobs.list() == []


def test_wired_handlers_give_gradio_one_value_per_output_and_skip_the_rest():
    import gradio as gr

    with gr.Blocks():
        first, second = gr.Markdown(), gr.Markdown()
    single, outputs = wire(lambda text: {"toml_message": text}, {"toml_message": first})
    assert outputs == [first] and single("one sentence.") == "one sentence."
    double, outputs = wire(lambda: {"summary": "s"}, {"summary": first, "problems": second})
    shown = double()
    assert outputs == [first, second] and shown[0] == "s" and shown[1] == gr.skip()
    with pytest.raises(AssertionError, match="not a Dataset tab output"):
        wire(lambda: {}, {"nonsense": first})
