"""Small RGB pictures of dataset items for the caption editor: the image itself, or a clip's first frame."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.data.media import MediaError, decode_frames, load_image, media_kind

THUMBNAIL_SIDE = 128


def first_picture(path: Path) -> np.ndarray:
    """HxWx3 uint8: the image, or frame 0 of a video."""
    if media_kind(path) == "image":
        return load_image(path)
    frames = decode_frames(path, {0})
    if 0 not in frames:
        raise MediaError("a video with no frames")
    return frames[0]


def thumbnail(path: Path, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """The first picture scaled so its longer side is `side` pixels (small pictures are enlarged, pixels kept
    sharp, so a 64 px demo image is still visible)."""
    from PIL import Image

    picture = Image.fromarray(first_picture(path))
    scale = side / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return np.asarray(picture.resize(size, resample))
