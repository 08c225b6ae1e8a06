"""Training on a cache directory written by musubi-tuner's own cache scripts, as it is (no re-caching).

musubi-tuner names (DESIGN.md §9): latents `<stem>_<start>-<frames>_<W>x<H>_wan.safetensors` for a video window
(`<start>-<frames>-<section>` in some versions), `<stem>_<W>x<H>_wan.safetensors` for an image, W×H the item's
original size; tensor `latents_<F>x<H>x<W>_<dtype>` [C, F, H, W] (+ `latents_image_...` for I2V); text
`<stem>_wan_te.safetensors` with `varlen_t5_<dtype>` [L, D]; no caption or fingerprint is recorded in them.

The first run checks every file (the size in each tensor name against its shape, the dtype in the name against the
tensor's, one channel count and one text width across files, frames 4n+1 matching the latent frames), finds which
dataset items they cover, writes our `cache_manifest.json` (marked `adopted: musubi-tuner`, with each text file's
size and time), and says in one line what it adopted and what it left out, and why. Later runs read the manifest; a
caption file newer than its musubi text cache is reported as such (musubi files do not say which caption they encode).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from backend.data.cache_files import FINGERPRINT_KEY, ManifestEntry, text_file_name, write_manifest
from backend.data.dataset_config import ResolvedDataset
from backend.data.scan import MediaInfo

ADOPTED_FROM = "musubi-tuner"
VAE_TEMPORAL = 4  # Wan VAE: F latent frames hold 4·(F − 1) + 1 video frames
VAE_SPATIAL = 8
_LATENT_NAME = re.compile(r"^(?P<stem>.+?)(?:_(?P<start>\d+)-(?P<frames>\d+)(?:-\d+)?)?_(?P<w>\d+)x(?P<h>\d+)_wan$")
_LATENT_TENSOR = re.compile(r"^latents_(?P<f>\d+)x(?P<h>\d+)x(?P<w>\d+)_(?P<dtype>\w+)$")
_TEXT_TENSOR = re.compile(r"^varlen_t5_(?P<dtype>\w+)$")
# safetensors header dtype -> torch's name, as musubi-tuner writes it into tensor names
_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I32": "int32", "I64": "int64"}
_FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")


@dataclass(frozen=True)
class MusubiLatent:
    path: Path
    key: str
    start: int
    frames: int
    original_size: tuple[int, int]
    bucket: tuple[int, int]  # the latent's pixel size (W, H): what musubi encoded
    channels: int
    is_video: bool


@dataclass
class Adoption:
    entries: list[ManifestEntry] = field(default_factory=list)
    text_stamps: dict[str, list[int]] = field(default_factory=dict)  # key -> [size, mtime_ns] of its text file
    left_out: dict[str, str] = field(default_factory=dict)  # item key or file name -> why
    unmatched: list[str] = field(default_factory=list)  # cache files of no dataset item

    def line(self, label: str, total_items: int) -> str:
        adopted = len({entry.key for entry in self.entries})
        parts = [f"{label}: adopted musubi-tuner's cache ({len(self.entries)} latent file(s) of {adopted} of "
                 f"{total_items} item(s), no re-caching)"]
        if self.left_out:
            first, why = next(iter(self.left_out.items()))
            parts.append(f"left out {len(self.left_out)} ({first}: {why})")
        if self.unmatched:
            parts.append(f"ignored {len(self.unmatched)} file(s) of items not in the dataset (e.g. {self.unmatched[0]})")
        return "; ".join(parts) + "."


def is_musubi_file(path: Path) -> bool:
    """A `*_wan.safetensors` / `*_wan_te.safetensors` file without our fingerprint (so written by musubi-tuner)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return FINGERPRINT_KEY not in (handle.metadata() or {})
    except Exception:  # unreadable: not adoptable either way; the check reports it
        return False


def musubi_latent_files(cache_directory: Path) -> list[Path]:
    if not cache_directory.is_dir():
        return []
    return sorted(path for path in cache_directory.glob("*_wan.safetensors") if is_musubi_file(path))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def read_latent(path: Path) -> MusubiLatent:
    """The file's name and tensors checked against each other; ValueError says what does not fit."""
    match = _LATENT_NAME.match(path.stem)
    if match is None:
        raise ValueError("its name is not <stem>[_<start>-<frames>]_<W>x<H>_wan")
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())
        latent_names = [name for name in names if _LATENT_TENSOR.match(name)]
        if len(latent_names) != 1:
            raise ValueError(f"it holds {len(latent_names)} latents_<F>x<H>x<W>_<dtype> tensors instead of one")
        name = latent_names[0]
        latent = handle.get_slice(name)  # header only: no tensor is read
        shape, stored = tuple(latent.get_shape()), latent.get_dtype()
        for other in names:
            if other.startswith("latents_image_"):
                image_shape = tuple(handle.get_slice(other).get_shape())
                if image_shape[1:] != shape[1:]:
                    raise ValueError(f"`{other}` is {image_shape}, not the latents' frames and size {shape[1:]}")
    spec = _LATENT_TENSOR.match(name)
    if len(shape) != 4:
        raise ValueError(f"`{name}` has shape {shape}, not [C, F, H, W]")
    named = (int(spec["f"]), int(spec["h"]), int(spec["w"]))
    if shape[1:] != named:
        raise ValueError(f"`{name}` has shape {shape}, which does not match the size in its name")
    if _SAFETENSORS_DTYPES.get(stored) != spec["dtype"] or stored not in _FLOAT_DTYPES:
        held = _SAFETENSORS_DTYPES.get(stored, stored)
        raise ValueError(f"`{name}` holds {held} values, not the {spec['dtype']} its name says")
    is_video = match["start"] is not None
    frames = int(match["frames"]) if is_video else 1
    if frames < 1 or (frames - 1) % VAE_TEMPORAL or (frames - 1) // VAE_TEMPORAL + 1 != shape[1]:
        raise ValueError(f"{frames} frames do not give the {shape[1]} latent frames it holds (frames must be 4n+1)")
    return MusubiLatent(path, match["stem"], int(match["start"] or 0), frames, (int(match["w"]), int(match["h"])),
                        (shape[3] * VAE_SPATIAL, shape[2] * VAE_SPATIAL), shape[0], is_video)


