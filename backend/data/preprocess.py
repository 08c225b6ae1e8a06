"""Pixels ready for the VAE: resize to cover the bucket, centre-crop, scale to [-1, 1].

Resizing follows musubi-tuner: scale so the image covers the bucket (rounded to the nearest pixel), Lanczos when
enlarging and area averaging (Pillow's BOX filter) when shrinking, then crop the middle. The [-1, 1] scaling is
diffusers' (`x / 255 * 2 - 1` in float32), so a frame prepared here equals what the Wan pipelines feed their VAE.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from backend.data.buckets import cover_size


def resize_to_bucket(image: np.ndarray, bucket: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> bucket_h x bucket_w x 3 uint8."""
    height, width = image.shape[:2]
    if (width, height) == tuple(bucket):
        return image
    new_width, new_height = cover_size((width, height), bucket)
    enlarging = new_width * new_height > width * height
    resized = Image.fromarray(image).resize((new_width, new_height), Image.LANCZOS if enlarging else Image.BOX)
    array = np.asarray(resized)
    left, top = (new_width - bucket[0]) // 2, (new_height - bucket[1]) // 2
    return array[top:top + bucket[1], left:left + bucket[0]]


def to_pixels(frames: list[np.ndarray]) -> torch.Tensor:
    """F frames of HxWx3 uint8 -> [3, F, H, W] float32 in [-1, 1]."""
    stacked = np.stack(frames).astype(np.float32) / 255.0
    return torch.from_numpy(stacked).permute(3, 0, 1, 2).contiguous() * 2.0 - 1.0
