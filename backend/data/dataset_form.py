"""The Dataset tab's form: the dataset settings a user picks, turned into a musubi-tuner dataset TOML for the
sources a folder scan found (absolute paths, one `[[datasets]]` entry per folder and kind).

The fields are musubi-tuner's keys as `dataset_keys.DatasetKeys` declares them; the page's values are checked field
by field (`form_problems`, worded with the form's labels, shown beside each field), then the TOML is validated by
`dataset_config` as the file it will be written to. Cache folders follow
the demo dataset's layout (`concept_a/images` -> `concept_a/cache/images`), so the TOML the tab writes for a
concept uses the same cache as the concept's own `dataset.toml`.
"""
from __future__ import annotations

import re
from pathlib import Path

from backend.config.field_checks import field_problems
from backend.config.settings import Settings, setting
from backend.data.dataset_config import (INHERITED_KEYS, VIDEO_KEYS, DatasetConfig, DatasetSection, GeneralSection,
                                         check_dataset_section, check_general_section, load_dataset_config,
                                         parse_dataset_toml, render_dataset_toml)
from backend.data.dataset_folder import FolderScan, MediaSource
from backend.data.dataset_keys import GENERAL, RESOLUTION_STEP, default, key_field, value_rules
from backend.errors import UserError

FORM_SOURCE = "dataset form"


class DatasetForm(Settings):
    """The settings the tab writes: musubi-tuner's keys (`DatasetKeys`: label, help, group, limits), with the
    resolution split into width and height and buckets on to start with."""
    resolution_width: int = setting(default("resolution")[0], label="Width", group=GENERAL, ge=RESOLUTION_STEP,
                                    multiple_of=RESOLUTION_STEP,
                                    help="target width in pixels, a multiple of 16; buckets keep about width x height")
    resolution_height: int = setting(default("resolution")[1], label="Height", group=GENERAL, ge=RESOLUTION_STEP,
                                     multiple_of=RESOLUTION_STEP, help="target height in pixels, a multiple of 16")
    caption_extension: str = key_field("caption_extension")
    batch_size: int = key_field("batch_size")
    num_repeats: int = key_field("num_repeats")
    enable_bucket: bool = key_field("enable_bucket", True)
    bucket_no_upscale: bool = key_field("bucket_no_upscale")
    target_frames: list[int] = key_field("target_frames")
    frame_extraction: str = key_field("frame_extraction")
    frame_stride: int = key_field("frame_stride")
    frame_sample: int = key_field("frame_sample")
    max_frames: int = key_field("max_frames")
    source_fps: float | None = key_field("source_fps")

    def rules(self, name_of) -> dict[str, str]:
        return value_rules(self, name_of)

    def general_values(self) -> dict:
        """The `[general]` keys: every inherited key, the resolution from width and height."""
        return {key: [self.resolution_width, self.resolution_height] if key == "resolution" else getattr(self, key)
                for key in INHERITED_KEYS}

    def video_values(self) -> dict:
        """Only the frame keys the chosen mode uses (musubi-tuner ignores the others; full forbids target_frames)."""
        mode = self.frame_extraction
        values: dict = {"frame_extraction": mode}
        if mode != "full":
            values["target_frames"] = list(self.target_frames)
        if mode == "slide":
            values["frame_stride"] = self.frame_stride
        if mode == "uniform":
            values["frame_sample"] = self.frame_sample
        if mode == "full":
            values["max_frames"] = self.max_frames
        if self.source_fps is not None:
            values["source_fps"] = float(self.source_fps)
        return values

    def checked_general(self) -> GeneralSection:
        return check_general_section(self.general_values(), FORM_SOURCE)

    def checked_video(self) -> DatasetSection:
        return check_dataset_section({"video_directory": "clips", **self.video_values()}, 1, FORM_SOURCE)


def parse_target_frames(text: str | None) -> list:
    """"1, 17, 33" -> [1, 17, 33]; a part that is not a whole number stays text, for the form's check to name."""
    parts = [part for part in re.split(r"[,;\s]+", text or "") if part]
    return [int(part) if re.fullmatch(r"-?\d+", part) else part for part in parts]


