"""The Dataset tab's form: the dataset settings a user picks, turned into a musubi-tuner dataset TOML for the
sources a folder scan found (absolute paths, one `[[datasets]]` entry per folder and kind).

Values are validated by `dataset_config`, so an error names the TOML key it would land in. Cache folders follow
the demo dataset's layout (`concept_a/images` -> `concept_a/cache/images`), so the TOML the tab writes for a
concept uses the same cache as the concept's own `dataset.toml`.
"""
from __future__ import annotations

from pathlib import Path

from backend.config.settings import Settings, setting
from backend.data.dataset_config import (DatasetConfig, DatasetSection, GeneralSection, check_dataset_section,
                                         check_general_section, load_dataset_config, parse_dataset_toml,
                                         render_dataset_toml)
from backend.data.dataset_folder import FolderScan, MediaSource
from backend.data.frames import FRAME_EXTRACTION_MODES
from backend.errors import UserError

FORM_SOURCE = "dataset form"
GENERAL = "Resolution and batches"
VIDEO = "Video frames"


class DatasetForm(Settings):
    """The settings the tab writes; names are musubi-tuner's keys (resolution split into width and height)."""
    resolution_width: int = setting(960, label="Width (resolution)", group=GENERAL,
                                    help="Target width in pixels, a multiple of 16; buckets keep about width x height.")
    resolution_height: int = setting(544, label="Height (resolution)", group=GENERAL,
                                     help="Target height in pixels, a multiple of 16.")
    caption_extension: str = setting(".txt", label="Caption extension", group=GENERAL,
                                     help="Caption files sit beside each file with this extension.")
    batch_size: int = setting(1, label="batch_size", group=GENERAL, help="Items per training batch.")
    num_repeats: int = setting(1, label="num_repeats", group=GENERAL, help="How often each item is seen per epoch.")
    enable_bucket: bool = setting(True, label="enable_bucket", group=GENERAL,
                                  help="Group items by aspect ratio instead of cropping all to one size.")
    bucket_no_upscale: bool = setting(False, label="bucket_no_upscale", group=GENERAL,
                                      help="Items smaller than the target keep their size (rounded down to 16).")
    target_frames: list[int] = setting([1], label="target_frames", group=VIDEO,
                                       help="Clip lengths to cut, each 4n+1 (1, 17, 33, ...).")
    frame_extraction: str = setting("head", label="frame_extraction", group=VIDEO, choices=FRAME_EXTRACTION_MODES,
                                    help="head: the start; chunk: back-to-back pieces; slide: every frame_stride "
                                         "frames; uniform: frame_sample evenly spread; full: the whole clip.")
    frame_stride: int = setting(1, label="frame_stride (slide)", group=VIDEO, help="Step between slide windows.")
    frame_sample: int = setting(1, label="frame_sample (uniform)", group=VIDEO, help="Windows spread evenly.")
    max_frames: int = setting(129, label="max_frames (full)", group=VIDEO, help="Longest clip that full takes.")
    source_fps: float | None = setting(None, label="source_fps", group=VIDEO,
                                       help="The clips' frame rate; set it to resample them to Wan's 16 fps.")

    def general_values(self) -> dict:
        return {"resolution": [self.resolution_width, self.resolution_height],
                "caption_extension": self.caption_extension, "batch_size": self.batch_size,
                "num_repeats": self.num_repeats, "enable_bucket": self.enable_bucket,
                "bucket_no_upscale": self.bucket_no_upscale}

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


def parse_target_frames(text: str | None) -> list[int]:
    """"1, 17, 33" -> [1, 17, 33] (4n+1 is checked later, with the key named)."""
    parts = [part for part in (text or "").replace(";", ",").replace(" ", ",").split(",") if part]
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise UserError(f"target_frames must be whole numbers separated by commas, got {text!r}; "
                        "write e.g. 1, 17, 33.") from None
    if not values:
        raise UserError("target_frames is empty; write at least one clip length, e.g. 1, 17.")
    return values


def read_form(values: dict) -> DatasetForm:
    """The form from the page's raw values (numbers may come as floats, blank numbers as None)."""
    cleaned = {}
    for key, value in values.items():
        if isinstance(value, float) and value.is_integer() and key != "source_fps":
            value = int(value)
        if key == "source_fps" and value in (0, "", None):
            value = None
        if key == "target_frames" and isinstance(value, str):
            value = parse_target_frames(value)
        if value is None and key != "source_fps":
            label = DatasetForm.field_info()[key]["label"]
            raise UserError(f"{label} is empty; type a value (default {DatasetForm.field_info()[key]['default']}).")
        cleaned[key] = value
    return DatasetForm.from_mapping(cleaned, FORM_SOURCE)


def form_from_config(config: DatasetConfig) -> DatasetForm:
    """The form showing an existing TOML's settings ([general], else the first entry; frames from the first video
    entry); unset keys keep the form's defaults."""
    defaults = DatasetForm()
    first = config.datasets[0] if config.datasets else DatasetSection()
    video = next((section for section in config.datasets if section.is_video), DatasetSection())

    def pick(key: str, section: DatasetSection, fallback):
        general = getattr(config.general, key, None)
        value = getattr(section, key)
        value = value if value is not None else general
        return fallback if value is None else value

    resolution = pick("resolution", first, (defaults.resolution_width, defaults.resolution_height))
    return DatasetForm(
        resolution_width=resolution[0], resolution_height=resolution[1],
        caption_extension=pick("caption_extension", first, defaults.caption_extension),
        batch_size=pick("batch_size", first, defaults.batch_size),
        num_repeats=pick("num_repeats", first, defaults.num_repeats),
        enable_bucket=pick("enable_bucket", first, defaults.enable_bucket),
        bucket_no_upscale=pick("bucket_no_upscale", first, defaults.bucket_no_upscale),
        target_frames=list(video.target_frames or defaults.target_frames),
        frame_extraction=video.frame_extraction or defaults.frame_extraction,
        frame_stride=video.frame_stride or defaults.frame_stride,
        frame_sample=video.frame_sample or defaults.frame_sample,
        max_frames=video.max_frames or defaults.max_frames,
        source_fps=video.source_fps)


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
