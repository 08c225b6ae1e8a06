"""Start images of image-to-video generations, kept in the workspace (`outputs/start_images/`) under their content
hash, so the path a result's sidecar records stays valid after the upload that brought the image is cleaned up."""
from __future__ import annotations

import hashlib
from pathlib import Path

from backend.errors import UserError
from backend.fileio import atomic_write_bytes

START_IMAGES_FOLDER = "start_images"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def keep_start_image(outputs: Path, image: str | Path) -> Path:
    """The workspace copy of `image` (made once per content); a file already in the folder is returned as it is."""
    source = Path(image)
    if not source.is_file():
        raise UserError(f"The start image {source} does not exist; upload the image again.")
    suffix = source.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise UserError(f"{source.name} is not an image the generator reads ({', '.join(IMAGE_SUFFIXES)}); "
                        f"upload a png or jpg.")
    folder = Path(outputs) / START_IMAGES_FOLDER
    if source.resolve().parent == folder.resolve():
        return source.resolve()
    data = source.read_bytes()
    kept = folder / f"{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    if not kept.is_file():
        atomic_write_bytes(kept, data)
    return kept.resolve()