class FormProblems(UserError):
    """The form's wrong fields, {name: sentence} (the message is the first sentence)."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__(next(iter(problems.values())))
        self.problems = problems


def _cleaned(values: dict) -> dict:
    """The page's raw values as the model takes them (a whole float as an int, blank source_fps as not set)."""
    cleaned = {}
    for key, value in values.items():
        if isinstance(value, float) and value.is_integer() and key != "source_fps":
            value = int(value)
        if key == "source_fps" and value in (0, "", None):
            value = None
        if key == "target_frames" and isinstance(value, str):
            value = parse_target_frames(value)
        cleaned[key] = value
    return cleaned


def form_problems(values: dict) -> dict[str, str]:
    """{field: sentence} for the page's values, worded with the form's labels (empty when they are fine)."""
    return field_problems(DatasetForm, _cleaned(values))


def read_form(values: dict) -> DatasetForm:
    """The form from the page's raw values (numbers may come as floats, blank numbers as None); FormProblems
    names every wrong field."""
    problems = form_problems(values)
    if problems:
        raise FormProblems(problems)
    return DatasetForm(**_cleaned(values))


def form_from_config(config: DatasetConfig) -> DatasetForm:
    """The form showing an existing TOML's settings ([general], else the first entry; frames from the first video
    entry); unset keys keep the form's defaults."""
    first = config.datasets[0] if config.datasets else DatasetSection()
    video = next((section for section in config.datasets if section.is_video), DatasetSection())
    values = {}
    for key in [*INHERITED_KEYS, *VIDEO_KEYS]:
        section = video if key in VIDEO_KEYS else first
        value = getattr(section, key)
        value = getattr(config.general, key, None) if value is None else value
        if value is not None:
            values[key] = list(value) if isinstance(value, (list, tuple)) else value
    if "resolution" in values:
        values["resolution_width"], values["resolution_height"] = values.pop("resolution")
    return DatasetForm(**values)


def existing_form(folder: Path) -> tuple[DatasetForm | None, str]:
    """The settings of `folder/dataset.toml` when there is one, and a note saying where they came from."""
    path = folder / "dataset.toml"
    if not path.is_file():
        return None, ""
    try:
        return form_from_config(load_dataset_config(path, check_paths=False)), f"Settings read from {path}."
    except UserError as exc:
        return None, f"{path} was not used for the settings: {exc}"


def cache_directory_for(root: Path, source: MediaSource) -> Path:
    """Where a source's cache goes: beside it in a `cache` folder (`x/images` -> `x/cache/images`)."""
    suffix = f"-{source.kind}s" if source.shares_folder else ""
    if source.folder == root:
        return root / "cache" / f"{source.kind}s"
    return source.folder.parent / "cache" / f"{source.folder.name}{suffix}"


def dataset_sections(scan: FolderScan, form: DatasetForm) -> list[DatasetSection]:
    sections, used = [], set()
    for source in scan.sources:
        cache = cache_directory_for(scan.root, source)
        candidate, number = cache, 2
        while candidate in used:  # two sources whose folders share a name under one parent
            candidate, number = cache.with_name(f"{cache.name}-{number}"), number + 1
        used.add(candidate)
        values = {f"{source.kind}_directory": str(source.folder), "cache_directory": str(candidate)}
        if source.kind == "video":
            values.update(form.video_values())
        sections.append(check_dataset_section(values, len(sections) + 1, FORM_SOURCE))
    return sections


def render_form_toml(scan: FolderScan, form: DatasetForm, toml_path: Path) -> str:
    """The TOML for this scan and form, already validated as the file it will be written to."""
    config = DatasetConfig(form.checked_general(), dataset_sections(scan, form), toml_path.parent, toml_path.name)
    header = (f"Dataset config for {scan.root}, written by LORAID Studio's Dataset tab.\n"
              "musubi-tuner format; paths are absolute.")
    text = render_dataset_toml(config, header)
    parse_dataset_toml(text, source_name=toml_path.name, base_dir=toml_path.parent)
    return text
