"""musubi-tuner's dataset TOML (`[general]` + `[[datasets]]`), typed, validated and rendered back.

Values are kept as written (None = not set, inherited from `[general]` or defaulted), so `render_dataset_toml`
gives back the file's meaning exactly; `DatasetConfig.resolved()` applies inheritance and defaults the way
musubi-tuner does: `target_frames` rounded down to 4n+1 (79 -> 77, said in `DatasetConfig.notes()`), videos always
bucketed by aspect ratio whatever `enable_bucket` / `bucket_no_upscale` say (those apply to images). Keys musubi-tuner
has for other architectures are refused naming the architecture, and `control_directory` (Wan Fun-Control control
videos) is refused where caching or training would need it. Relative paths are taken relative to the TOML file's
folder (musubi takes them relative to its working directory; absolute paths, which the Dataset tab and the demo
write, mean the same in both).
"""
from __future__ import annotations

import difflib
import json
import tomllib
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from backend.config.settings import _field_kind
from backend.data.dataset_keys import GENERAL, PER_DATASET, RESOLUTION_STEP, SOURCE, VIDEO, DatasetKeys, default, keys_of
from backend.data.frames import FRAME_EXTRACTION_MODES, round_down_4n1
from backend.errors import UserError

# Keys musubi-tuner accepts in [general] and, overriding them, in each [[datasets]] entry; the others only in an
# entry (the video keys only in a video entry). Each key is declared once, in `dataset_keys.DatasetKeys`.
INHERITED_KEYS = keys_of(GENERAL)
SOURCE_KEYS = keys_of(SOURCE)
DATASET_ONLY_KEYS = keys_of(PER_DATASET)
VIDEO_KEYS = keys_of(VIDEO)
DATASET_KEYS = SOURCE_KEYS + DATASET_ONLY_KEYS + INHERITED_KEYS + VIDEO_KEYS

# Keys musubi-tuner knows for other architectures: named, so the user learns why they do not apply here.
OTHER_ARCHITECTURE_KEYS = {
    "fp_latent_window_size": "a FramePack setting", "fp_1f_clean_indices": "a FramePack one-frame setting",
    "fp_1f_target_index": "a FramePack one-frame setting", "fp_1f_no_post": "a FramePack one-frame setting",
    "multiple_target": "a Qwen-Image-Layered setting",
    "no_resize_control": "a FLUX.1 Kontext / FLUX.2 / Qwen-Image-Edit setting (control images)",
    "control_resolution": "a FLUX.1 Kontext / FLUX.2 / Qwen-Image-Edit setting (control images; Wan Fun-Control "
                          "control videos have no resolution of their own)",
    "flux_kontext_no_resize_control": "a FLUX.1 Kontext setting",
    "qwen_image_edit_no_resize_control": "a Qwen-Image-Edit setting",
    "qwen_image_edit_control_resolution": "a Qwen-Image-Edit setting",
}
# Keys that look like musubi-tuner's but no musubi-tuner version has: it would refuse the file.
NOT_MUSUBI_KEYS = {
    "skip_corrupted_cache": "no musubi-tuner version has it, so musubi-tuner would refuse this file; a damaged cache "
                            "file is reported by name, so delete that file and cache again",
}
FUN_CONTROL = ("Wan2.1 Fun-Control (musubi-tuner's --task t2v-1.3B-FC / t2v-14B-FC), which LORAID Studio does not "
               "train")


def section_class(name: str, keys: tuple[str, ...], doc: str, model: type = DatasetKeys, **namespace: Any) -> type:
    """A dataclass with one `key: <the key's type in model> | None = None` per key (None = not set)."""
    return make_dataclass(name, [(key, model.model_fields[key].annotation | None, None) for key in keys],
                          namespace={"__doc__": doc, **namespace})


GeneralSection = section_class("GeneralSection", INHERITED_KEYS,
                                "`[general]`: defaults every `[[datasets]]` entry inherits. None = not set.")
DatasetSection = section_class(
    "DatasetSection", DATASET_KEYS, "One `[[datasets]]` entry as written. Exactly one of the four sources is set.",
    is_video=property(lambda self: self.video_directory is not None or self.video_jsonl_file is not None))


