"""The dataset TOML's keys are declared once, in DatasetKeys: the keys a `[general]` / `[[datasets]]` entry accepts,
the sections' fields, the defaults resolving applies, the type each value is checked as, and the Dataset tab's
settings (labels, hints, limits) all come from its fields."""
from __future__ import annotations

import dataclasses

import gradio as gr
import pytest

from backend.config.field_checks import field_problems
from backend.config.settings import setting
from backend.data.dataset_config import (DATASET_KEYS, INHERITED_KEYS, SOURCE_KEYS, VIDEO_KEYS, DatasetConfig,
                                         DatasetSection, GeneralSection, parse_dataset_toml, render_dataset_toml,
                                         section_class)
from backend.data.dataset_form import DatasetForm
from backend.data.dataset_keys import GENERAL, PER_DATASET, SOURCE, VIDEO, DatasetKeys, default
from backend.errors import UserError
from backend.jobs import JobManager
from backend.workspace import Workspace
from ui.context import AppContext
from ui.settings_form import SettingsForm
from ui.tabs import dataset as dataset_tab

KEYS = ["image_directory", "image_jsonl_file", "video_directory", "video_jsonl_file", "cache_directory",
        "control_directory", "mask_directory", "expert_label", "resolution", "caption_extension", "batch_size",
        "num_repeats", "enable_bucket", "bucket_no_upscale", "target_frames", "frame_extraction", "frame_stride",
        "frame_sample", "max_frames", "source_fps"]


def test_the_model_lists_every_key_with_what_a_form_needs_and_where_it_may_be_written():
    assert list(DatasetKeys.model_fields) == KEYS
    assert sorted(DATASET_KEYS) == sorted(KEYS)
    assert DatasetKeys.groups() == {SOURCE: list(SOURCE_KEYS), PER_DATASET: KEYS[4:8], GENERAL: list(INHERITED_KEYS),
                                    VIDEO: list(VIDEO_KEYS)}
    for name, info in DatasetKeys.field_info().items():
        assert info["label"] and info["help"] and info["group"], name
    assert [f.name for f in dataclasses.fields(GeneralSection)] == list(INHERITED_KEYS)
    assert [f.name for f in dataclasses.fields(DatasetSection)] == list(DATASET_KEYS)


def test_resolving_applies_the_models_defaults(tmp_path):
    (tmp_path / "clips").mkdir()
    item = parse_dataset_toml('[[datasets]]\nvideo_directory = "clips"\n', base_dir=tmp_path).resolved()[0]
    for key in INHERITED_KEYS + VIDEO_KEYS:
        value = getattr(item, key)
        expected = default(key)
        assert (list(value) if isinstance(value, tuple) else value) == (
            list(expected) if isinstance(expected, tuple) else expected), key


@pytest.mark.parametrize("key, value, message", [
    ("batch_size", 1.5, "batch_size must be a whole number, got 1.5"),
    ("enable_bucket", "yes", "enable_bucket must be true or false (no quotes), got 'yes'."),
    ("source_fps", 0, "source_fps must be a positive number, got 0"),
    ("expert_label", 3, "expert_label must be a non-empty string in quotes, got 3."),
])
def test_each_value_is_checked_as_its_keys_type(tmp_path, key, value, message):
    rendered = f'"{value}"' if isinstance(value, str) else value
    text = f'[[datasets]]\nvideo_directory = "clips"\n{key} = {rendered}\n'
    with pytest.raises(UserError) as caught:
        parse_dataset_toml(text, base_dir=tmp_path, check_paths=False)
    assert message in str(caught.value)


def test_every_key_survives_rendering_and_parsing(tmp_path):
    section = DatasetSection(video_directory="/v", cache_directory="/c", mask_directory="/m", expert_label="e",
                             resolution=(64, 48), caption_extension=".cap", batch_size=2, num_repeats=3,
                             enable_bucket=True, bucket_no_upscale=True, target_frames=[1, 17],
                             frame_extraction="slide", frame_stride=4, frame_sample=2, max_frames=33, source_fps=24.0)
    text = render_dataset_toml(DatasetConfig(GeneralSection(), [section]))
    assert parse_dataset_toml(text, check_paths=False).datasets[0] == section


def test_the_dataset_tabs_settings_take_labels_hints_and_limits_from_the_keys(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    with gr.Blocks() as page:
        with gr.Tab("Dataset") as tab:
            dataset_tab.build(AppContext(ws, JobManager(ws.jobs)), tab)
    by_id = {block.elem_id: block for block in page.blocks.values() if getattr(block, "elem_id", None)}
    keys = DatasetKeys.field_info()
    for name, info in DatasetForm.field_info().items():
        widget = by_id[f"dataset-form-{name}"]
        assert (widget.label, widget.info) == (info["label"], info["help"]), name
        assert f"dataset-form-{name}-error" in by_id, name
        if name in keys:
            assert (info["label"], info["help"]) == (keys[name]["label"], keys[name]["help"]), name
    assert field_problems(DatasetForm, {"batch_size": 0}) == field_problems(DatasetKeys, {"batch_size": 0}) == {
        "batch_size": "Batch size is 0; it must be at least 1."}


class _WithLoops(DatasetKeys):
    loop_count: int = setting(1, label="Loops", group=VIDEO, ge=1, help="a key added to the model")


def test_a_key_added_to_the_model_reaches_the_sections_the_checks_and_a_form():
    section = section_class("S", ("video_directory", "loop_count"), "an entry", model=_WithLoops)
    assert section(video_directory="v").loop_count is None
    assert field_problems(_WithLoops, {"loop_count": 0}) == {"loop_count": "Loops is 0; it must be at least 1."}
    assert _WithLoops.groups()[VIDEO][-1] == "loop_count"
    with gr.Blocks():
        widget = SettingsForm(_WithLoops, ["loop_count"], "x")
        widget.build()
    assert widget.widgets["loop_count"].label == "Loops" and widget.widgets["loop_count"].value == 1