def read_text_width(path: Path) -> int:
    """The width D of the `varlen_t5_<dtype>` [L, D] tensor; ValueError says what does not fit."""
    with safe_open(str(path), framework="pt") as handle:
        names = [name for name in handle.keys() if _TEXT_TENSOR.match(name)]
        if len(names) != 1:
            raise ValueError(f"it holds {len(names)} varlen_t5_<dtype> tensors instead of one")
        tensor = handle.get_tensor(names[0])
    if tensor.dim() != 2 or tensor.shape[0] == 0:
        raise ValueError(f"`{names[0]}` has shape {tuple(tensor.shape)}, not [L, D]")
    if _TEXT_TENSOR.match(names[0])["dtype"] != _dtype_name(tensor.dtype):
        raise ValueError(f"`{names[0]}` holds {_dtype_name(tensor.dtype)} values, not what its name says")
    return int(tensor.shape[1])


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def adopt(dataset: ResolvedDataset, listing: dict[str, MediaInfo]) -> Adoption:
    """Check the musubi-tuner files of the dataset's cache directory against each other and the dataset items."""
    adoption = Adoption()
    channels: dict[int, str] = {}
    widths: dict[int, str] = {}
    latents_by_key: dict[str, list[MusubiLatent]] = {}
    rejected: dict[str, str] = {}  # item key -> why its file was not adopted
    for path in musubi_latent_files(dataset.cache_directory):
        try:
            latent = read_latent(path)
        except (ValueError, OSError) as exc:
            named = _LATENT_NAME.match(path.stem)
            if named is not None and named["stem"] in listing:
                rejected[named["stem"]] = f"{path.name}: {exc}"
            else:
                adoption.left_out[path.name] = str(exc)
            continue
        if latent.key not in listing:
            adoption.unmatched.append(path.name)
            continue
        item = listing[latent.key]
        if (item.kind == "video") != latent.is_video:
            rejected[latent.key] = f"{path.name} is {'a video' if latent.is_video else 'an image'} cache of a {item.kind}"
            continue
        channels.setdefault(latent.channels, path.name)
        latents_by_key.setdefault(latent.key, []).append(latent)
    if len(channels) > 1:
        (first, a), (second, b) = list(channels.items())[:2]
        raise ValueError(f"the musubi-tuner latents mix {first} channels ({a}) and {second} channels ({b}): "
                         f"they come from two VAEs")
    for key, item in listing.items():
        latents = latents_by_key.get(key)
        if not latents:
            adoption.left_out[key] = rejected.get(key, "no musubi-tuner latent file")
            continue
        text = dataset.cache_directory / text_file_name(key)
        if not text.is_file():
            adoption.left_out[key] = f"no text cache {text.name}"
            continue
        try:
            width = read_text_width(text)
        except (ValueError, OSError) as exc:
            adoption.left_out[key] = f"{text.name}: {exc}"
            continue
        widths.setdefault(width, text.name)
        adoption.text_stamps[key] = _stamp(text)
        for latent in sorted(latents, key=lambda lat: (lat.start, lat.frames)):
            adoption.entries.append(ManifestEntry(key, item.kind, str(item.path), latent.bucket, latent.start,
                                                  latent.frames, latent.path.name))
    if len(widths) > 1:
        (first, a), (second, b) = list(widths.items())[:2]
        raise ValueError(f"the musubi-tuner text caches mix widths {first} ({a}) and {second} ({b}): they come "
                         f"from two text encoders")
    return adoption


def record(dataset: ResolvedDataset, settings: dict, adoption: Adoption) -> Path:
    """Our manifest for the adopted files (marked adopted, so later runs know where they came from)."""
    return write_manifest(dataset.cache_directory, settings, adoption.entries,
                          {"adopted": ADOPTED_FROM, "left_out": sorted(key for key in adoption.left_out
                                                                       if not key.endswith(".safetensors")),
                           "text_stamps": adoption.text_stamps})