@dataclass(frozen=True)
class ResolvedDataset:
    """A `[[datasets]]` entry with inheritance and defaults applied and paths made absolute."""
    index: int  # 1-based, as in error messages
    kind: str  # "image" | "video"
    source: Path  # the media directory or the JSONL file
    is_jsonl: bool
    cache_directory: Path
    control_directory: Path | None
    resolution: tuple[int, int]
    caption_extension: str
    batch_size: int
    num_repeats: int
    enable_bucket: bool  # as written; `bucketing` gives what applies (videos: always by aspect ratio)
    bucket_no_upscale: bool
    target_frames: tuple[int, ...]  # rounded down to 4n+1, deduplicated, sorted
    frame_extraction: str
    frame_stride: int
    frame_sample: int
    max_frames: int
    source_fps: float | None
    mask_directory: Path | None = None
    expert_label: str | None = None

    @property
    def label(self) -> str:
        return f"[[datasets]] #{self.index} ({self.source.name})"

    @property
    def bucketing(self) -> tuple[bool, bool]:
        """(enable_bucket, bucket_no_upscale) as musubi-tuner applies them: its video caching always buckets by
        aspect ratio and may upscale; images follow the file."""
        return (True, False) if self.kind == "video" else (self.enable_bucket, self.bucket_no_upscale)

    def refuse_control(self, source_name: str) -> None:
        """control_directory on a video dataset: Fun-Control control videos, which caching / training cannot use."""
        if self.control_directory is not None:
            raise UserError(f"{source_name}: {self.label}: control_directory holds control videos for {FUN_CONTROL}; "
                            f"remove it to cache and train this dataset as a plain LoRA dataset.")


@dataclass
class DatasetConfig:
    general: GeneralSection = field(default_factory=GeneralSection)
    datasets: list[DatasetSection] = field(default_factory=list)
    base_dir: Path = field(default_factory=Path.cwd)  # relative paths are resolved against this (the TOML's folder)
    source_name: str = "dataset.toml"

    def resolved(self) -> list[ResolvedDataset]:
        return [_resolve(self, i + 1, section) for i, section in enumerate(self.datasets)]

    def notes(self) -> list[str]:
        """What resolving changed from the values as written, as musubi-tuner does it (one sentence each)."""
        out = []
        for index, section in enumerate(self.datasets, 1):
            written = sorted(set(section.target_frames or []))
            rounded = sorted({round_down_4n1(v) for v in written})
            if written != rounded:
                changed = ", ".join(f"{v} -> {round_down_4n1(v)}" for v in written if round_down_4n1(v) != v)
                out.append(f"{self.source_name}: [[datasets]] #{index}: target_frames rounded down to 4n+1 as "
                           f"musubi-tuner does ({changed}); the clips are {rounded} frames long.")
        return out


# ---- value checks ----------------------------------------------------------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nearest_multiples(value: int, step: int) -> str:
    low = value - value % step
    return f"{low} or {low + step}" if low >= step else f"{low + step}"


def _nearest_4n1(value: int) -> str:
    if value < 1:
        return "1"
    low = (value - 1) // 4 * 4 + 1
    return f"{low} or {low + 4}"


