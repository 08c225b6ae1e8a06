"""Per-sample expert labels (router hints) and ROI masks of the cached items.

A label comes from the item's dataset `expert_label` (dataset TOML) when it has one, else from the caption: the
expert whose tag appears in it as a whole word (case-insensitive). A caption naming no tag, or several, has no label.
Masks: `<mask_directory>/<item key>.png` (white = region of interest), resized to the latent grid; items without a
mask file get none (weight 1 everywhere).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backend.errors import UserError


class Labeller:
    def __init__(self, expert_names: list[str], tags: list[str], datasets) -> None:
        self.expert_names = list(expert_names)
        self.patterns = [re.compile(rf"(?<!\w){re.escape(tag)}(?!\w)", re.IGNORECASE) for tag in tags]
        self.dataset_labels: dict[int, int] = {}
        for dataset in datasets:
            if dataset.expert_label is None:
                continue
            if dataset.expert_label not in self.expert_names:
                raise UserError(f"{dataset.label}: expert_label `{dataset.expert_label}` is not one of the experts "
                                f"({', '.join(self.expert_names)}); fix the dataset TOML or the expert names.")
            self.dataset_labels[dataset.index] = self.expert_names.index(dataset.expert_label)

    def label(self, item) -> int | None:
        if item.dataset_index in self.dataset_labels:
            return self.dataset_labels[item.dataset_index]
        found = [index for index, pattern in enumerate(self.patterns) if pattern.search(item.caption or "")]
        return found[0] if len(found) == 1 else None

    def one_hot(self, items) -> torch.Tensor:
        """[B, E]: one-hot rows for labelled items, zero rows for the others."""
        hint = torch.zeros(len(items), len(self.expert_names))
        for row, item in enumerate(items):
            label = self.label(item)
            if label is not None:
                hint[row, label] = 1.0
        return hint


def held_out(key: str, fraction: float) -> bool:
    """A stable, seed-free split by item key (the same items are held out in every run)."""
    if fraction <= 0.0:
        return False
    digest = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < fraction


def load_mask(mask_directory: Path | None, key: str, latent_shape: tuple[int, ...]) -> torch.Tensor | None:
    """[1, F, H, W] in [0, 1] on the latent grid (F, H, W of the latents), or None without a mask file."""
    if mask_directory is None:
        return None
    path = Path(mask_directory) / f"{key}.png"
    if not path.is_file():
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except OSError as exc:
        raise UserError(f"the mask {path} cannot be read ({exc}); save it as a PNG.") from None
    frames, height, width = latent_shape[-3:]
    mask = F.interpolate(torch.from_numpy(grey)[None, None], size=(height, width), mode="area")[0]
    return mask.expand(frames, height, width)[None].clone()
