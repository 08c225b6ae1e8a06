"""Writing what a generation made: mp4 (H.264), png frames or one png, latents, and the sidecar JSON of settings.

Every file is written atomically. The settings travel inside the files where the format allows: the mp4's
`comment` metadata, the png's `parameters` tEXt chunk and the latents' safetensors header all hold the same JSON
as the sidecar `<name>.json`, so any result can be reproduced or reused from the file alone.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from backend.errors import UserError
from backend.fileio import atomic_write, atomic_write_json, save_safetensors_atomic
from backend.generate.options import named

LATENTS_KEY = "latents"
SETTINGS_KEY = "loraid_studio.generate"


def output_stem(out_dir: Path, seed: int) -> Path:
    """`<out_dir>/<YYYYmmdd-HHMMSS>_<seed>`, with `-2`, `-3`, ... when that name is taken."""
    base = f"{time.strftime('%Y%m%d-%H%M%S')}_{seed}"
    stem, number = out_dir / base, 1
    while any(stem.parent.glob(stem.name + ".*")) or stem.with_name(stem.name + "_frames").exists():
        number += 1
        stem = out_dir / f"{base}-{number}"
    return stem


def settings_text(record: dict) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=True)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] floats in [0, 1] -> uint8."""
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_mp4(path: Path, frames: np.ndarray, fps: int, record: dict) -> Path:
    """H.264 (yuv420p) through imageio-ffmpeg, the settings JSON in the container's `comment` tag."""
    import imageio_ffmpeg

    pixels = to_uint8(frames)
    height, width = pixels.shape[1:3]

    def write(tmp: str) -> None:
        writer = imageio_ffmpeg.write_frames(tmp, (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                             quality=8, macro_block_size=16, ffmpeg_log_level="error",
                                             output_params=["-f", "mp4", "-metadata",
                                                            f"comment={settings_text(record)}"])
        writer.send(None)
        for frame in pixels:
            writer.send(np.ascontiguousarray(frame))
        writer.close()

    return atomic_write(path, write)


def write_png(path: Path, frame: np.ndarray, record: dict) -> Path:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", settings_text(record))
    image = Image.fromarray(to_uint8(frame[None])[0])
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def write_latents(path: Path, latents: torch.Tensor, record: dict) -> Path:
    return save_safetensors_atomic({LATENTS_KEY: latents.detach().to("cpu", torch.float32).contiguous()}, path,
                                   {SETTINGS_KEY: settings_text(record)})


def read_latents(path: str | Path) -> tuple[torch.Tensor, dict]:
    """(latents, the settings record saved with them); a file that is not ours is a UserError."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"The latents file {path} does not exist; check the {named('decode_latents')}.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if LATENTS_KEY not in handle.keys():
                raise UserError(f"{path.name} holds no `{LATENTS_KEY}` tensor; give a file saved with {named('save_latents')}.")
            latents = handle.get_tensor(LATENTS_KEY)
    except UserError:
        raise
    except Exception as exc:  # safetensors raises several types for damaged files
        raise UserError(f"{path.name} is not a readable .safetensors latents file ({type(exc).__name__}); "
                        f"give a file saved with {named('save_latents')}.") from None
    try:
        record = json.loads(metadata.get(SETTINGS_KEY, "{}"))
    except ValueError:
        record = {}
    return latents, record


def write_result(stem: Path, frames: np.ndarray, record: dict, *, save_frames: bool = False,
                 latents: torch.Tensor | None = None) -> dict:
    """Write every output of one generation beside `stem`; returns {"video"/"image"/"frames"/"latents"/"sidecar": path}.

    `frames` is [F, H, W, 3] in [0, 1]; one frame is an image (png), more are a video (mp4, plus pngs if asked).
    """
    written: dict = {}
    if latents is not None:
        written["latents"] = str(write_latents(stem.with_suffix(".safetensors"), latents, record))
    if len(frames) == 1:
        written["image"] = str(write_png(stem.with_suffix(".png"), frames[0], record))
    else:
        written["video"] = str(write_mp4(stem.with_suffix(".mp4"), frames, int(record["settings"]["fps"]), record))
        if save_frames:
            folder = stem.with_name(stem.name + "_frames")
            written["frames"] = [str(write_png(folder / f"{index:04d}.png", frame, record))
                                 for index, frame in enumerate(frames)]
    sidecar = stem.with_suffix(".json")
    atomic_write_json(sidecar, {**record, "outputs": written})
    written["sidecar"] = str(sidecar)
    return written