class _Checker:
    """Validates one section's raw values; every error names the file, the section and the key."""

    def __init__(self, source: str, where: str):
        self.prefix = f"{source}: {where}"

    def fail(self, message: str) -> UserError:
        return UserError(f"{self.prefix}: {message}")

    def unknown(self, key: str, allowed: tuple[str, ...]) -> UserError:
        if key in OTHER_ARCHITECTURE_KEYS:
            return self.fail(f"`{key}` is {OTHER_ARCHITECTURE_KEYS[key]} that Wan training does not use; remove it.")
        if key in NOT_MUSUBI_KEYS:
            return self.fail(f"`{key}` is not a musubi-tuner key: {NOT_MUSUBI_KEYS[key]}; remove it.")
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
        hint = f"did you mean `{close[0]}`?" if close else f"valid keys are {', '.join(allowed)}."
        return self.fail(f"unknown key `{key}`; {hint}")

    def integer(self, key: str, value: Any, minimum: int = 1) -> int:
        if not _is_int(value):
            raise self.fail(f"{key} must be a whole number, got {value!r}; write e.g. {key} = {max(minimum, 1)}.")
        if value < minimum:
            raise self.fail(f"{key} must be at least {minimum}, got {value}.")
        return value

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(f"{key} must be true or false (no quotes), got {value!r}.")
        return value

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{key} must be a non-empty string in quotes, got {value!r}.")
        return value

    def resolution(self, value: Any) -> tuple[int, int]:
        pair = [value, value] if _is_int(value) else value
        if not isinstance(pair, list) or len(pair) != 2 or not all(_is_int(v) for v in pair):
            raise self.fail(f"resolution must be [width, height] (two whole numbers), got {value!r}; "
                            "write e.g. resolution = [960, 544].")
        for name, v in zip(("width", "height"), pair):
            if v < RESOLUTION_STEP or v % RESOLUTION_STEP:
                raise self.fail(f"resolution {name} {v} is not a multiple of {RESOLUTION_STEP}; "
                                f"use {_nearest_multiples(max(v, 1), RESOLUTION_STEP)}.")
        return (pair[0], pair[1])

    def caption_extension(self, value: Any) -> str:
        text = self.string("caption_extension", value)
        if not text.startswith(".") or len(text) < 2:
            raise self.fail(f"caption_extension must start with a dot, got {value!r}; write e.g. \".txt\".")
        return text

    def target_frames(self, value: Any) -> list[int]:
        if _is_int(value):
            value = [value]
        if not isinstance(value, list) or not value or not all(_is_int(v) for v in value):
            raise self.fail(f"target_frames must be a list of whole numbers, got {value!r}; write e.g. [1, 17, 33].")
        for v in value:
            if v < 1:
                raise self.fail(f"target_frames value {v} is not a frame count; use {_nearest_4n1(v)} or more.")
        return list(value)  # values that are not 4n+1 are rounded down when resolved, as musubi-tuner does

    def frame_extraction(self, value: Any) -> str:
        if value not in FRAME_EXTRACTION_MODES:
            close = difflib.get_close_matches(str(value), FRAME_EXTRACTION_MODES, n=1, cutoff=0.4)
            hint = f"did you mean \"{close[0]}\"? " if close else ""
            raise self.fail(f"frame_extraction {value!r} is not a mode; {hint}use one of "
                            f"{', '.join(FRAME_EXTRACTION_MODES)}.")
        return value

    def positive_float(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise self.fail(f"{key} must be a positive number, got {value!r}; write e.g. {key} = 30.0.")
        return float(value)


def _check_value(check: _Checker, key: str, value: Any) -> Any:
    """One key's value checked by the key's type in `DatasetKeys` (and its own rule where it has one)."""
    own = {"resolution": check.resolution, "caption_extension": check.caption_extension,
           "target_frames": check.target_frames, "frame_extraction": check.frame_extraction}
    if key in own:
        return own[key](value)
    kind = _field_kind(DatasetKeys, key)
    if kind is bool:
        return check.boolean(key, value)
    if kind is int:
        return check.integer(key, value)
    if kind is float:
        return check.positive_float(key, value)
    return check.string(key, value)


# ---- parsing ---------------------------------------------------------------------------------------------------

def _parse_general(raw: Any, source: str) -> GeneralSection:
    check = _Checker(source, "[general]")
    if not isinstance(raw, dict):
        raise check.fail("must be a table; write [general] on its own line followed by key = value lines.")
    values = {}
    for key, value in raw.items():
        if key == "cache_directory":
            raise check.fail("cache_directory cannot go in [general]; musubi-tuner needs a different "
                             "cache_directory in each [[datasets]] entry, so set it there.")
        if key not in INHERITED_KEYS:
            raise check.unknown(key, INHERITED_KEYS)
        values[key] = _check_value(check, key, value)
    return GeneralSection(**values)


def _parse_dataset(raw: Any, index: int, source: str) -> DatasetSection:
    check = _Checker(source, f"[[datasets]] #{index}")
    if not isinstance(raw, dict):
        raise check.fail("must be a table; start each dataset with a [[datasets]] line.")
    values = {}
    for key, value in raw.items():
        if key not in DATASET_KEYS:
            raise check.unknown(key, DATASET_KEYS)
        values[key] = _check_value(check, key, value)
    given_sources = [key for key in SOURCE_KEYS if key in values]
    if not given_sources:
        raise check.fail("no media source; set one of image_directory, image_jsonl_file, video_directory or "
                         "video_jsonl_file.")
    if len(given_sources) > 1:
        raise check.fail(f"{' and '.join(given_sources)} are both set; use one source per [[datasets]] entry "
                         "(add another [[datasets]] entry for the other).")
    section = DatasetSection(**values)
    if not section.is_video:
        video_keys = [key for key in VIDEO_KEYS if key in values]
        if video_keys:
            raise check.fail(f"{video_keys[0]} only applies to video datasets, but this entry is an image dataset "
                             f"({given_sources[0]}); remove it or use video_directory.")
    if section.frame_extraction == "full" and section.target_frames is not None:
        raise check.fail("frame_extraction \"full\" ignores target_frames (it uses max_frames); remove target_frames "
                         "or pick another frame_extraction.")
    if (section.image_jsonl_file or section.video_jsonl_file) and section.cache_directory is None:
        raise check.fail("a JSONL dataset needs a cache_directory; add cache_directory = \"/path/to/cache\".")
    return section


def check_general_section(raw: dict, source_name: str = "dataset.toml") -> GeneralSection:
    """Validate `[general]` values on their own (the Dataset tab checks a form before it has folders)."""
    return _parse_general(raw, source_name)


def check_dataset_section(raw: dict, index: int = 1, source_name: str = "dataset.toml") -> DatasetSection:
    """Validate one `[[datasets]]` entry on its own (no path checks)."""
    return _parse_dataset(raw, index, source_name)


def parse_dataset_config(data: dict, *, source_name: str = "dataset.toml", base_dir: str | Path | None = None,
                         check_paths: bool = True) -> DatasetConfig:
    """Validate an already-parsed TOML mapping. `check_paths`: media folders/files must exist."""
    top = _Checker(source_name, "top level")
    for key in data:
        if key not in ("general", "datasets"):
            close = difflib.get_close_matches(key, ("general", "datasets"), n=1, cutoff=0.5)
            hint = f"did you mean `{close[0]}`?" if close else "only [general] and [[datasets]] are allowed."
            raise top.fail(f"unknown section `{key}`; {hint}")
    general = _parse_general(data.get("general", {}), source_name)
    raw_datasets = data.get("datasets")
    if isinstance(raw_datasets, dict):
        raise top.fail("datasets must be written [[datasets]] (double brackets), one block per dataset.")
    if not raw_datasets:
        raise top.fail("no [[datasets]] entry; add one with image_directory or video_directory.")
    datasets = [_parse_dataset(raw, i + 1, source_name) for i, raw in enumerate(raw_datasets)]
    config = DatasetConfig(general, datasets, Path(base_dir).resolve() if base_dir else Path.cwd(), source_name)
    resolved = config.resolved()
    _check_unique_cache_directories(config, resolved)
    if check_paths:
        for item in resolved:
            _check_source_exists(config, item)
    return config


def load_dataset_config(path: str | Path, check_paths: bool = True) -> DatasetConfig:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"dataset config {path} does not exist; pass the path of a dataset TOML file.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path.name} is not valid TOML ({exc}); fix the syntax and try again.") from None
    except UnicodeDecodeError:
        raise UserError(f"{path.name} is not a UTF-8 text file; save it as UTF-8 TOML.") from None
    return parse_dataset_config(data, source_name=path.name, base_dir=path.resolve().parent, check_paths=check_paths)


