"""Cache files on disk: their names, their tensors and metadata, and the per-dataset manifest.

Latent file:  `<key>_<start>-<frames>_<W>x<H>_wan.safetensors` (images: `<key>_<W>x<H>_wan.safetensors`), tensors
named as musubi-tuner names them (`latents_<F>x<H>x<W>_<dtype>` [C, F, H, W], `latents_image_...` for I2V).
Text file:    `<key>_wan_te.safetensors` with `varlen_t5_<dtype>` [L, D] (trimmed) and the caption in metadata.
Each file's metadata carries a `loraid_fingerprint` of everything that made it (source file, window, bucket,
model); a file whose fingerprint differs from the current one is stale and is recomputed, never reused.
`cache_manifest.json` lists a dataset's latent entries; it is written only when a latents run completes.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from backend.errors import UserError
from backend.fileio import atomic_write_json, save_safetensors_atomic

ARCHITECTURE = "wan"
FORMAT = "loraid-cache-1"
MANIFEST_NAME = "cache_manifest.json"
FINGERPRINT_KEY = "loraid_fingerprint"
LATENT_TENSOR = re.compile(r"^latents_\d+x\d+x\d+_\w+$")
IMAGE_LATENT_TENSOR = re.compile(r"^latents_image_\d+x\d+x\d+_\w+$")


def fingerprint(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:20]


def latent_file_name(key: str, bucket: tuple[int, int], start: int, frames: int, is_video: bool) -> str:
    size = f"{bucket[0]:04d}x{bucket[1]:04d}"
    window = f"_{start:05d}-{frames:03d}" if is_video else ""
    return f"{key}{window}_{size}_{ARCHITECTURE}.safetensors"


def text_file_name(key: str) -> str:
    return f"{key}_{ARCHITECTURE}_te.safetensors"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def read_metadata(path: Path) -> dict[str, str] | None:
    """The file's metadata, or None when it is missing or not a readable safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (OSError, ValueError, RuntimeError, Exception):  # safetensors raises its own SafetensorError
        return None


def is_current(path: Path, expected_fingerprint: str) -> bool:
    metadata = read_metadata(path) if path.is_file() else None
    return metadata is not None and metadata.get(FINGERPRINT_KEY) == expected_fingerprint


def save_latent_file(path: Path, latents: torch.Tensor, image_latents: torch.Tensor | None,
                     metadata: dict[str, str]) -> None:
    """latents [C, F, H, W]; image_latents [4 + C, F, H, W] or None."""
    channels, frames, height, width = latents.shape
    shape = f"{frames}x{height}x{width}"
    tensors = {f"latents_{shape}_{_dtype_name(latents.dtype)}": latents.detach().cpu()}
    if image_latents is not None:
        tensors[f"latents_image_{shape}_{_dtype_name(image_latents.dtype)}"] = image_latents.detach().cpu()
    save_safetensors_atomic(tensors, path, {"architecture": ARCHITECTURE, "format": FORMAT, **metadata})


def save_text_file(path: Path, embed: torch.Tensor, metadata: dict[str, str]) -> None:
    tensors = {f"varlen_t5_{_dtype_name(embed.dtype)}": embed.detach().cpu()}
    save_safetensors_atomic(tensors, path, {"architecture": ARCHITECTURE, "format": FORMAT, **metadata})


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors' own error type is not exported under a stable name
        raise UserError(f"cache file {path} cannot be read ({str(exc).splitlines()[0]}); delete it and run the "
                        "cache command again.") from None


def load_latent_file(path: Path) -> dict[str, torch.Tensor]:
    """{"latents": [C,F,H,W], "image_latents"?: [4+C,F,H,W]}; other tensors musubi-tuner may store (`clip_*`,
    `latents_control_*`, `f_indices_*`) are not read."""
    out = {}
    for name, tensor in _load(path).items():
        if LATENT_TENSOR.match(name):
            out["latents"] = tensor
        elif IMAGE_LATENT_TENSOR.match(name):
            out["image_latents"] = tensor
    if "latents" not in out:
        raise UserError(f"cache file {path} holds no latents_<F>x<H>x<W>_<dtype> tensor; delete it and run the "
                        "cache command again.")
    return out


def load_text_file(path: Path) -> torch.Tensor:
    tensors = _load(path)
    return next(t for name, t in tensors.items() if name.startswith("varlen_t5_"))


@dataclass(frozen=True)
class ManifestEntry:
    key: str
    kind: str
    media: str
    bucket: tuple[int, int]
    start: int
    frames: int
    latent_file: str  # name inside the cache directory

    @classmethod
    def from_dict(cls, data: dict) -> "ManifestEntry":
        return cls(data["key"], data["kind"], data["media"], tuple(data["bucket"]), int(data["start"]),
                   int(data["frames"]), data["latent_file"])


def manifest_path(cache_directory: Path) -> Path:
    return Path(cache_directory) / MANIFEST_NAME


def write_manifest(cache_directory: Path, settings: dict, entries: list[ManifestEntry], extra: dict) -> Path:
    return atomic_write_json(manifest_path(cache_directory), {
        "format": FORMAT, "settings": settings, **extra, "entries": [asdict(e) for e in entries]})


def remove_manifest(cache_directory: Path) -> None:
    manifest_path(cache_directory).unlink(missing_ok=True)


def read_manifest(cache_directory: Path) -> dict | None:
    path = manifest_path(cache_directory)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["entries"] = [ManifestEntry.from_dict(e) for e in data["entries"]]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is damaged; run `python -m backend cache latents` again to rebuild it.") from None
    return data
