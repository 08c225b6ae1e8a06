"""Reading media: which files count as images or videos, their size / frame count / fps, and decoding frames.

Images through Pillow, videos through PyAV. A "video" may also be a folder of numbered images (musubi-tuner's
JSONL `video_path` allows it). Every failure becomes a `MediaError` whose message is the reason shown to the user.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".avif")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".flv", ".wmv", ".m4v", ".mpg", ".mpeg")


class MediaError(Exception):
    """A file that cannot be read; str(exc) is the reason in a few words."""


def media_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None


def list_media(folder: Path, kind: str | None = None) -> list[Path]:
    """Media files directly inside `folder` (not in subfolders, as musubi-tuner), sorted by name."""
    found = [p for p in folder.iterdir() if p.is_file() and media_kind(p) and (kind is None or media_kind(p) == kind)]
    return sorted(found, key=lambda p: p.name)


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    frame_count: int
    fps: float | None

    @property
    def duration(self) -> float | None:
        return self.frame_count / self.fps if self.fps else None


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()  # checks the whole file's structure without decoding pixels
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"not a readable image ({_short(exc)})") from None


def load_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"not a readable image ({_short(exc)})") from None


def _frame_folder_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and media_kind(p) == "image"), key=lambda p: p.name)


def probe_video(path: Path) -> VideoInfo:
    """Size, frame count (packets counted without decoding) and frame rate."""
    if path.is_dir():
        frames = _frame_folder_images(path)
        if not frames:
            raise MediaError("a frame folder without images")
        width, height = image_size(frames[0])
        return VideoInfo(width, height, len(frames), None)
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            fps = float(stream.average_rate) if stream.average_rate else None
            count = sum(1 for packet in container.demux(stream) if packet.size)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"not a readable video ({_short(exc)})") from None
    if count == 0 or not width or not height:
        raise MediaError("a video with no frames")
    return VideoInfo(width, height, count, fps)


def decode_frames(path: Path, indices: set[int] | None = None) -> dict[int, np.ndarray]:
    """Decode frames (all, or only `indices`) -> {frame number: HxWx3 uint8 RGB}."""
    if path.is_dir():
        files = _frame_folder_images(path)
        wanted = range(len(files)) if indices is None else sorted(i for i in indices if i < len(files))
        return {i: load_image(files[i]) for i in wanted}
    import av

    last = max(indices) if indices else None
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            for number, frame in enumerate(container.decode(video=0)):
                if last is not None and number > last:
                    break
                if indices is None or number in indices:
                    frames[number] = frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"not a readable video ({_short(exc)})") from None
    return frames


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