def parse_dataset_toml(text: str, *, source_name: str = "dataset.toml", base_dir: str | Path | None = None,
                       check_paths: bool = True) -> DatasetConfig:
    """The same validation for TOML text (the Dataset tab's editor)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source_name} is not valid TOML ({exc}); fix the syntax and try again.") from None
    return parse_dataset_config(data, source_name=source_name, base_dir=base_dir, check_paths=check_paths)


# ---- resolution of inheritance ----------------------------------------------------------------------------------

def _pick(section: DatasetSection, general: GeneralSection, key: str) -> Any:
    """The entry's value, else `[general]`'s, else musubi-tuner's default."""
    value = getattr(section, key)
    if value is None:
        value = getattr(general, key, None)
    return default(key) if value is None else value


def _absolute(config: DatasetConfig, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else (config.base_dir / path)


def _resolve(config: DatasetConfig, index: int, section: DatasetSection) -> ResolvedDataset:
    g = config.general
    source_key = next(key for key in SOURCE_KEYS if getattr(section, key) is not None)
    source = _absolute(config, getattr(section, source_key))
    cache = _absolute(config, section.cache_directory) if section.cache_directory else source
    frame_extraction = _pick(section, g, "frame_extraction")
    frame_sample = _pick(section, g, "frame_sample")
    if frame_extraction == "uniform" and frame_sample == 1:
        frame_extraction = "head"  # musubi-tuner does the same: one uniform sample is the head window
    return ResolvedDataset(
        index=index, kind="video" if section.is_video else "image", source=source,
        is_jsonl=source_key.endswith("jsonl_file"), cache_directory=cache,
        control_directory=_absolute(config, section.control_directory) if section.control_directory else None,
        resolution=tuple(_pick(section, g, "resolution")),
        caption_extension=_pick(section, g, "caption_extension"),
        batch_size=_pick(section, g, "batch_size"), num_repeats=_pick(section, g, "num_repeats"),
        enable_bucket=_pick(section, g, "enable_bucket"), bucket_no_upscale=_pick(section, g, "bucket_no_upscale"),
        target_frames=tuple(sorted({round_down_4n1(v) for v in _pick(section, g, "target_frames")})),
        frame_extraction=frame_extraction, frame_stride=_pick(section, g, "frame_stride"), frame_sample=frame_sample,
        max_frames=_pick(section, g, "max_frames"), source_fps=section.source_fps,
        mask_directory=_absolute(config, section.mask_directory) if section.mask_directory else None,
        expert_label=section.expert_label)


def _check_unique_cache_directories(config: DatasetConfig, resolved: list[ResolvedDataset]) -> None:
    seen: dict[Path, int] = {}
    for item in resolved:
        key = item.cache_directory.resolve()
        if key in seen:
            raise UserError(f"{config.source_name}: [[datasets]] #{item.index}: cache_directory {item.cache_directory} "
                            f"is also used by [[datasets]] #{seen[key]}; give each dataset its own cache_directory.")
        seen[key] = item.index


def _check_source_exists(config: DatasetConfig, item: ResolvedDataset) -> None:
    where = f"{config.source_name}: [[datasets]] #{item.index}"
    if item.is_jsonl and not item.source.is_file():
        raise UserError(f"{where}: JSONL file {item.source} does not exist; fix the path (relative paths start at "
                        "the TOML file's folder).")
    if not item.is_jsonl and not item.source.is_dir():
        raise UserError(f"{where}: {item.kind} folder {item.source} does not exist; fix the path (relative paths "
                        "start at the TOML file's folder).")
    if item.control_directory is not None and not item.control_directory.is_dir():
        raise UserError(f"{where}: control_directory {item.control_directory} does not exist; fix or remove it.")


# ---- rendering ---------------------------------------------------------------------------------------------------

def _section_dict(section: GeneralSection | DatasetSection) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(section):
        value = getattr(section, f.name)
        if value is None:
            continue
        if isinstance(value, tuple):
            value = list(value)
        if f.name == "source_fps":
            value = float(value)  # musubi-tuner only accepts a decimal number here (30.0, not 30)
        out[f.name] = value
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def render_dataset_toml(config: DatasetConfig, header: str = "") -> str:
    """The config as musubi-tuner TOML: only the keys that are set, [general] first, then each [[datasets]]."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    sections = ([("[general]", _section_dict(config.general))] if _section_dict(config.general) else [])
    sections += [("[[datasets]]", _section_dict(section)) for section in config.datasets]
    for title, values in sections:
        lines += [title, *(f"{key} = {_toml_value(value)}" for key, value in values.items()), ""]
    return "\n".join(lines).rstrip("\n") + "\n"
