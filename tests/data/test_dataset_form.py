"""The Dataset tab's form: raw page values in, a validated musubi-tuner TOML for the scanned sources out."""
from __future__ import annotations

import tomllib

import pytest

from backend.data.cache_plan import latent_settings
from backend.data.dataset_config import load_dataset_config
from backend.data.dataset_folder import scan_tree
from backend.data.dataset_form import (DatasetForm, FormProblems, existing_form, form_from_config, form_problems,
                                       parse_target_frames, read_form, render_form_toml)
from backend.data.dataset_keys import DatasetKeys
from backend.data.sample_dataset import write_sample_dataset
from backend.fileio import atomic_write_text


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "demo"
    write_sample_dataset(folder)
    return folder


def page_values(**changes) -> dict:
    """The form as the page sends it: numbers as floats, target_frames as text, a blank source_fps."""
    values = {"resolution_width": 64.0, "resolution_height": 64.0, "caption_extension": ".txt", "batch_size": 1.0,
              "num_repeats": 2.0, "enable_bucket": True, "bucket_no_upscale": False, "target_frames": "1, 17",
              "frame_extraction": "head", "frame_stride": 1.0, "frame_sample": 1.0, "max_frames": 129.0,
              "source_fps": None}
    return {**values, **changes}


def test_the_toml_for_the_demo_uses_the_demo_cache_layout_and_loads(demo, tmp_path):
    scan = scan_tree(demo)
    form = read_form(page_values(source_fps=16.0))
    toml_path = demo / "written.toml"
    text = render_form_toml(scan, form, toml_path)
    data = tomllib.loads(text)
    assert data["general"] == {"resolution": [64, 64], "caption_extension": ".txt", "batch_size": 1,
                               "num_repeats": 2, "enable_bucket": True, "bucket_no_upscale": False}
    assert [(d.get("image_directory") or d["video_directory"], d["cache_directory"]) for d in data["datasets"]] == [
        (str(demo / f"concept_{c}" / kind), str(demo / f"concept_{c}" / "cache" / kind))
        for c in "ab" for kind in ("images", "videos")]
    assert data["datasets"][1] == {"video_directory": str(demo / "concept_a" / "videos"),
                                   "cache_directory": str(demo / "concept_a" / "cache" / "videos"),
                                   "target_frames": [1, 17], "frame_extraction": "head", "source_fps": 16.0}
    atomic_write_text(toml_path, text)
    resolved = load_dataset_config(toml_path).resolved()
    concept_a = load_dataset_config(demo / "concept_a" / "dataset.toml").resolved()
    assert [d.cache_directory for d in resolved[:2]] == [d.cache_directory for d in concept_a]
    # training on concept A alone finds the cache the tab's TOML filled: same folders, same latent settings
    assert [latent_settings(d) for d in resolved[:2]] == [latent_settings(d) for d in concept_a]
    toml_path.unlink()


def test_only_the_frame_keys_a_mode_uses_are_written(tmp_path, make):
    make.caption(make.mp4(tmp_path / "clip.mp4", 9), "clip")
    scan = scan_tree(tmp_path)
    path = tmp_path / "dataset.toml"

    def video_entry(**changes):
        return tomllib.loads(render_form_toml(scan, read_form(page_values(**changes)), path))["datasets"][0]

    assert video_entry(frame_extraction="full", max_frames=33.0).keys() == {
        "video_directory", "cache_directory", "frame_extraction", "max_frames"}
    assert video_entry(frame_extraction="slide", frame_stride=4.0)["frame_stride"] == 4
    assert video_entry(frame_extraction="uniform", frame_sample=3.0)["frame_sample"] == 3
    assert video_entry(source_fps=30.0)["source_fps"] == 30.0
    assert video_entry()["cache_directory"] == str(tmp_path / "cache" / "videos")  # media in the folder itself


def test_a_folder_with_both_kinds_gets_two_cache_folders(tmp_path, make):
    make.caption(make.png(tmp_path / "mixed" / "a.png", 32, 32), "a")
    make.caption(make.mp4(tmp_path / "mixed" / "b.mp4", 5), "b")
    data = tomllib.loads(render_form_toml(scan_tree(tmp_path), DatasetForm(), tmp_path / "d.toml"))
    assert [d["cache_directory"] for d in data["datasets"]] == [str(tmp_path / "cache" / "mixed-images"),
                                                                str(tmp_path / "cache" / "mixed-videos")]


@pytest.mark.parametrize("changes, message", [
    ({"resolution_width": 100.0}, "Width is 100, not a multiple of 16; use 96 or 112."),
    ({"target_frames": "1, 0"}, "Clip lengths holds 0, which is not a frame count; use 1 or more (1, 17, 33, ...)."),
    ({"batch_size": 0.0}, "Batch size is 0; it must be at least 1."),
    ({"caption_extension": "txt"}, "Caption extension is 'txt'; it must start with a dot, e.g. .txt."),
    ({"target_frames": "1, x"}, "Clip lengths holds 'x', which is not a whole number; enter whole numbers separated "
                                "by commas."),
    ({"resolution_width": None}, "Width is empty; enter a whole number."),
    ({"resolution_width": 64.5}, "Width is 64.5, not a whole number; enter a whole number such as 64."),
    ({"source_fps": -1.0}, "Source frame rate is -1.0; it must be above 0."),
])
def test_bad_values_are_one_sentence_naming_the_field_as_the_page_shows_it(changes, message):
    with pytest.raises(FormProblems) as caught:
        read_form(page_values(**changes))
    assert str(caught.value) == message
    assert caught.value.problems == {next(iter(changes)): message}
    assert form_problems(page_values(**changes)) == {next(iter(changes)): message}


def test_every_wrong_field_is_named_at_once_and_good_values_read():
    problems = form_problems(page_values(resolution_width=100.0, batch_size=0.0, frame_extraction="tail"))
    assert list(problems) == ["resolution_width", "batch_size", "frame_extraction"]
    assert problems["frame_extraction"] == "Frame extraction is 'tail'; choose one of head, chunk, slide, uniform, full."
    assert parse_target_frames("1;17 33") == [1, 17, 33]
    assert read_form(page_values(source_fps=0)).source_fps is None
    assert form_problems(page_values()) == {}


def test_the_form_takes_its_fields_from_the_dataset_keys():
    keys, form = DatasetKeys.field_info(), DatasetForm.field_info()
    for name in form:
        if name.startswith("resolution_"):
            continue
        assert {k: v for k, v in form[name].items() if k != "default"} == {
            k: v for k, v in keys[name].items() if k != "default"}, name
        assert DatasetForm.model_fields[name].metadata == DatasetKeys.model_fields[name].metadata, name
    assert form["enable_bucket"]["default"] is True and keys["enable_bucket"]["default"] is False  # the form's start


def test_the_form_shows_an_existing_tomls_settings(demo, tmp_path):
    form, note = existing_form(demo)
    assert note == f"Settings read from {demo / 'dataset.toml'}."
    assert (form.resolution_width, form.resolution_height, form.target_frames, form.source_fps) == (64, 64, [1, 17],
                                                                                                     16.0)
    assert existing_form(tmp_path) == (None, "")
    (tmp_path / "dataset.toml").write_text("[general\n", encoding="utf-8")
    form, note = existing_form(tmp_path)
    assert form is None and note.startswith(f"{tmp_path / 'dataset.toml'} was not used for the settings: ")
    config = load_dataset_config(demo / "concept_b" / "dataset.toml")
    assert form_from_config(config).frame_extraction == "head"
