"""Every key of musubi-tuner's dataset TOML, declared once: its type, musubi-tuner's default, a label and help for
forms, its group and its limits. The group says where a key may be written: "Media source" and "Per dataset" keys
only in a `[[datasets]]` entry, "Resolution and batches" keys also in `[general]` (entries inherit them), "Video
frames" keys only in a video entry. `dataset_config` parses, resolves and renders by these fields, and the Dataset
tab's form takes its widgets from them."""
from __future__ import annotations

import copy
from typing import Any

from pydantic.fields import FieldInfo

from backend.config.field_checks import NameOf
from backend.config.settings import Settings, setting
from backend.data.buckets import RESOLUTION_STEP
from backend.data.frames import FRAME_EXTRACTION_MODES

SOURCE, PER_DATASET, GENERAL, VIDEO = "Media source", "Per dataset", "Resolution and batches", "Video frames"
__all__ = ["DatasetKeys", "RESOLUTION_STEP", "default", "key_field", "keys_of"]


class DatasetKeys(Settings):
    """One `[[datasets]]` entry with every key at musubi-tuner's default (a source key must be set to use it)."""

    image_directory: str | None = setting(None, label="Image folder", group=SOURCE,
                                          help="folder of images with a caption file beside each")
    image_jsonl_file: str | None = setting(None, label="Image JSONL file", group=SOURCE,
                                           help="JSONL lines of image_path and caption")
    video_directory: str | None = setting(None, label="Video folder", group=SOURCE,
                                          help="folder of videos with a caption file beside each")
    video_jsonl_file: str | None = setting(None, label="Video JSONL file", group=SOURCE,
                                           help="JSONL lines of video_path and caption")
    cache_directory: str | None = setting(None, label="Cache folder", group=PER_DATASET,
                                          help="where this dataset's latents and text outputs are cached (its own "
                                               "folder per dataset; default: the media folder)")
    control_directory: str | None = setting(None, label="Control folder", group=PER_DATASET,
                                            help="Wan Fun-Control control videos (not trained here)")
    mask_directory: str | None = setting(None, label="Mask folder", group=PER_DATASET,
                                         help="LoRA-MoE: per-item region-of-interest masks (<stem>.png, white = "
                                              "region of interest)")
    expert_label: str | None = setting(None, label="Expert label", group=PER_DATASET,
                                       help="LoRA-MoE: the expert every item of this dataset belongs to")
    resolution: list[int] = setting([960, 544], label="Resolution", group=GENERAL, min_length=2, max_length=2,
                                          help="target [width, height] in pixels, each a multiple of 16; buckets "
                                               "keep about width x height")
    caption_extension: str = setting(".txt", label="Caption extension", group=GENERAL,
                                     help="caption files sit beside each file with this extension")
    batch_size: int = setting(1, label="Batch size", group=GENERAL, ge=1, help="items per training batch")
    num_repeats: int = setting(1, label="Repeats", group=GENERAL, ge=1, help="how often each item is seen per epoch")
    enable_bucket: bool = setting(False, label="Bucket by aspect ratio", group=GENERAL,
                                  help="group images by aspect ratio instead of cropping all to one size (videos "
                                       "are always bucketed)")
    bucket_no_upscale: bool = setting(False, label="Never upscale", group=GENERAL,
                                      help="images smaller than the target keep their size (rounded down to 16)")
    target_frames: list[int] = setting([1], label="Clip lengths", group=VIDEO, min_length=1,
                                       help="clip lengths to cut, each 4n+1 (1, 17, 33, ...; others are rounded "
                                            "down)")
    frame_extraction: str = setting("head", label="Frame extraction", group=VIDEO, choices=FRAME_EXTRACTION_MODES,
                                    help="head: the start; chunk: back-to-back pieces; slide: every stride frames; "
                                         "uniform: samples evenly spread; full: the whole clip")
    frame_stride: int = setting(1, label="Stride (slide)", group=VIDEO, ge=1, help="frames between slide windows")
    frame_sample: int = setting(1, label="Samples (uniform)", group=VIDEO, ge=1, help="windows spread evenly")
    max_frames: int = setting(129, label="Longest clip (full)", group=VIDEO, ge=1, help="longest clip that full takes")
    source_fps: float | None = setting(None, label="Source frame rate", group=VIDEO, gt=0,
                                       help="the clips' frame rate; set it to resample them to Wan's 16 fps")

    def rules(self, name_of: NameOf) -> dict[str, str]:
        return value_rules(self, name_of)


def value_rules(values: Any, name_of: NameOf) -> dict[str, str]:
    """What a key's type and limits cannot say (`values`: any object with the keys as attributes)."""
    problems = {}
    extension = getattr(values, "caption_extension", None)
    if extension is not None and (not extension.startswith(".") or len(extension.strip()) < 2):
        problems["caption_extension"] = f"{name_of('caption_extension')} is {extension!r}; it must start with a dot, " \
                                        "e.g. .txt."
    short = [frames for frames in getattr(values, "target_frames", None) or [] if frames < 1]
    if short:
        problems["target_frames"] = (f"{name_of('target_frames')} holds {short[0]}, which is not a frame count; use "
                                     "1 or more (1, 17, 33, ...).")
    return problems


def keys_of(group: str) -> tuple[str, ...]:
    return tuple(DatasetKeys.groups()[group])


def default(key: str) -> Any:
    """musubi-tuner's value for a key that neither the entry nor `[general]` sets."""
    return DatasetKeys.model_fields[key].get_default(call_default_factory=True)


def key_field(key: str, value: Any = ..., **changes: Any) -> FieldInfo:
    """The key's field (label, help, group, choices, limits) for another model, e.g. a form that starts elsewhere
    (`value`) or shows a part of it under its own label (`changes`: label=, help=)."""
    field = copy.deepcopy(DatasetKeys.model_fields[key])
    if value is not ...:
        field.default, field.default_factory = value, None
    extra = dict(field.json_schema_extra or {})
    if "label" in changes:
        extra["label"] = changes.pop("label")
    field.json_schema_extra = extra
    if "help" in changes:
        field.description = changes.pop("help")
    assert not changes, f"unknown changes {changes}"
    return field
